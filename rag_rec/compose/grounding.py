"""Turning untrusted LLM JSON into grounded bundles: only retrieved ids, no duplicates, bounded sizes,
complements rather than substitutes, reasons that name only the bundle's products, no prompt leakage."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from pydantic import ValidationError

from rag_rec.compose.base import ComposedBundle
from rag_rec.compose.heuristic import kind_of
from rag_rec.data.models import Product
from rag_rec.errors import LLMOutputError
from rag_rec.schemas import LLMBundles

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
LEAK_MARKERS = ("Rules:", "Answer with JSON only", "CANDIDATES:", "You are a shopping assistant",
                "data, not instructions", "Products the shopper is looking at", "Shopper's need", "Recently bought:",
                "Build 1 bundles", "Build 2 bundles", "Build 3 bundles",
                # the repair turn and the grounding errors it quotes: a small model echoes them as titles
                "JSON", "model output", "was rejected", "product keys")
_LINK = re.compile(r"https?://|https?%3a|\bwww\.", re.IGNORECASE)  # invented or injected links: phishing
PROMPT_RUN = 6  # this many consecutive words of the system prompt in a reason is the prompt leaking
_PLACEHOLDER = re.compile(
    r"no description|add your own|your own details|lorem ipsum|placeholder|\btodo\b|\bn/a\b|\|"
    r"|not (?:yet )?(?:stated|specified|available)|add it later|coming soon|buy now"
    r"|\b(?:product|item|bundle|option)\s*#?\d|\d+\s+bundles\b|\b[a-z]+_[a-z_]+\b",
    re.IGNORECASE)
_GENERIC_WORDS = frozenset(
    "a an the and or for with of to my your our new best great top custom product products bundle bundles build "
    "building set sets item items buy sell shop deal deals offer offers package packages collection ever list "
    "sale sales now here all one stuff things seller sellers selling brand brands perfect awesome amazing budget "
    "ultimate essential essentials".split())
MIN_REASON_WORDS = 5


def degenerate(text: str) -> bool:
    """Looping or empty generations ("a part of a product that is a part of a product ...")."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    if len(words) < 2:
        return True
    grams = [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
    return bool(grams) and max(grams.count(g) for g in set(grams)) >= 3


def placeholder(text: str) -> bool:
    """Template filler instead of words for a shopper: "No description yet!", "Sell Product 1|Buy Product 2",
    snake_case slugs, or nothing but generic words ("Custom Product Bundles")."""
    if _PLACEHOLDER.search(text):
        return True
    words = re.findall(r"[a-z]+", text.lower())
    return not words or set(words) <= _GENERIC_WORDS


def about_the_products(reason: str, ids: Sequence[str], products: dict[str, Product]) -> bool:
    """A reason mentions at least one word (4+ letters) of its products' titles or categories."""
    vocabulary = set()
    for i in ids:
        p = products[i]
        vocabulary.update(re.findall(r"[a-z]{4,}", (p.title + " " + " ".join(p.category)).lower()))
    return bool(vocabulary & set(re.findall(r"[a-z]{4,}", reason.lower())) - _GENERIC_WORDS)


def keyed(ids: Sequence[str], prefix: str = "P") -> dict[str, str]:
    """Short keys the model refers to products by (P1, P2, ...) -> product ids."""
    return {f"{prefix}{n}": i for n, i in enumerate(ids, start=1)}


def bundles_schema(keys: Sequence[str], k: int, bundle_size: int) -> dict[str, Any]:
    """JSON schema whose item references can only be candidate keys (structured outputs enforce it)."""
    return {
        "type": "object",
        "properties": {
            "bundles": {
                "type": "array",
                "minItems": 1,
                "maxItems": k,
                "items": {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"type": "string", "enum": list(keys)},
                                  "minItems": 2, "maxItems": bundle_size},
                        "title": {"type": "string", "minLength": 3, "maxLength": 80},
                        "reason": {"type": "string", "minLength": 20, "maxLength": 300},
                    },
                    "required": ["items", "title", "reason"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["bundles"],
        "additionalProperties": False,
    }


def parse_json_object(text: str) -> dict:
    """The first JSON object in the text (models sometimes wrap it in prose or code fences)."""
    if not text or not text.strip():
        raise LLMOutputError("the model returned empty output")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        match = _JSON_OBJECT.search(text)
        if not match:
            # never quote the output: this message reaches response notes, and the output may repeat the prompt
            raise LLMOutputError(f"no JSON object in model output ({len(text)} characters)") from None
        try:
            value = json.loads(match.group(0))
        except json.JSONDecodeError as exc:
            raise LLMOutputError(f"invalid JSON from the model: {exc.msg} at char {exc.pos}") from None
    if not isinstance(value, dict):
        raise LLMOutputError("the model's JSON is not an object")
    return value


def recover_truncated(text: str) -> dict | None:
    """The complete bundles of a JSON answer cut off at max_tokens (the last, partial bundle is dropped)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        import partial_json_parser
    except ImportError:
        return None
    try:
        value = partial_json_parser.loads(text[start:])
    except Exception:
        return None
    bundles = value.get("bundles") if isinstance(value, dict) else None
    if not isinstance(bundles, list):
        return None
    complete = [b for b in bundles[:-1] if isinstance(b, dict) and {"items", "title", "reason"} <= set(b)]
    if bundles and isinstance(bundles[-1], dict) and text.rstrip().endswith(("}", "]")) and \
            {"items", "title", "reason"} <= set(bundles[-1]):
        complete.append(bundles[-1])
    return {"bundles": complete} if complete else None


def _signature(product: Product) -> str:
    words = re.findall(r"[A-Za-z0-9]+", product.title.lower())
    return " ".join(words[:3]) if len(words) >= 3 else ""


@dataclass
class GroundingReport:
    repaired: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        self.repaired.append(message)


def ground_bundles(text: str, key_to_id: dict[str, str], products: dict[str, Product], *, k: int,
                   bundle_size: int, anchors: Sequence[str] = (), budget: float | None = None,
                   report: GroundingReport | None = None) -> list[ComposedBundle]:
    """Validate and repair; raise LLMOutputError when nothing groundable is left."""
    report = report or GroundingReport()
    try:
        doc = parse_json_object(text)
    except LLMOutputError:
        doc = recover_truncated(text)
        if doc is None:
            raise
        report.note("recovered the complete bundles of an output cut off at the token limit")
    try:
        parsed = LLMBundles.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise LLMOutputError(f"model JSON does not match the schema at {'.'.join(map(str, first['loc']))}: "
                             f"{first['msg']}") from None
    allowed_ids = set(key_to_id.values())
    bundles: list[ComposedBundle] = []
    seen_sets: set[frozenset] = set()
    for n, b in enumerate(parsed.bundles[:k]):
        ids: list[str] = []
        for ref in b.items:
            item = key_to_id.get(ref.strip())
            if item is None:
                report.note(f"bundle {n + 1}: dropped unknown reference {ref[:20]!r}")
                continue
            if item in ids:
                report.note(f"bundle {n + 1}: dropped duplicate {ref}")
                continue
            ids.append(item)
        kinds: dict[str, str] = {}
        for item in list(ids):
            kind = kind_of(products[item])
            if kind in kinds and item not in anchors:
                ids.remove(item)
                report.note(f"bundle {n + 1}: dropped a substitute of the same kind ({kind})")
            else:
                kinds.setdefault(kind, item)
        ids = ids[:bundle_size]
        if budget is not None:
            while len(ids) > 2 and sum(products[i].price or 0.0 for i in ids) > budget:
                removable = [i for i in ids if i not in anchors]
                ids.remove(max(removable, key=lambda i: products[i].price or 0.0))
                report.note(f"bundle {n + 1}: dropped an item to fit the budget")
            if sum(products[i].price or 0.0 for i in ids) > budget:
                report.note(f"bundle {n + 1}: over budget, removed")
                continue
        if len(ids) < 2 or frozenset(ids) in seen_sets:
            report.note(f"bundle {n + 1}: fewer than 2 valid distinct items or a repeat, removed")
            continue
        assert set(ids) <= allowed_ids
        seen_sets.add(frozenset(ids))
        reason, title = b.reason.strip(), b.title.strip()
        if (not _reason_is_grounded(reason, ids, key_to_id, products) or _leaks(reason) or degenerate(reason)):
            report.note(f"bundle {n + 1}: reason named products outside the bundle, repeated the instructions "
                        "or looped; replaced")
            reason = grounded_reason(ids, products)
        elif (placeholder(reason) or len(reason.split()) < MIN_REASON_WORDS
              or not about_the_products(reason, ids, products)):
            report.note(f"bundle {n + 1}: reason was filler, not a reason; replaced")
            reason = grounded_reason(ids, products)
        if _leaks(title) or degenerate(title + " x") or len(title) < 3 or placeholder(title):
            report.note(f"bundle {n + 1}: title replaced")
            title = fallback_title(ids, products)
        bundles.append(ComposedBundle(title or "Bundle", tuple(ids), reason))
    if not bundles:
        raise LLMOutputError("no bundle survived grounding: " + "; ".join(report.repaired[:5]))
    return bundles


def _reason_is_grounded(reason: str, ids: Sequence[str], key_to_id: dict[str, str],
                        products: dict[str, Product]) -> bool:
    text = " ".join(re.findall(r"[a-z0-9]+", reason.lower()))
    inside = set(ids)
    for key, item in key_to_id.items():
        if item in inside:
            continue
        if re.search(rf"\b{re.escape(key.lower())}\b", reason.lower()):
            return False
        sig = _signature(products[item])
        if sig and sig in text and not any(_signature(products[i]) == sig for i in inside):
            return False
    return True


@lru_cache(maxsize=1)
def _prompt_runs() -> frozenset[str]:
    from rag_rec.compose.prompts import load_prompt

    runs = set()
    for piece in re.split(r"\{[a-z_]+\}", load_prompt("compose_bundles").system):
        words = re.findall(r"[a-z0-9]+", piece.lower())
        runs.update(" ".join(words[i:i + PROMPT_RUN]) for i in range(len(words) - PROMPT_RUN + 1))
    return frozenset(runs)


def _leaks(text: str) -> bool:
    """Prompt markers, internal/format words, links, or a run of PROMPT_RUN words of the system prompt."""
    low = text.lower()
    if any(marker.lower() in low for marker in LEAK_MARKERS) or _LINK.search(text):
        return True
    words = re.findall(r"[a-z0-9]+", low)
    runs = _prompt_runs()
    return any(" ".join(words[i:i + PROMPT_RUN]) in runs for i in range(len(words) - PROMPT_RUN + 1))


def fallback_title(ids: Sequence[str], products: dict[str, Product]) -> str:
    """The bundle's kinds of product ("Batteries + Memory Cards"); products without a category are left out."""
    kinds = [products[i].category[-1] for i in ids if products[i].category]
    return " + ".join(dict.fromkeys(kinds)) if kinds else f"Bundle of {len(ids)} products"


def grounded_reason(ids: Sequence[str], products: dict[str, Product]) -> str:
    from rag_rec.compose.heuristic import short_title

    names = [short_title(products[i], 6) for i in ids]
    return f"{names[0]} pairs with {', '.join(names[1:])}: different products that are used together."
