"""What the evaluation writes for readers: settings that reproduce a run, uncertainty, honest reports and README
tables that match the committed results."""

import importlib.util
import json
import math
import subprocess

import matplotlib
import pytest

from rag_rec.eval import metrics as M
from rag_rec.eval.harness import run_eval, write_report
from rag_rec.eval.judge import agreement
from rag_rec.schemas import LLMJudgement
from rag_rec.settings import Settings


def load_script(repo_root, name):
    spec = importlib.util.spec_from_file_location(name, repo_root / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_are_the_committed_results(repo_root):
    tables = load_script(repo_root, "readme_tables")
    readme = (repo_root / "README.md").read_text()
    assert tables.regenerated(readme) == readme, "run .venv/bin/python eval/readme_tables.py"


def test_a_run_records_its_settings_uncertainty_and_per_case_scores(tmp_path, electronic_dir, monkeypatch):
    monkeypatch.setenv("RAG_REC_CF__ALS_FACTORS", "2")
    settings = Settings(llm={"api_key": "sk-secret"})
    assert settings.cf.als_factors == 2
    doc = run_eval("bundle_completion", str(electronic_dir), ["pop", "itemknn", "hybrid"], tmp_path, limit=40,
                   settings=settings)
    recorded = json.loads((tmp_path / "metrics.json").read_text())
    assert recorded["settings"]["resolved"]["cf"]["als_factors"] == 2
    assert recorded["settings"]["environment"] == ["RAG_REC_CF__ALS_FACTORS"]
    assert {"compose_bundles.v1", "judge.v2", "session_bundles.v1"} <= set(recorded["settings"]["prompts"])
    assert len(recorded["settings"]["code"]["commit"]) == 40 and "numpy" in recorded["settings"]["packages"]
    assert "sk-secret" not in (tmp_path / "metrics.json").read_text()
    for result in doc["results"].values():
        lo, hi = result["ci95"]["recall@10"]
        assert lo <= result["metrics"]["recall@10"] <= hi
    per_case = json.loads((tmp_path / "per_case.json").read_text())
    assert len(per_case["cases"]) == 40
    hybrid = per_case["scores"]["hybrid"]["recall@10"]
    assert len(hybrid) == 40 and sum(hybrid) / 40 == pytest.approx(doc["results"]["hybrid"]["metrics"]["recall@10"])
    paired = recorded["paired"]
    assert paired["reference"] == "hybrid" and set(paired["against"]) == {"pop", "itemknn"}
    pop = paired["against"]["pop"]
    assert pop["wins_a"] == sum(h > p for h, p in zip(hybrid, per_case["scores"]["pop"]["recall@10"]))


def test_the_behaviour_variant_is_compared_with_every_recommender_and_reaches_the_readme(
        tmp_path, electronic_dir, repo_root, monkeypatch):
    settings = Settings(behaviour={"epochs": 1, "dim": 16, "cache_dir": tmp_path / "networks"})
    doc = run_eval("bundle_completion", str(electronic_dir), ["pop", "lexical", "hybrid", "hybrid-behaviour"],
                   tmp_path / "bundle_completion-x", limit=40, settings=settings)
    assert set(doc["results"]) == {"pop", "lexical", "hybrid", "hybrid-behaviour"}
    recorded = json.loads((tmp_path / "bundle_completion-x" / "metrics.json").read_text())
    variant = recorded["paired_variants"]["hybrid-behaviour"]
    assert variant["reference"] == "hybrid-behaviour" and set(variant["against"]) == {"pop", "lexical", "hybrid"}
    assert "hybrid-behaviour" in recorded["paired"]["against"]
    tables = load_script(repo_root, "readme_tables")
    monkeypatch.setattr(tables, "RES", tmp_path)
    lines = tables.paired_lines(["bundle_completion-x"])
    assert any(line.startswith("- x: hybrid / lexical") for line in lines)
    assert any(line.startswith("- x: hybrid-behaviour / lexical") for line in lines)


def test_paired_comparison_and_sign_test():
    a = [1, 1, 1, 1, 1, 0, 0, 0.5, 0.5, 0.5]
    b = [0, 0, 0, 0, 0, 1, 1, 0.5, 0.5, 0.5]
    c = M.paired_comparison(a, b, resamples=500)
    assert (c.wins_a, c.wins_b) == (5, 2)
    assert c.sign_test_p == pytest.approx(0.453125)      # 2 * P(X <= 2), X ~ Bin(7, 1/2)
    assert c.ratio == pytest.approx(6.5 / 3.5)
    assert c.ratio_ci95[0] < c.ratio < c.ratio_ci95[1]
    assert M.sign_test(0, 0) == 1.0
    with pytest.raises(ValueError):
        M.paired_comparison([1, 0], [1])
    lo, hi = M.bootstrap_ci([0.0] * 50 + [1.0] * 50)
    assert lo < 0.5 < hi and hi - lo < 0.3


def test_kappa_is_undefined_not_perfect_when_one_judgement_is_valid():
    labels = [{"naturalness": 2, "coverage": 2, "motivation": 1, "faithful": True}] * 30
    one = LLMJudgement(critique="reads well enough", naturalness=2, coverage=2, motivation=1, faithful=True)
    out = agreement([one] + [None] * 29, labels)
    assert math.isnan(out["naturalness_kappa"]) and out["naturalness_n"] == 1.0
    assert out["judge_valid"] == pytest.approx(1 / 30)


def failed_judge_doc():
    base = {"precision": 0.5, "recall": 0.5, "coverage": 0.5, "valid": 1.0}
    return {"task": "session_bundling", "data": "x", "dataset": "x", "dataset_stats": {}, "command": None,
            "results": {"llm": {"metrics": {**base, "judge_valid": 0.0, "judged": 2.0}, "n_cases": 2},
                        "other": {"metrics": {**base, "judge_naturalness": 2.5, "judge_faithful": 0.9,
                                              "judge_valid": 1.0, "judged": 2.0}, "n_cases": 2}}}


def test_a_failed_judge_is_not_drawn_or_written_as_zero(tmp_path, monkeypatch):
    drawn = []
    original = matplotlib.axes.Axes.bar

    def spy(self, x, height, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(height)))
        return original(self, x, height, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    write_report(failed_judge_doc(), tmp_path)
    llm_judge_bars = [h for label, h in drawn if label == "llm" and len(h) == 2]  # the judge panel
    assert llm_judge_bars and all(math.isnan(v) for v in llm_judge_bars[0])
    report = (tmp_path / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| recommender"))
    assert "judge_valid" in header and "judged" in header
    llm_row = next(line for line in report.splitlines() if line.startswith("| llm |"))
    assert "—" in llm_row and "nan" not in llm_row


def test_summary_leaves_a_null_metric_blank(tmp_path, repo_root, monkeypatch):
    summarize = load_script(repo_root, "summarize")
    run = tmp_path / "bundle_completion-x"
    run.mkdir()
    doc = {"task": "bundle_completion", "results": {"pop": {"metrics": {"recall@10": None, "ndcg@10": 0.1},
                                                            "n_cases": 3}}}
    (run / "metrics.json").write_text(json.dumps(doc))
    monkeypatch.setattr(summarize, "ROOT", tmp_path)
    summarize.main()
    row = next(line for line in (tmp_path / "SUMMARY.md").read_text().splitlines() if "| pop |" in line)
    assert "|  | 0.100 |" in row


def test_the_recorded_code_version_names_changed_code_but_not_earlier_results(tmp_path):
    from rag_rec import machine

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    for path in ("eval/results/x/metrics.json", "bench/results/y.json", "rag_rec/signals/text.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("a")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    commit = machine.git("rev-parse", "HEAD", cwd=tmp_path)
    (tmp_path / "eval/results/x/metrics.json").write_text("b")
    (tmp_path / "bench/results/y.json").write_text("b")
    assert machine.code_version(tmp_path) == {"commit": commit, "dirty": False, "changed": []}
    (tmp_path / "rag_rec/signals/text.py").write_text("b")
    assert machine.code_version(tmp_path)["changed"] == ["rag_rec/signals/text.py"]
    assert machine.code_version(tmp_path / "eval") == machine.code_version(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    assert machine.code_version(outside) == {"commit": None, "dirty": None, "changed": None}
