.PHONY: demo test test-fast bench eval setup

export HF_HUB_OFFLINE := 1
export OPENBLAS_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false
export VLLM_CPU_KVCACHE_SPACE ?= 2

setup:
	bash scripts/setup_env.sh

demo: setup
	.venv/bin/rag-rec demo

test: setup
	bash scripts/setup_browser.sh
	.venv/bin/python -m pytest -q -m "slow or llm or browser or not slow" --timeout=1800

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow and not llm and not browser"

bench: setup
	.venv/bin/rag-rec bench

eval: setup
	bash eval/run_all.sh
