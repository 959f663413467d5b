"""`rag-rec` command line: demo, eval, index, behaviour, journal, models, serve, bench."""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _settings(args):
    from rag_rec.settings import Settings

    return Settings.load(getattr(args, "config", None))


def cmd_eval(args) -> int:
    from rag_rec.eval.harness import run_eval

    settings = _settings(args)
    command = "rag-rec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_eval(args.task, args.data, args.recommender, Path(args.out), limit=args.limit, settings=settings,
             seed=args.seed, command=command, judge=args.judge)
    return 0


def cmd_demo(args) -> int:
    from rag_rec.demo import run_demo
    from rag_rec.errors import UsageError

    if args.port is not None and not args.serve:
        raise UsageError("demo --port is the port of --serve's chat page: add --serve")
    return run_demo(_settings(args), serve=args.serve, use_llm=not args.no_llm, port=args.port)


def cmd_models(args) -> int:
    from rag_rec.llm.models import models_main

    return 2 if models_main(args.rest, args.config) else 0  # a model error is a usage error, as elsewhere


def cmd_serve(args) -> int:
    from rag_rec.pipeline import BundlePipeline
    from rag_rec.serve.app import serve_main

    settings = _settings(args)
    if args.port is not None:
        settings.serve.port = args.port
    # uvicorn re-raises the SIGTERM it shut down on: a requested stop, leaving through `finally` (engine stopped)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        pipeline = BundlePipeline.from_settings(settings)
        try:
            if settings.llm.backend != "none":  # start the engine now, not on the first shopper's request
                threading.Thread(target=pipeline.composer, args=(True,), name="llm-start", daemon=True).start()
            serve_main(settings, pipeline)
        finally:
            pipeline.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def cmd_index(args) -> int:
    from rag_rec.pipeline import BundlePipeline

    settings = _settings(args)
    pipeline = BundlePipeline.from_settings(settings, data=args.data, rebuild=True)
    try:
        print(f"indexed {pipeline.store.count()} products into {settings.index.backend}")
    finally:
        pipeline.close()
    return 0


def cmd_behaviour(args) -> int:
    from rich.console import Console

    from rag_rec.data.journal import IngestJournal, journal_file
    from rag_rec.errors import ModelError, UsageError
    from rag_rec.pipeline import load_start_dataset, with_journal_products
    from rag_rec.signals.suite import served_behaviour_model

    settings = _settings(args)
    cache_dir = settings.behaviour.cache_dir
    if cache_dir is None:
        raise UsageError("behaviour.cache_dir is unset: there is nowhere to keep the network for the service")
    console = Console(stderr=True)
    dataset = load_start_dataset(settings, args.data, console)
    path = journal_file(settings)
    if path is not None and path.is_file():  # a start trains on the products the API added, so this must too
        with IngestJournal(path, read_only=True) as journal:
            with_journal_products(dataset, journal, settings)
    if not len(dataset.interactions):
        raise ModelError(f"{dataset.name} has no events: the behaviour model has nothing to learn from")
    model = served_behaviour_model(settings)
    kept = model.cache_path(dataset, cache_dir)
    if args.wait and not kept.is_file():
        console.log(f"waiting up to {args.wait} s for another trainer to keep {kept}")
        deadline = time.monotonic() + args.wait
        while not kept.is_file() and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    had = kept.is_file()
    model.fit_cached(dataset, cache_dir, log=console.log)
    if not kept.is_file():
        raise ModelError(f"the trained network could not be kept in {cache_dir} (see the log above)")
    print(f"{'already kept' if had else 'trained and kept'}: {kept} (starts on {dataset.name} with these settings "
          "load it)")
    return 0


def cmd_journal(args) -> int:
    from rag_rec.data.journal import EXPORT_FILES, IngestJournal, journal_file
    from rag_rec.errors import UsageError

    settings = _settings(args)
    path = journal_file(settings)
    if path is None:
        raise UsageError("the ingest journal is off (data.journal = false)")
    if args.action != "show" and not args.dataset:
        raise UsageError(f"journal {args.action} needs --dataset NAME (`rag-rec journal` lists them)")
    if args.action == "export" and not args.out:
        raise UsageError("journal export needs --out DIR")
    if not path.is_file():
        if args.action != "show":
            raise UsageError(f"no ingest journal at {path} (nothing was ingested through the API)")
        print(f"{path}: no journal yet (nothing was ingested through the API)")
        return 0
    with IngestJournal(path, read_only=args.action != "clear") as journal:
        counts = journal.counts()
        if args.action == "show":
            print(f"{path}")
            for dataset, held in sorted(counts.items()):
                print(f"  {dataset}: {held['products']} products, {held['events']} events")
            if not counts:
                print("  empty")
            return 0
        if args.dataset not in counts:
            known = ", ".join(sorted(counts)) or "none"
            raise UsageError(f"--dataset: the journal holds no dataset {args.dataset!r} (it holds: {known})")
        if args.action == "export":
            existing = [str(Path(args.out) / name) for name in EXPORT_FILES if (Path(args.out) / name).exists()]
            if existing and not args.force:
                raise UsageError(f"{' and '.join(existing)} already there (another dataset's export?): choose "
                                 "another --out, or add --force to overwrite")
            for written in journal.export(args.dataset, args.out):
                print(f"wrote {written}")
            return 0
        if not args.yes and not _confirm(f"drop {counts[args.dataset]['products']} products and "
                                         f"{counts[args.dataset]['events']} events of {args.dataset} from {path}? "
                                         "(the API acknowledged them) [y/N] "):
            print("nothing dropped", file=sys.stderr)
            return 1
        dropped = journal.clear(args.dataset)
        print(f"dropped {dropped['products']} products and {dropped['events']} events of {args.dataset} from {path}")
    return 0


