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
    assert proc.returncode == 2 and "unknown recommender(s) ['nope']" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, says", [
    (["--config", "/nonexistent/rag.toml", "eval", "bundle_completion", "--data", "x", "--out", "o"], "not found"),
    (["--config", "{broken}", "eval", "bundle_completion", "--data", "x", "--out", "o"], "line 1"),
    (["--config", "{bad_value}", "eval", "bundle_completion", "--data", "x", "--out", "o"], "backend"),
    (["eval", "bundle_completion", "--data", "dunnhumby:abc", "--out", "{tmp}/o"], "number of households"),
    (["eval", "basket_completion", "--data", "generic:{shop}", "--recommender", "pop", "--out", "{tmp}/o"],
     "no basket_completion test cases"),
    (["eval", "bundle_completion", "--data", "data/amazon-bundles/electronic", "--recommender", "pop",
      "--out", "{passwd}/x"], "Not a directory"),
])
def test_usage_errors_are_one_line_not_a_traceback(tmp_path, repo_root, monkeypatch, capsys, argv, says):
    from rag_rec.cli import main

    (tmp_path / "broken.toml").write_text("[index\n")
    (tmp_path / "bad.toml").write_text('[index]\nbackend = "foo"\n')
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "products.csv").write_text("id,title\np1,Tent\np2,Stove\n")
    (shop / "events.jsonl").write_text('{"user_id": "u", "item_id": "p1", "timestamp": 1}\n')
    (tmp_path / "file").write_text("")
    names = {"broken": tmp_path / "broken.toml", "bad_value": tmp_path / "bad.toml", "tmp": tmp_path, "shop": shop,
             "passwd": tmp_path / "file"}
    monkeypatch.chdir(repo_root)
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "\nerror: " in "\n" + err and says in err and "Traceback" not in err


def test_a_failed_run_leaves_no_empty_output_folders_behind(tmp_path):
    from rag_rec.errors import DataError
    from rag_rec.eval.harness import run_eval

    (tmp_path / "kept").mkdir()
    with pytest.raises(DataError, match="number of households"):
        run_eval("basket_completion", "dunnhumby:abc", ["pop"], tmp_path / "kept" / "new" / "deeper")
    assert list(tmp_path.iterdir()) == [tmp_path / "kept"] and not any((tmp_path / "kept").iterdir())


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


@pytest.mark.parametrize("name", ["RAG_REC_LMM__MODEL", "RAG_REC_LLM_MODEL"])
def test_a_mistyped_setting_in_the_environment_is_an_error_not_ignored(monkeypatch, name):
    from rag_rec.errors import UsageError

    monkeypatch.setenv(name, "qwen2.5-coder-0.5b")
    with pytest.raises(UsageError, match=name):
        Settings.load()


def test_settings_files_other_than_toml_or_json_and_broken_json_are_usage_errors(tmp_path, capsys):
    from rag_rec.cli import main
    from rag_rec.errors import UsageError

    (tmp_path / "rag.yaml").write_text("llm:\n  model: x\n")
    with pytest.raises(UsageError, match="toml or .json"):
        Settings.load(tmp_path / "rag.yaml")
    (tmp_path / "rag.json").write_text('{"llm": ')
    assert main(["--config", str(tmp_path / "rag.json"), "models", "list"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_models_commands_read_the_settings_file(tmp_path, capsys):
    from rag_rec.cli import main

    (tmp_path / "rag.toml").write_text(f'[llm]\ncache_dir = "{tmp_path / "models"}"\n')
    assert main(["--config", str(tmp_path / "rag.toml"), "models", "list"]) == 0
    assert str(tmp_path / "models") in capsys.readouterr().out.replace("\n", "")
