#!/usr/bin/env bash
# Reproduce every committed result under eval/results/ (non-LLM runs; LLM runs: eval/run_llm.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RR=.venv/bin/rag-rec
for d in electronic clothing; do
  $RR eval session_bundling --data "aicl:data/aicl-split/$d.json@data/amazon-bundles/$d" \
    --recommender whole-session --recommender category --recommender embedding --recommender cf-embedding \
    --out "eval/results/session_bundling-$d"
  $RR eval bundle_completion --data "data/amazon-bundles/$d" \
    --recommender pop --recommender itemknn --recommender als --recommender text --recommender lexical \
    --recommender behaviour --recommender hybrid --recommender hybrid-behaviour --out "eval/results/bundle_completion-$d"
done
$RR eval basket_completion --data dunnhumby --limit 1000 \
  --recommender pop --recommender itemknn --recommender als --recommender text --recommender lexical \
  --recommender behaviour --recommender hybrid --out eval/results/basket_completion-dunnhumby
.venv/bin/python eval/summarize.py
