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
    """Bundle = (anchor if any) + best candidates of different kinds, within budget; one seed per bundle.

    Later bundles prefer candidates earlier bundles used least, so k bundles differ where the candidates allow.
    Under a budget, products without a price are left out when others have one (their cost cannot be checked; a
    note says so when no candidate has a price), and a seed over the budget on its own gives way to the next."""

    name = "heuristic"

    def compose(self, context: ComposeContext) -> ComposeResult:
        products, budget = context.products, context.budget
        anchors = [a for a in context.anchors if a in products]
        cands = [c for c in context.candidates if c.id in products and c.id not in anchors]
        rank = {c.id: n for n, c in enumerate(cands)}
        reuse = len(cands) <= context.k * context.bundle_size  # too few candidates for k disjoint bundles
        bundles: list[ComposedBundle] = []
        seen: set[frozenset] = set()
        used_seeds: set[str] = set()
        used_items: dict[str, int] = {}
        unpriced = 0
        prices_known = any(products[c.id].price is not None for c in cands)

        def priced(i: str) -> bool:
            return budget is None or not prices_known or products[i].price is not None

        while len(bundles) < context.k:
            if anchors:
                seed_items = anchors[:1]
            else:
                seed = next((c.id for c in cands if c.id not in used_seeds and not used_items.get(c.id)), None)
                if seed is None:
                    break
                used_seeds.add(seed)
                if not priced(seed) or (budget is not None and (products[seed].price or 0.0) > budget):
                    continue
                seed_items = [seed]
            items = list(seed_items)
            kinds = {kind_of(products[i]) for i in items}
            total = sum(products[i].price or 0.0 for i in items)
            for c in sorted(cands, key=lambda c: (used_items.get(c.id, 0), rank[c.id])):
                if len(items) >= context.bundle_size:
                    break
                if c.id in items or (used_items.get(c.id, 0) >= 1 and not reuse):
                    continue
                p = products[c.id]
                if kind_of(p) in kinds:
                    continue
                if not priced(c.id):
                    unpriced += 1
                    continue
                if budget is not None and total + (p.price or 0.0) > budget:
                    continue
                items.append(c.id)
                kinds.add(kind_of(p))
                total += p.price or 0.0
            key = frozenset(items)
            if len(items) < 2 or key in seen:
                if anchors:
                    break  # the same anchor with the same candidates: nothing new to build
                continue
            seen.add(key)
            for i in items[1:] if anchors else items:
                used_items[i] = used_items.get(i, 0) + 1
            score = sum(c.score for c in cands if c.id in key)
            bundles.append(ComposedBundle(self._title(items, products), tuple(items), self._reason(items, context),
                                          score))
        notes = [] if bundles else ["not enough distinct candidates to form a bundle"]
        if bundles and len(bundles) < context.k:
            notes.append(f"{len(bundles)} of the {context.k} bundles asked for: the candidates allow no more")
        if unpriced and budget is not None:
            notes.append("products without a price were left out: the budget cannot be checked for them")
        if budget is not None and cands and not prices_known:
            notes.append("no candidate has a price: the budget could not be checked")
        if budget is not None and any(products[a].price is None for a in anchors):
            notes.append("an anchor has no price: the budget was checked without it")
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
        counts = {i: int(by_id[i].evidence.get("co_purchases", 0)) for i in items[1:] if i in by_id}
        best = max(counts, key=counts.get, default=None)
        parts = [f"{first} goes with {', '.join(rest)}"]
        if best is not None and counts[best] > 0 and context.anchors:
            n = counts[best]
            parts.append(f"shoppers bought {short_title(products[best], 4)} with it {n} time{'s' if n != 1 else ''}")
        elif context.need:
            parts.append("they match what you asked for")
        else:
            parts.append("they are different kinds of product that are used together")
        return "; ".join(parts) + "."
