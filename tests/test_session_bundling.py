"""Session bundling (the AICL task) with untrusted LLM output, its judge, metrics, loader and harness edges."""

import hashlib
import json

import jsonschema
import numpy as np
import pytest

from rag_rec.compose.llm_session import LLMSessionBundler, session_schema
from rag_rec.compose.session import make_bundler, name_group
from rag_rec.data.models import Bundle, Dataset, Product, Session
from rag_rec.errors import DataError, LLMOutputError
from rag_rec.eval import metrics as M
from rag_rec.eval import tasks as T
from rag_rec.eval.judge import LLMJudge, parse_judgement, summarize_judgements
from rag_rec.eval.recommenders import PredictedBundle
from rag_rec.llm.base import LLMUnavailable
from rag_rec.settings import Settings
from test_compose import ScriptedLLM


class HashEncoder:
    """Deterministic unit vectors from the text (the bundling logic under test, not the embedding model)."""

    def encode(self, texts, **kw):
        rows = [np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).normal(size=16) for t in texts]
        return np.array([r / np.linalg.norm(r) for r in rows])


CAMERA = ("Electronics", "Camera & Photo")


def tiny_dataset() -> Dataset:
    products = {
        "cam": Product("cam", "Nikon D3300 DSLR Camera", CAMERA + ("Digital Cameras",)),
        "bat": Product("bat", "EN-EL14 Battery for Nikon", CAMERA + ("Batteries",)),
        "bag": Product("bag", "DSLR Camera Bag", CAMERA + ("Bags",)),
        "sd": Product("sd", "SanDisk 32GB SDHC Card", ("Electronics", "Computers", "Memory")),
        "mouse": Product("mouse", "Logitech Wireless Mouse", ("Electronics", "Computers", "Mice")),
        "pad": Product("pad", "Mouse Pad XL", ("Electronics", "Computers", "Mice")),
    }
    sessions = {"s1": Session("s1", ("cam", "bat", "bag")), "s2": Session("s2", ("mouse", "pad", "sd")),
                "t1": Session("t1", ("cam", "bat", "mouse", "pad"))}
    bundles = [Bundle("b1", ("cam", "bat"), "camera power", "s1"), Bundle("b2", ("mouse", "pad"), "desk setup", "s2"),
               Bundle("b3", ("cam", "bat"), "camera kit", "t1"), Bundle("b4", ("mouse", "pad"), "mouse gear", "t1")]
    return Dataset("tiny", products, sessions=sessions, bundles=bundles, splits={"train": ["s1", "s2"], "test": ["t1"]})


def bundler(*outputs, mode="partition", settings=None, labelled=True) -> tuple[LLMSessionBundler, Dataset]:
    b = LLMSessionBundler(settings or Settings(), mode=mode, llm=ScriptedLLM(*outputs))
    b.pregroup._encoder = HashEncoder()
    ds = tiny_dataset()
    train = Dataset("train", ds.products, sessions={k: ds.sessions[k] for k in ("s1", "s2")},
                    bundles=[x for x in ds.bundles if x.session_id in ("s1", "s2")] if labelled else [])
    return b.fit(train), ds


def answer(*groups) -> str:
    return json.dumps({"bundles": [{"items": list(items), "intent": intent} for items, intent in groups]})


@pytest.mark.parametrize("intent", ["   ", "<|im_end|>", "Buy at http://evil.example/x", "Product bundle",
                                    "Answer with JSON only", "(I1), (I2)", "buy product 1"])
def test_a_blank_or_unsafe_partition_intent_is_named_by_the_heuristic(intent):
    b, ds = bundler(answer((["I1", "I2"], intent), (["I3", "I4"], "Mouse and pad")))
    out = b.bundle_sessions([ds.sessions["t1"]], ds)[0]
    assert [p.items for p in out] == [("cam", "bat"), ("mouse", "pad")]
    assert out[0].intent == name_group([ds.products["cam"], ds.products["bat"]]) and out[0].intent.strip()
    assert out[1].intent == "Mouse and pad" and b.intents_replaced == 1


