"""Weighted reciprocal-rank fusion that keeps, for every candidate, what each source contributed."""

from __future__ import annotations

from typing import Mapping, Sequence

from rag_rec.retrieve.base import Candidate


def weighted_rrf(ranked: Mapping[str, Sequence[str]], weights: Mapping[str, float], *, k: int = 60,
                 limit: int | None = None) -> list[Candidate]:
    """score(i) = sum_s w_s / (k + rank_s(i)). `ranked` maps a source to ids, best first."""
    by_id: dict[str, Candidate] = {}
    for source, ids in ranked.items():
        w = float(weights.get(source, 1.0))
        if w <= 0:
            continue
        for rank, item in enumerate(ids, start=1):
            cand = by_id.get(item)
            if cand is None:
                cand = by_id[item] = Candidate(item, 0.0)
            contribution = w / (k + rank)
            cand.score += contribution
            cand.sources[source] = contribution
            cand.ranks[source] = rank
    out = sorted(by_id.values(), key=lambda c: (-c.score, c.id))
    return out[:limit] if limit else out
