"""The three evaluation tasks: session bundling (AICL), bundle completion (Sun et al.), basket completion."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from rich.progress import track

from rag_rec.data.models import Dataset, Interactions, Session
from rag_rec.errors import DataError
from rag_rec.eval import metrics as M
from rag_rec.eval.recommenders import PredictedBundle, Ranker, SessionBundler


@dataclass
class TaskResult:
    task: str
    recommender: str
    metrics: dict[str, float]
    n_cases: int
    seconds: float
    per_case: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class RankCase:
    anchors: tuple[str, ...]
    target: str
    user_id: str | None


# ---- splits ----


def bundle_completion_split(dataset: Dataset, *, test_frac: float = 0.2, seed: int = 0) -> tuple[Dataset, list[RankCase]]:
    """Hold out whole sessions: their bundles become test cases (one hidden item each) and everything that
    reveals them (the sessions, their bundles, the users' interactions with those items) leaves training."""
    rng = random.Random(seed)
    by_session = dataset.bundles_of_session()
    session_ids = sorted(by_session)
    rng.shuffle(session_ids)
    test_sessions = set(session_ids[: max(1, int(len(session_ids) * test_frac))])
    cases: list[RankCase] = []
    leaked: set[tuple[str, str]] = set()
    for sid in sorted(test_sessions, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s)):
        user = dataset.sessions[sid].user_id if sid in dataset.sessions else None
        for bundle in by_session[sid]:
            if len(bundle.items) < 2:
                continue
            target = rng.choice(bundle.items)
            cases.append(RankCase(tuple(i for i in bundle.items if i != target), target, user))
            if user is not None:
                leaked.update((user, i) for i in bundle.items)
    frame = dataset.interactions.frame
    keep = [(u, i) not in leaked for u, i in zip(frame["user_id"], frame["item_id"])]
    train = replace(
        dataset,
        interactions=Interactions(frame[np.asarray(keep, dtype=bool)].copy()) if len(frame) else dataset.interactions,
        sessions={k: v for k, v in dataset.sessions.items() if k not in test_sessions},
        bundles=[b for b in dataset.bundles if b.session_id not in test_sessions],
    )
    return train, cases


def _duplicate_rate(bundles: Sequence[Sequence[str]]) -> float:
    """Share of predicted bundles holding an item twice or an item another bundle also holds (at most 1)."""
    if not bundles:
        return 0.0
    counts: dict[str, int] = {}
    for items in bundles:
        for i in set(items):
            counts[i] = counts.get(i, 0) + 1
    return sum(len(set(b)) != len(b) or any(counts[i] > 1 for i in b) for b in bundles) / len(bundles)


def basket_completion_split(dataset: Dataset, *, max_cases: int = 1000, seed: int = 0) -> tuple[Dataset, list[RankCase]]:
    """Each household's last basket (>= 2 items): hide one item, the rest are anchors; the basket leaves training."""
    rng = random.Random(seed)
    last: dict[str, Session] = {}  # each household's last basket, whatever its size
    for s in dataset.sessions.values():
        if s.user_id is None:
            continue
        cur = last.get(s.user_id)
        if cur is None or (s.timestamp or 0) > (cur.timestamp or 0):
            last[s.user_id] = s
    last = {u: s for u, s in last.items() if len(s.items) >= 2}  # no later basket of the household stays in training
    users = sorted(last)
    rng.shuffle(users)
    chosen = [last[u] for u in users[:max_cases]]
    cases = []
    for s in chosen:
        target = rng.choice(s.items)
        cases.append(RankCase(tuple(i for i in s.items if i != target), target, s.user_id))
    held = {s.id for s in chosen}
    frame = dataset.interactions.frame
    train = replace(dataset, interactions=Interactions(frame[~frame["session_id"].isin(held)].copy()),
                    sessions={k: v for k, v in dataset.sessions.items() if k not in held})
    return train, cases


# ---- runners ----


def run_ranking(task: str, train: Dataset, cases: Sequence[RankCase], ranker: Ranker,
                ks: Sequence[int] = (5, 10, 20)) -> TaskResult:
    if not cases:
        raise DataError(f"no {task} test cases in {train.name!r}: it needs sessions or baskets to hold out")
    t0 = time.perf_counter()
    ranker.fit(train)
    fit_s = time.perf_counter() - t0
    rows = []
    for case in track(cases, description=f"{task} / {ranker.name}", transient=True):
        j = ranker.vocab.index.get(case.target)
        if j is None:  # the ranker cannot know the target: below every item it scores
            placed = M.TiedRank(len(ranker.vocab), 0, 0.0)
        else:
            placed = M.tied_rank(ranker.score_vector(case.anchors, case.user_id), j)
        row = {"rank": placed.rank, "auc": placed.auc, "mrr": placed.mrr()}
        for k in ks:
            row[f"recall@{k}"] = placed.recall_at(k)
            row[f"ndcg@{k}"] = placed.ndcg_at(k)
        rows.append(row)
    metrics = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "rank"}
    if task == "basket_completion":
        metrics.update({f"hr@{k}": metrics[f"recall@{k}"] for k in ks})
    metrics["fit_seconds"] = fit_s
    elapsed = time.perf_counter() - t0
    metrics["ms_per_case"] = 1000 * (elapsed - fit_s) / max(len(rows), 1)
    return TaskResult(task, ranker.name, metrics, len(rows), elapsed, per_case=rows)