def _confirm(question: str) -> bool:
    from rag_rec.errors import UsageError

    if not sys.stdin.isatty():
        raise UsageError("journal clear drops writes the API acknowledged: add --yes to confirm (no terminal to ask)")
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cmd_bench(args) -> int:
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "bench" / "run_all.py"
    if not script.is_file():
        print("bench/ is not part of an installed package: run from a source checkout", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("bench_run_all", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args.rest, prog="rag-rec bench")


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


_positive_int = functools.partial(_whole_number, least=1)
_non_negative_int = functools.partial(_whole_number, least=0)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: a free one the OS picks), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    config_help = "settings file (TOML or JSON); env vars RAG_REC_* override it"
    parser = argparse.ArgumentParser(prog="rag-rec", description=__doc__)
    parser.add_argument("--config", help=config_help)
    common = argparse.ArgumentParser(add_help=False)  # --config after the subcommand too
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, parents=[common])

    p = add("eval", help="score recommenders on a task; writes metrics.json, report.md, plots")
    p.add_argument("task", choices=["session_bundling", "bundle_completion", "basket_completion"])
    p.add_argument("--data", required=True,
                   help="amazon:DIR | aicl:FILE[@AMAZON_DIR] | dunnhumby[:HOUSEHOLDS] | generic:DIR | PATH")
    p.add_argument("--recommender", action="append", help="repeatable; default: the task's baselines")
    p.add_argument("--limit", type=_positive_int, help="at most N test cases/sessions (N >= 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", action="store_true", help="session_bundling: score intents with the LLM judge")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_eval)

    p = add("demo", help="build everything on the bundled data and show bundles for real users")
    p.add_argument("--serve", action="store_true", help="then serve the chat page on embedded defaults")
    p.add_argument("--no-llm", action="store_true", help="compose without the LLM")
    p.add_argument("--port", type=_port, help="with --serve: the chat page's port (default: serve.port, 8000; "
                                              "0: a free one)")
    p.set_defaults(func=cmd_demo)

    p = add("models", help="provision LLM weights offline: list | pull NAME | verify NAME")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_models)

    p = add("serve", help="run the HTTP API and chat page",
            description="Run the HTTP API and chat page until stopped: Ctrl-C exits with status 130, SIGTERM "
                        "(docker stop, Kubernetes) with 0, both after a graceful shutdown.")
    p.add_argument("--port", type=_port, help="listen on this port (default: serve.port, 8000; 0: a free one, "
                                              "which uvicorn logs)")
    p.set_defaults(func=cmd_serve)

    p = add("index", help="(re)build the product index from a dataset")
    p.add_argument("--data", default=None, help="the dataset, as `eval --data` takes it (default: the bundled "
                                                "amazon:DATA_ROOT/amazon-bundles/DOMAIN of the settings)")
    p.set_defaults(func=cmd_index)

    p = add("behaviour", help="train the behaviour model into behaviour.cache_dir ahead of the service's starts",
            description="Train the network a start with behaviour.serve fits, on the same data (the dataset and the "
                        "ingest journal's products), and keep it in behaviour.cache_dir, where starts on that data "
                        "with these settings load it in seconds instead of training for minutes. Kept already: "
                        "nothing to do.")
    p.add_argument("action", choices=["train"])
    p.add_argument("--data", default=None, help="the dataset, as `eval --data` takes it (default: the bundled "
                                                "amazon:DATA_ROOT/amazon-bundles/DOMAIN of the settings, as "
                                                "`serve` reads it)")
    p.add_argument("--wait", type=_non_negative_int, default=0, metavar="SECONDS",
                   help="when no network is kept for this data yet, wait this long for another trainer (a "
                        "deployment's job) to keep one before training here")
    p.set_defaults(func=cmd_behaviour)

    p = add("journal", help="the ingest journal of API writes: show | export | clear")
    p.add_argument("action", nargs="?", choices=["show", "export", "clear"], default="show",
                   help="show what it holds; export a dataset's rows as products.jsonl / events.jsonl (the API's "
                        "shapes); clear them once the shop's own export includes them")
    p.add_argument("--dataset", help="export/clear: the dataset name `show` lists (e.g. amazon-electronic)")
    p.add_argument("--out", help="export: the folder to write (one dataset a folder)")
    p.add_argument("--force", action="store_true", help="export: overwrite an earlier export in --out")
    p.add_argument("--yes", action="store_true", help="clear: do not ask (needed without a terminal)")
    p.set_defaults(func=cmd_journal)

    # every argument goes to bench/run_all.py, which documents them (`rag-rec bench -h`)
    p = sub.add_parser("bench", help="run benchmarks (source checkout): [NAME ...] [--report] [-- FLAGS]",
                       add_help=False, prefix_chars="+")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import json
    import tomllib

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from rag_rec.errors import RagRecError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RagRecError, ValidationError, tomllib.TOMLDecodeError, json.JSONDecodeError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the command was given: missing, not a directory, not writable
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
