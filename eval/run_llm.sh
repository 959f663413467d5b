#!/usr/bin/env bash
# LLM session bundling (AICL task, all 180 test sessions) with the default and the quality model.
# The judge is the quality model (Qwen2.5-Coder-0.5B-Instruct) when its packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
RR=.venv/bin/rag-rec
MODELS=${MODELS:-"smollm2-135m qwen2.5-coder-0.5b"}
DOMAINS=${DOMAINS:-"electronic clothing"}
for m in $MODELS; do
  for d in $DOMAINS; do
    RAG_REC_LLM__MODEL=$m RAG_REC_LLM__JUDGE_MODEL=${JUDGE:-qwen2.5-coder-0.5b} $RR eval session_bundling --data "aicl:data/aicl-split/$d.json@data/amazon-bundles/$d" \
      --recommender llm --recommender llm-name --judge --out "eval/results/session_bundling-llm-$m-$d"
  done
done
.venv/bin/python eval/summarize.py