def run_session_bundling(dataset: Dataset, bundler: SessionBundler, *, limit: int | None = None,
                         intent_scorer=None, judge=None) -> TaskResult:
    """AICL task on the dataset's test split: predict bundles for each test session."""
    t0 = time.perf_counter()
    truth = dataset.bundles_of_session()
    test_ids = [s for s in dict.fromkeys(dataset.splits.get("test", [])) if s in truth][: limit or None]
    if not test_ids:
        raise DataError(f"dataset {dataset.name} has no test session with a true bundle: session_bundling needs a "
                        "split with test sessions and their bundles (e.g. aicl:FILE)")
    train_ids = set(dataset.splits.get("train", [])) - set(dataset.splits.get("test", []))
    train = replace(dataset, sessions={k: v for k, v in dataset.sessions.items() if k in train_ids},
                    bundles=[b for b in dataset.bundles if b.session_id in train_ids])
    bundler.fit(train)
    sessions = [dataset.sessions[s] for s in test_ids]
    predictions = bundler.bundle_sessions(sessions, dataset)
    rows, examples = [], []
    for session, preds in zip(sessions, predictions):
        valid = _valid_prediction(session, preds)
        true_sets = [b.items for b in truth[session.id]]
        sc = M.session_scores([p.items for p in preds] if valid else [], true_sets)
        predicted_items = [i for p in preds for i in p.items]
        allowed = set(session.items)
        row = {"valid": float(valid), **sc.__dict__, "n_pred": len(preds),
               "hallucinated_item_rate": (sum(i not in allowed for i in predicted_items) / len(predicted_items)
                                          if predicted_items else 0.0),
               "duplicate_rate": _duplicate_rate([p.items for p in preds]),
               "unnamed_rate": sum(not (p.intent or "").strip() for p in preds) / len(preds) if preds else 0.0}
        rows.append(row)
        if len(examples) < 12:
            examples.append({"session": session.id, "items": list(session.items),
                             "truth": [{"items": list(b.items), "intent": b.intent} for b in truth[session.id]],
                             "predicted": [{"items": list(p.items), "intent": p.intent} for p in preds]})
    metrics = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} if rows else {}
    if intent_scorer is not None:
        metrics.update(intent_scorer(sessions, predictions, truth))
    close = getattr(bundler, "close", None)
    if close is not None:
        close()  # free the bundler's engine before the judge loads its own
    if judge is not None:
        from rag_rec.eval.judge import JudgeCase, summarize_judgements

        cases = [JudgeCase(tuple(dataset.products[i].title for i in p.items), p.intent)  # unnamed: unnamed_rate
                 for preds in predictions for p in preds
                 if (p.intent or "").strip() and all(i in dataset.products for i in p.items)]
        judge_instance = judge() if callable(judge) and not hasattr(judge, "judge_many") else judge
        metrics.update(summarize_judgements(judge_instance.judge_many(cases)))
        if hasattr(judge_instance.llm, "close"):
            judge_instance.llm.close()
    for attr in ("fallbacks", "llm_sessions", "intents_replaced"):  # intents_replaced: named by the heuristic
        if hasattr(bundler, attr):
            metrics[f"llm_{attr}"] = float(getattr(bundler, attr))
    metrics["seconds_per_session"] = (time.perf_counter() - t0) / max(len(rows), 1)
    return TaskResult("session_bundling", bundler.name, metrics, len(rows), time.perf_counter() - t0,
                      per_case=rows, examples=examples)


def _valid_prediction(session: Session, preds: Sequence[PredictedBundle]) -> bool:
    """Valid: every bundle has >= 2 distinct items, all from the session."""
    allowed = set(session.items)
    return all(len(set(p.items)) >= 2 and set(p.items) <= allowed for p in preds)


def intent_similarity_scorer(encoder) -> callable:
    """Intent quality: ROUGE-1/2/L and embedding cosine of each hit bundle's intent vs the crowd intent."""

    def score(sessions, predictions, truth) -> dict[str, float]:
        pairs = []
        for session, preds in zip(sessions, predictions):
            for p in preds:
                for t in truth[session.id]:
                    if set(p.items) <= set(t.items) and t.intent and p.intent:
                        pairs.append((p.intent, t.intent))
                        break
        if not pairs:
            return {"intent_pairs": 0}
        rouge = [M.rouge_scores(p, t) for p, t in pairs]
        out = {f"intent_{k}": float(np.mean([r[k] for r in rouge])) for k in rouge[0]}
        a = encoder.encode([p for p, _ in pairs])
        b = encoder.encode([t for _, t in pairs])
        out["intent_embedding_sim"] = float(np.mean(np.sum(a * b, axis=1)))
        out["intent_pairs"] = len(pairs)
        return out

    return score
