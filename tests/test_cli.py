"""`rag-rec` command line: bench, journal, ports, Ctrl-C on serve, demo, settings-file errors, exit codes."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from rag_rec.cli import main
from rag_rec.data.journal import IngestJournal
from rag_rec.schemas import BundleResponse, EventIn, ProductIn
from rag_rec.settings import ServeSettings


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    """Every path a command could write lies under tmp_path."""
    monkeypatch.setenv("RAG_REC_INDEX__PATH", str(tmp_path / "index"))
    monkeypatch.setenv("RAG_REC_DATA__JOURNAL_PATH", str(tmp_path / "journal.sqlite"))
    monkeypatch.setenv("RAG_REC_EMBEDDING__CACHE_PATH", str(tmp_path / "embeddings.sqlite"))
    monkeypatch.setenv("RAG_REC_LLM__CACHE_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("RAG_REC_LLM__BACKEND", "none")


# ---- behaviour ----

@pytest.mark.slow
def test_behaviour_train_keeps_the_network_a_start_on_the_same_data_loads(tmp_path, monkeypatch, capsys):
    """The job a deployment runs before its replicas start: it trains on what a start trains on (the dataset and
    the products the API added, from the ingest journal), so the start loads the network instead of training."""
    from test_journal import open_pipeline, write_shop

    from rag_rec.data import load_dataset
    from rag_rec.signals.behaviour import BehaviourModel

    write_shop(tmp_path / "shop")
    data = f"generic:{tmp_path / 'shop'}"
    networks = tmp_path / "networks"
    monkeypatch.setenv("RAG_REC_BEHAVIOUR__CACHE_DIR", str(networks))
    monkeypatch.setenv("RAG_REC_BEHAVIOUR__EPOCHS", "1")
    with IngestJournal(tmp_path / "journal.sqlite") as journal:
        journal.record_products(load_dataset(data).name, [ProductIn(id="API-1", title="Trail lamp deluxe")])

    assert main(["behaviour", "train", "--data", data]) == 0
    assert "trained and kept" in capsys.readouterr().out
    [kept] = networks.glob("behaviour-*.pt")
    assert main(["behaviour", "train", "--data", data]) == 0
    assert f"already kept: {kept}" in capsys.readouterr().out

    def no_training(self, dataset):
        raise AssertionError("trained although another trainer kept a network for this data")

    monkeypatch.setattr(BehaviourModel, "fit", no_training)
    replica_cache = tmp_path / "replica-networks"  # a replica's init container, while the job is still training
    monkeypatch.setenv("RAG_REC_BEHAVIOUR__CACHE_DIR", str(replica_cache))

    def job_keeps_it():  # as fit_cached keeps a network: written aside, then renamed into place
        replica_cache.mkdir()
        shutil.copy(kept, replica_cache / "partial")
        os.replace(replica_cache / "partial", replica_cache / kept.name)

    job = threading.Timer(1.0, job_keeps_it)
    job.start()
    assert main(["behaviour", "train", "--data", data, "--wait", "60"]) == 0
    assert "already kept" in capsys.readouterr().out
    job.join()

    pipeline = open_pipeline(tmp_path, behaviour={"serve": True, "epochs": 1, "cache_dir": networks})
    try:
        assert "API-1" in pipeline.dataset.products and pipeline.signals.behaviour is not None
    finally:
        pipeline.close()


def test_behaviour_train_needs_a_cache_dir_and_events(tmp_path, monkeypatch, capsys):
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "products.csv").write_text("id,title\np1,Tent\np2,Stove\n")
    monkeypatch.setenv("RAG_REC_BEHAVIOUR__CACHE_DIR", str(tmp_path / "networks"))
    assert main(["behaviour", "train", "--data", f"generic:{tmp_path / 'shop'}"]) == 2
    assert "has no events" in capsys.readouterr().err
    monkeypatch.delenv("RAG_REC_BEHAVIOUR__CACHE_DIR")
    (tmp_path / "settings.json").write_text('{"behaviour": {"cache_dir": null}}')
    assert main(["behaviour", "train", "--data", f"generic:{tmp_path / 'shop'}",
                 "--config", str(tmp_path / "settings.json")]) == 2
    assert "behaviour.cache_dir is unset" in capsys.readouterr().err
    assert not (tmp_path / "networks").exists()


# ---- bench ----

@pytest.fixture
def bench_runs(monkeypatch):
    """The scripts `rag-rec bench` would run (none runs); load_test.py fails."""
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(" ".join(Path(part).name for part in cmd[1:]))
        return subprocess.CompletedProcess(cmd, 1 if cmd[1].endswith("load_test.py") else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    return calls


def test_bench_refuses_an_unknown_name_and_runs_nothing(bench_runs, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "retreival"])
    assert exit_.value.code == 2 and bench_runs == []
    assert "unknown benchmark 'retreival'; did you mean 'retrieval'?" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bench", "compose", "-h"], ["bench", "-h"]])
def test_bench_help_runs_nothing(bench_runs, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0 and bench_runs == []
    assert "-- FLAGS" in capsys.readouterr().out


def test_bench_passes_flags_after_the_double_dash_and_skips_the_report_for_a_subset(bench_runs, capsys):
    assert main(["bench", "retrieval", "--", "--queries", "100"]) == 0
    assert bench_runs == ["bench_retrieval.py --queries 100"]
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "retrieval", "--queries", "100"])
    assert exit_.value.code == 2 and "go after --" in capsys.readouterr().err
    assert bench_runs == ["bench_retrieval.py --queries 100"]


def test_bench_regenerates_the_report_after_a_subset_only_when_asked(bench_runs):
    assert main(["bench", "upsert", "--report"]) == 0
    assert bench_runs == ["bench_upsert.py", "report.py", "readme_tables.py"]


def test_a_failing_benchmark_is_named_the_rest_run_and_the_report_is_regenerated(bench_runs, capsys):
    assert main(["bench"]) == 1
    assert bench_runs[-3:] == ["load_test.py", "report.py", "readme_tables.py"] and len(bench_runs) == 10
    err = capsys.readouterr().err
    assert "failed: load (exit 1)" in err and "Traceback" not in err


# ---- journal ----

@pytest.fixture
def journal(tmp_path):
    with IngestJournal(tmp_path / "journal.sqlite") as j:
        j.record_products("electronic", [ProductIn(id="E1", title="Acme Tripod")])
        j.record_events("electronic", [EventIn(user_id="u1", item_id="E1", timestamp=1)])
        j.record_products("clothing", [ProductIn(id="C1", title="Red Scarf")])
    return tmp_path / "journal.sqlite"


def held(path):
    with IngestJournal(path, read_only=True) as j:
        return j.counts()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_journal_clear_needs_yes_without_a_terminal_and_asks_on_one(journal, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert main(["journal", "clear", "--dataset", "electronic"]) == 2
    assert "--yes" in capsys.readouterr().err and "electronic" in held(journal)
    monkeypatch.setattr(sys, "stdin", Terminal())
    asked = []
    monkeypatch.setattr("builtins.input", lambda question: asked.append(question) or "n")
    assert main(["journal", "clear", "--dataset", "electronic"]) == 1
    assert "drop 1 products and 1 events of electronic" in asked[0] and "electronic" in held(journal)
    monkeypatch.setattr("builtins.input", lambda question: "y")
    assert main(["journal", "clear", "--dataset", "electronic"]) == 0
    assert held(journal) == {"clothing": {"products": 1, "events": 0}}
    assert main(["journal", "clear", "--dataset", "clothing", "--yes"]) == 0
    assert held(journal) == {}


def test_journal_export_does_not_overwrite_another_datasets_export(journal, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["journal", "export", "--dataset", "electronic", "--out", str(out)]) == 0
    assert main(["journal", "export", "--dataset", "clothing", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert json.loads((out / "products.jsonl").read_text())["id"] == "E1"
    assert main(["journal", "export", "--dataset", "clothing", "--out", str(out), "--force"]) == 0
    assert json.loads((out / "products.jsonl").read_text())["id"] == "C1"
    assert (out / "events.jsonl").read_text() == ""


# ---- ports, serve and demo ----

@pytest.fixture
def fake_pipeline(monkeypatch):
    """BundlePipeline.from_settings returns a stand-in (no data, models or index) and records what happens."""
    from rag_rec.pipeline import BundlePipeline

    record = SimpleNamespace(settings=None, closed=0, requests=[])

    class Pipeline:
        heuristic = None
        dataset = SimpleNamespace(sessions={}, products={}, bundles=[])

        def recommend_many(self, requests):
            record.requests += requests
            return [BundleResponse(bundles=[], produced_by="heuristic") for _ in requests]

        def close(self):
            record.closed += 1

    def from_settings(settings, **kwargs):
        record.settings = settings
        return Pipeline()

    monkeypatch.setattr(BundlePipeline, "from_settings", staticmethod(from_settings))
    return record


@pytest.fixture
def served(monkeypatch):
    """serve_main records the port it was given, then calls `then` (default: returns at once)."""
    from rag_rec.serve import app

    record = SimpleNamespace(ports=[], then=None)

    def serve_main(settings, service, **kwargs):
        record.ports.append(settings.serve.port)
        if record.then is not None:
            record.then()

    monkeypatch.setattr(app, "serve_main", serve_main)
    return record


@pytest.mark.parametrize("argv", [["serve", "--port", "70000"], ["serve", "--port", "-1"], ["serve", "--port", "x"],
                                  ["demo", "--serve", "--port", "65536"]])
def test_a_port_out_of_range_is_refused_before_anything_is_built(fake_pipeline, served, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and fake_pipeline.settings is None
    assert "--port" in capsys.readouterr().err


def test_the_settings_refuse_a_port_out_of_range():
    from pydantic import ValidationError

    assert ServeSettings(port=0).port == 0 and ServeSettings(port=65535).port == 65535
    for port in (-1, 65536, 70000):
        with pytest.raises(ValidationError):
            ServeSettings(port=port)


def test_serve_port_zero_is_passed_on_and_the_settings_port_is_the_default(fake_pipeline, served, monkeypatch):
    assert main(["serve", "--port", "0"]) == 0
    monkeypatch.setenv("RAG_REC_SERVE__PORT", "8123")
    assert main(["serve"]) == 0
    assert served.ports == [0, 8123] and fake_pipeline.closed == 2


def interrupt():
    raise KeyboardInterrupt


def test_ctrl_c_on_serve_exits_130_and_closes_the_pipeline(fake_pipeline, served, capsys):
    served.then = interrupt
    assert main(["serve"]) == 130
    assert fake_pipeline.closed == 1 and "Traceback" not in capsys.readouterr().err


def test_sigterm_after_uvicorns_shutdown_closes_the_pipeline_and_exits_0(fake_pipeline, served):
    def not_handled(signum, frame):
        raise AssertionError("rag-rec serve left SIGTERM to the handler it found")

    original = signal.signal(signal.SIGTERM, not_handled)  # never the default, which would end pytest
    try:
        served.then = lambda: signal.raise_signal(signal.SIGTERM)  # what uvicorn does after a graceful shutdown
        with pytest.raises(SystemExit) as exit_:
            main(["serve"])
        assert exit_.value.code == 0 and fake_pipeline.closed == 1
        assert signal.getsignal(signal.SIGTERM) is not_handled
    finally:
        signal.signal(signal.SIGTERM, original)


def write_tiny_amazon(root: Path, sessions: int = 20) -> None:
    """The first `sessions` sessions of the bundled electronic data, with their users, bundles and items."""
    import pandas as pd

    src = Path(__file__).resolve().parent.parent / "data" / "amazon-bundles" / "electronic"
    dst = root / "amazon-bundles" / "electronic"
    dst.mkdir(parents=True)

    def read(name):
        return pd.read_csv(src / name, dtype=str, keep_default_na=False)

    sb = read("session_bundle.csv")
    sb = sb[sb["session ID"].isin(set(sb["session ID"].unique()[:sessions]))]
    bundles, session_ids = set(sb["bundle ID"]), set(sb["session ID"])
    bi = read("bundle_item.csv").pipe(lambda d: d[d["bundle ID"].isin(bundles)])
    si = read("session_item.csv").pipe(lambda d: d[d["session ID"].isin(session_ids)])
    items = set(bi["item ID"]) | set(si["item ID"])
    us = read("user_session.csv").pipe(lambda d: d[d["session ID"].isin(session_ids)])
    users = set(us["user ID"])
    tables = {"session_bundle.csv": sb, "bundle_item.csv": bi, "session_item.csv": si, "user_session.csv": us,
              "user_bundle.csv": read("user_bundle.csv").pipe(
                  lambda d: d[d["user ID"].isin(users) & d["bundle ID"].isin(bundles)]),
              "user_item.csv": read("user_item.csv").pipe(
                  lambda d: d[d["user ID"].isin(users) & d["item ID"].isin(items)]),
              "bundle_intent.csv": read("bundle_intent.csv").pipe(lambda d: d[d["bundle ID"].isin(bundles)]),
              "user_idx_mapping.csv": read("user_idx_mapping.csv").pipe(lambda d: d[d["user ID"].isin(users)])}
    for name in ("item_categories.csv", "item_titles.csv", "item_idx_mapping.csv"):
        tables[name] = read(name).pipe(lambda d: d[d["item ID"].isin(items)])
    for name, table in tables.items():
        table.to_csv(dst / name, index=False)


@pytest.mark.slow
def test_ctrl_c_on_a_real_serve_stops_it_without_a_traceback(tmp_path):
    write_tiny_amazon(tmp_path / "data")
    env = {**os.environ, "RAG_REC_DATA__ROOT": str(tmp_path / "data"), "RAG_REC_BEHAVIOUR__EPOCHS": "1",
           "RAG_REC_LLM__BACKEND": "none"}  # the CLI's own signal path, without an engine starting beside it
    proc = subprocess.Popen([sys.executable, "-m", "rag_rec.cli", "serve", "--port", "0"], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines, up = [], threading.Event()

    def drain():
        for line in proc.stderr:
            lines.append(line)
            if "Uvicorn running on" in line:
                up.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert up.wait(300), "".join(lines)[-3000:]
        port = int(next(line for line in lines if "Uvicorn running on" in line).split(":")[-1].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    err = "".join(lines)
    assert "Traceback" not in err and "Finished server process" in err


def test_demo_skips_the_shopper_example_on_a_catalogue_without_a_suitable_session(fake_pipeline, capsys):
    assert main(["demo", "--no-llm"]) == 0
    assert "skipping the returning-shopper example" in capsys.readouterr().out
    assert len(fake_pipeline.requests) == 2 and fake_pipeline.closed == 1


def test_demo_closes_the_pipeline_when_serving_ends_and_takes_port_only_with_serve(fake_pipeline, served, capsys):
    served.then = interrupt
    assert main(["demo", "--no-llm", "--serve", "--port", "0"]) == 130
    assert served.ports == [0] and fake_pipeline.closed == 1
    assert main(["demo", "--port", "8001"]) == 2
    assert "add --serve" in capsys.readouterr().err and fake_pipeline.closed == 1


# ---- settings files, --config, exit codes ----

@pytest.mark.parametrize("name, text, says", [
    ("broken.json", '{"serve": {"port": 80', "Expecting ',' delimiter"),
    ("broken.toml", "[serve]\nport = \n", "Invalid value"),
    ("type.toml", '[serve]\nport = "abc"\n', "serve.port: Input should be a valid integer"),
    ("range.toml", "[serve]\nport = 70000\n", "serve.port: Input should be less than or equal to 65535"),
    ("list.json", "[1, 2]", "expected a table of sections"),
])
def test_a_bad_settings_file_is_named_in_the_error(tmp_path, capsys, name, text, says):
    (tmp_path / name).write_text(text)
    assert main(["--config", str(tmp_path / name), "journal"]) == 2
    err = capsys.readouterr().err
    assert f"error: settings file {tmp_path / name}" in err and says in err
    assert "_WithFile" not in err and "Traceback" not in err


def test_config_is_taken_after_the_subcommand_too(tmp_path, capsys):
    config = tmp_path / "rag.json"
    config.write_text(json.dumps({"data": {"journal": False}}))
    for argv in (["journal", "--config", str(config)], ["--config", str(config), "journal"],
                 ["--config", str(tmp_path / "missing.toml"), "journal", "--config", str(config)]):
        assert main(argv) == 2
        assert "the ingest journal is off" in capsys.readouterr().err
    assert main(["journal"]) == 0


def test_eval_leaves_no_out_folder_when_the_data_does_not_load(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main(["eval", "bundle_completion", "--data", str(tmp_path / "nothing"), "--recommender", "pop",
                 "--out", str(out)]) == 2
    assert not (tmp_path / "new").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_a_model_error_is_exit_status_2_as_in_the_other_commands(capsys):
    assert main(["models", "pull", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
