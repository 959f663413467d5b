"""The harness end to end through the CLI on real data (small limits), and the settings layering."""

import json
import subprocess
import sys

import pytest

from rag_rec.settings import Settings


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rag_rec.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_bundle_completion_cli_writes_metrics_report_plot(tmp_path, repo_root):
    out = tmp_path / "bc"
    proc = run_cli("eval", "bundle_completion", "--data", "data/amazon-bundles/electronic", "--recommender", "pop",
                   "--recommender", "itemknn", "--limit", "60", "--out", str(out), cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["command"].startswith("rag-rec eval bundle_completion")
    assert set(doc["results"]) == {"pop", "itemknn"}
    for r in doc["results"].values():
        assert r["n_cases"] == 60
        m = r["metrics"]
        assert 0.0 <= m["recall@10"] <= m["recall@20"] <= 1.0 and 0 <= m["auc"] <= 1
    assert (out / "metrics.png").stat().st_size > 1000
    assert "| pop |" in (out / "report.md").read_text()


def test_session_bundling_cli_category_baseline(tmp_path, repo_root):
    out = tmp_path / "sb"
    proc = run_cli("eval", "session_bundling", "--data",
                   "aicl:data/aicl-split/electronic.json@data/amazon-bundles/electronic",
                   "--recommender", "whole-session", "--recommender", "category", "--out", str(out), cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "metrics.json").read_text())["results"]
    assert res["category"]["n_cases"] == 180
    whole, cat = res["whole-session"]["metrics"], res["category"]["metrics"]
    assert whole["valid"] == 1.0 and cat["valid"] == 1.0
    assert cat["precision"] > whole["precision"]          # grouping beats one-bundle-per-session
    assert cat["recall_1to1"] <= 1.0
    assert whole["recall"] == whole["exact_match"]         # one prediction per session: a hit is exact


def test_unknown_recommender_is_a_clear_error(tmp_path, repo_root):
    proc = run_cli("eval", "bundle_completion", "--data", "data/amazon-bundles/electronic", "--recommender",
                   "nope", "--out", str(tmp_path), cwd=repo_root)
    assert proc.returncode != 0 and "unknown recommender(s) ['nope']" in proc.stderr


def test_settings_file_env_and_overrides(tmp_path, monkeypatch):
    cfg = tmp_path / "rag.toml"
    cfg.write_text('[index]\nbackend = "qdrant"\nurl = "http://qdrant:6333"\n[retrieve]\nk = 7\n')
    monkeypatch.setenv("RAG_REC_RETRIEVE__K", "9")
    s = Settings.load(cfg)
    assert s.index.backend == "qdrant" and s.index.url == "http://qdrant:6333"
    assert s.retrieve.k == 9                                # env beats file
    assert Settings.load(cfg, retrieve={"k": 3}).retrieve.k == 3   # explicit beats env
    cfg.write_text("[index]\nbogus = 1\n")
    with pytest.raises(Exception, match="bogus"):
        Settings.load(cfg)
