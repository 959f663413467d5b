"""Run benchmarks, then regenerate docs/BENCHMARKS.md (bench/report.py) and the README's tables
(eval/readme_tables.py) from bench/results/*.json.

  rag-rec bench                              every benchmark, then the report
  rag-rec bench retrieval upsert             a subset (the report only with --report)
  rag-rec bench retrieval -- --queries 100   flags after -- go to each benchmark named before it
  rag-rec bench retrieval -- -h              a benchmark's own flags

A benchmark that fails is named at the end and the exit status is 1; the others still run and the report is
still regenerated."""

from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {"index": "bench_index.py", "retrieval": "bench_retrieval.py", "behaviour": "probe_behaviour_serve.py",
           "upsert": "bench_upsert.py", "llm": "bench_llm.py", "llm_arrivals": "bench_llm_arrivals.py",
           "compose": "bench_compose.py", "load": "load_test.py"}
REPORTS = (HERE / "report.py", HERE.parent / "eval" / "readme_tables.py")


def benchmark(name: str) -> str:
    if name not in SCRIPTS:
        close = difflib.get_close_matches(name, SCRIPTS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise argparse.ArgumentTypeError(f"unknown benchmark {name!r}; {hint}choose from {', '.join(SCRIPTS)}")
    return name


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, usage="%(prog)s [-h] [--report] [NAME ...] "
                                     "[-- FLAGS]", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", type=benchmark, metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(SCRIPTS)}")
    parser.add_argument("--report", action="store_true", help="regenerate the report after a subset too")
    return parser


def run(script: Path, flags: list[str]) -> int:
    return subprocess.run([sys.executable, str(script), *flags], check=False).returncode


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = []
    if "--" in argv:
        cut = argv.index("--")
        argv, flags = argv[:cut], argv[cut + 1:]
    parser = build_parser(prog)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (a benchmark's own flags go after --)")
    if flags and not args.names:
        parser.error("flags after -- go to the benchmarks named before it; name them")
    failed = []
    for name in dict.fromkeys(args.names or SCRIPTS):
        print(f"== {name}", flush=True)
        code = run(HERE / SCRIPTS[name], flags)
        if code:
            failed.append(f"{name} (exit {code})")
    if args.report or not args.names:
        for script in REPORTS:
            print(f"== {script.relative_to(HERE.parent)}", flush=True)
            code = run(script, [])
            if code:
                failed.append(f"{script.relative_to(HERE.parent)} (exit {code})")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
