"""The non-LLM composer: greedy complementary bundles from fused candidates with evidence-based reasons.

It is the fallback whenever the LLM output cannot be grounded, and the baseline the LLM must beat."""

from __future__ import annotations

from typing import Sequence

from rag_rec.compose.base import ComposeContext, ComposedBundle, ComposeResult
from rag_rec.data.models import Product


def short_title(product: Product, words: int = 8) -> str:
    parts = product.title.replace(",", " ").split()
    return " ".join(parts[:words]) + ("…" if len(parts) > words else "")


def kind_of(product: Product) -> str:
    return product.kind


class HeuristicComposer:
    """Bundle = (anchor if any) + best candidates of different kinds, within budget; one seed per bundle."""

    name = "heuristic"

    def compose(self, context: ComposeContext) -> ComposeResult:
        products = context.products
        cands = [c for c in context.candidates if c.id in products]
        anchors = [a for a in context.anchors if a in products]
        bundles: list[ComposedBundle] = []
        used_seeds: set[str] = set()
        used_items: dict[str, int] = {}
        for _ in range(context.k):
            seed_items = anchors[:1] if anchors else []
            if not seed_items:
                seed = next((c.id for c in cands if c.id not in used_seeds and used_items.get(c.id, 0) == 0), None)
                if seed is None:
                    break
                seed_items = [seed]
                used_seeds.add(seed)
            items = list(seed_items)
            kinds = {kind_of(products[i]) for i in items}
            total = sum(products[i].price or 0.0 for i in items)
            for c in cands:
                if len(items) >= context.bundle_size:
                    break
                if c.id in items or used_items.get(c.id, 0) >= 1 and len(cands) > context.k * context.bundle_size:
                    continue
                p = products[c.id]
                if kind_of(p) in kinds:
                    continue
                if context.budget is not None and total + (p.price or 0.0) > context.budget:
                    continue
                items.append(c.id)
                kinds.add(kind_of(p))
                total += p.price or 0.0
            if len(items) < 2:
                break
            for i in items[1:] if anchors else items:
                used_items[i] = used_items.get(i, 0) + 1
            key = tuple(items)
            if any(tuple(b.items) == key for b in bundles):
                break
            score = sum(c.score for c in cands if c.id in items)
            bundles.append(ComposedBundle(self._title(items, products), key, self._reason(items, context), score))
        notes = [] if bundles else ["not enough distinct candidates to form a bundle"]
        return ComposeResult(bundles, "heuristic", None, notes)

    def compose_many(self, contexts: Sequence[ComposeContext]) -> list[ComposeResult]:
        return [self.compose(c) for c in contexts]

    @staticmethod
    def _title(items: Sequence[str], products: dict[str, Product]) -> str:
        names = [products[i].category[-1] if products[i].category else short_title(products[i], 3) for i in items]
        return " + ".join(dict.fromkeys(names)) if names else "Bundle"

    @staticmethod
    def _reason(items: Sequence[str], context: ComposeContext) -> str:
        products = context.products
        first = short_title(products[items[0]])
        rest = [short_title(products[i]) for i in items[1:]]
        by_id = {c.id: c for c in context.candidates}
        evidence = sum(int(by_id[i].evidence.get("co_purchases", 0)) for i in items if i in by_id)
        parts = [f"{first} goes with {', '.join(rest)}"]
        if evidence:
            parts.append(f"other shoppers bought these together {evidence} time{'s' if evidence != 1 else ''}")
        elif context.need:
            parts.append("they match what you asked for")
        else:
            parts.append("they are different kinds of product that are used together")
        return "; ".join(parts) + "."
