"""`rag-rec bench`: run every benchmark, then regenerate docs/BENCHMARKS.md. Pass names to run a subset:
index retrieval upsert llm llm_arrivals compose load."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {"index": "bench_index.py", "retrieval": "bench_retrieval.py", "upsert": "bench_upsert.py",
           "llm": "bench_llm.py", "llm_arrivals": "bench_llm_arrivals.py",
           "compose": "bench_compose.py", "load": "load_test.py"}

if __name__ == "__main__":
    chosen = [a for a in sys.argv[1:] if a in SCRIPTS] or list(SCRIPTS)
    for name in chosen:
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / SCRIPTS[name])], check=True)
    subprocess.run([sys.executable, str(HERE / "report.py")], check=True)