@pytest.mark.parametrize("bad", [None, ["a", "b"], 42, ""])
def test_a_name_mode_intent_that_is_not_text_keeps_the_groups_own_name(bad):
    b, ds = bundler(mode="name")
    b.pregroup.threshold = -10.0  # one group of the whole session
    groups = b.pregroup._predict(ds.sessions["t1"], ds, b.pregroup._vectors([ds.sessions["t1"]], ds), b.pregroup.threshold)
    b._llm = ScriptedLLM(json.dumps({"intents": [bad] + ["Camera power kit"] * (len(groups) - 1)}))
    out = b.bundle_sessions([ds.sessions["t1"]], ds)[0]
    assert len(groups) == 1 and out[0].items == groups[0].items
    assert out[0].intent == groups[0].intent and out[0].intent not in ("None", "['a', 'b']", "42")


def test_the_schema_allows_no_answer_the_answer_model_rejects():
    keys = [f"I{n}" for n in range(1, 81)]
    schema = session_schema(keys, len(keys) // 2)
    for too_big in ({"bundles": [{"items": keys[:12], "intent": "accessory kit"}]},
                    {"bundles": [{"items": keys[2 * k:2 * k + 2], "intent": f"pair {k}"} for k in range(11)]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(too_big, schema)
    jsonschema.validate({"bundles": [{"items": keys[:10], "intent": "accessory kit"}]}, schema)


def test_a_session_over_the_context_budget_is_shortened_or_keeps_its_pre_grouping():
    settings = Settings(llm={"max_model_len": 1200, "max_tokens": 200})
    b, ds = bundler(answer((["I1", "I2"], "Camera power")), settings=settings)
    for n in range(60):
        ds.products[f"x{n}"] = Product(f"x{n}", f"Accessory {n} " + "Ultra HD premium replacement part " * 4,
                                        ("Electronics", "Accessories", f"Kind{n % 3}"))
    big = Session("big", tuple(f"x{n}" for n in range(60)))
    out = b.bundle_sessions([ds.sessions["t1"], big], ds)
    sent = b._llm.requests[0]
    assert len(sent) == 1  # only the session whose prompt fits went to the model
    assert out[0][0].intent == "Camera power" and b.fallbacks == 1
    assert all(set(p.items) <= set(big.items) for p in out[1])


def test_a_failed_llm_batch_gives_every_session_its_pre_grouping():
    b, ds = bundler(LLMUnavailable("engine down"))
    sessions = [ds.sessions["t1"], ds.sessions["s1"]]
    out = b.bundle_sessions(sessions, ds)
    assert len(out) == 2 and b.fallbacks == 2 and b.llm_sessions == 0
    assert all(set(p.items) <= set(s.items) for s, preds in zip(sessions, out) for p in preds)


def test_without_labelled_sessions_the_prompt_has_no_examples():
    b, ds = bundler(answer((["I1", "I2"], "Camera power")), labelled=False)
    out = b.bundle_sessions([ds.sessions["t1"]], ds)
    assert out[0][0].items == ("cam", "bat") and "Example answer" not in json.dumps(b._llm.requests[0][0].messages)


def test_a_null_hallucination_verdict_is_no_verdict():
    base = {"critique": "Fluent and specific.", "naturalness": 3, "coverage": 3, "motivation": 2}
    with pytest.raises(LLMOutputError):
        parse_judgement(json.dumps({**base, "hallucination": None}))
    assert parse_judgement(json.dumps({**base, "hallucination": "NONE"})).faithful is True
    assert summarize_judgements([]) == {"judged": 0.0}
    assert summarize_judgements([None, None]) == {"judge_valid": 0.0, "judged": 2.0}


def test_every_session_metric_ignores_empty_true_bundles_alike():
    scores = M.session_scores([["a", "b"]], [["a", "b"], []])
    assert (scores.recall, scores.recall_1to1, scores.exact_match, scores.jaccard) == (1.0, 1.0, 1.0, 1.0)
    for metric in (M.exact_match_rate, M.mean_best_jaccard, M.one_to_one_scores, M.aicl_session_scores):
        with pytest.raises(ValueError, match="at least one true bundle"):
            metric([], [[]])


def write_split(tmp_path, **changes) -> str:
    doc = {"item_titles": {"A": "Nikon Camera", "B": "Nikon Battery", "C": "Mouse", "D": "Mouse Pad"},
           "train_sessions": ["1"], "test_sessions": ["2"],
           "session_items": {"1": ["A", "B", "C", "D"], "2": ["A", "B", "C"]},
           "session_bundles": {"1": [{"intent": "camera", "items": ["A", "B"]}],
                               "2": [{"intent": "camera", "items": ["A", "B"]}]}}
    doc.update(changes)
    path = tmp_path / "split.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_the_aicl_loader_refuses_bundles_of_fewer_than_two_products_and_split_overlap(tmp_path):
    from rag_rec.data.aicl import load_aicl_split

    empty = write_split(tmp_path, session_bundles={"1": [], "2": [{"intent": "camera", "items": []}]})
    with pytest.raises(DataError, match=r"session_bundles\.2\[0\]\.items.*at least 2"):
        load_aicl_split(empty)
    overlap = write_split(tmp_path, train_sessions=["1", "2"], test_sessions=["2", "2"])
    with pytest.raises(DataError, match="train_sessions.*also test sessions"):
        load_aicl_split(overlap)
    lenient = load_aicl_split(overlap, strict=False)
    assert lenient.splits == {"test": ["2"], "train": ["1"]}


def test_session_bundling_without_a_test_split_is_an_error_naming_the_dataset():
    ds = tiny_dataset()
    ds.splits = {"train": ["s1", "s2"]}
    with pytest.raises(DataError, match="tiny has no test session"):
        T.run_session_bundling(ds, make_bundler("whole-session", Settings()))


def test_the_judge_skips_unknown_ids_and_unnamed_bundles_are_counted():
    good = json.dumps({"critique": "Fine and fluent.", "naturalness": 3, "coverage": 3, "motivation": 2,
                       "hallucination": "none"})

    class Odd:
        name = "odd"

        def fit(self, train):
            return self

        def bundle_sessions(self, sessions, dataset):
            return [[PredictedBundle(("cam", "B0FAKE"), "camera kit"), PredictedBundle(("mouse", "pad"), " "),
                     PredictedBundle(("cam", "bat"), "Camera power")] for _ in sessions]

    judge = LLMJudge(ScriptedLLM(good))
    result = T.run_session_bundling(tiny_dataset(), Odd(), judge=judge)
    assert result.metrics["judged"] == 1 and len(judge.llm.requests[0]) == 1
    assert result.metrics["unnamed_rate"] == pytest.approx(1 / 3)
    assert result.metrics["hallucinated_item_rate"] == pytest.approx(1 / 6)


def test_eval_limit_must_be_positive(capsys):
    from rag_rec.cli import main

    for limit in ("0", "-170"):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "session_bundling", "--data", "x", "--limit", limit, "--out", "x"])
        assert exit_.value.code == 2 and "at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("titles, name", [
    (["Kamera Zubehör Tasche", "Kamera Zubehör Gurt"], "Kamera Zubehör set"),
    (["Écouteurs sans fil", "Écouteurs filaires"], "Écouteurs set"),
    (["USB HDMI adapter", "USB HDMI cable"], "USB HDMI set"),
    (["ワイヤレス イヤホン 黒", "ワイヤレス イヤホン 白"], "ワイヤレス イヤホン set"),
    (["canon lens cap", "canon lens hood"], "Canon Lens set"),
])
def test_heuristic_names_keep_other_scripts_and_acronyms(titles, name):
    assert name_group([Product(str(n), t) for n, t in enumerate(titles)]) == name


def test_the_harness_reports_how_many_intents_the_heuristic_named():
    b, ds = bundler(answer((["I1", "I2"], "(I1), (I2)"), (["I3", "I4"], "Mouse and pad")))
    result = T.run_session_bundling(ds, b)
    assert result.metrics["llm_intents_replaced"] == 1.0 and result.metrics["llm_llm_sessions"] == 1.0
