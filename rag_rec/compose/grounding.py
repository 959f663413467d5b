"""Turning untrusted LLM JSON into grounded bundles: only retrieved ids, no duplicates, bounded sizes,
complements rather than substitutes, reasons that name only the bundle's products, no prompt leakage."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Sequence

from pydantic import ValidationError

from rag_rec.compose.base import ComposedBundle
from rag_rec.compose.heuristic import kind_of
from rag_rec.data.models import Product
from rag_rec.errors import LLMOutputError
from rag_rec.schemas import LLMBundles

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
_UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f]")  # kana, CJK, Thai


def words_of(text: str) -> list[str]:
    """Words of any script (lower case); in scripts written without spaces (Japanese, Chinese, Thai) each character
    is a word."""
    return re.findall(r"[^\W_]+(?:['’][^\W_]+)*", _UNSPACED.sub(lambda m: f" {m.group(0)} ", text.lower()))


def degenerate(text: str) -> bool:
    """Looping or empty generations ("a part of a product that is a part of a product ...")."""
    words = words_of(text)
    if len(words) < 2:
        return True
    n = 8 if 2 * len(_UNSPACED.findall(text)) > len(words) else 4  # characters are shorter than words
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    return bool(grams) and max(grams.count(g) for g in set(grams)) >= 3


def without(text: str, names: Iterable[str]) -> str:
    """`text` with every occurrence of `names` (case-insensitive) blanked out."""
    names = sorted({plain_text(n) for n in names if n.strip()}, key=len, reverse=True)
    return re.sub("|".join(map(re.escape, names)), " ", text, flags=re.IGNORECASE) if names else text


def placeholder(text: str, names: Iterable[str] = ()) -> bool:
    """Template filler instead of words for a shopper: "No description yet!", "Sell Product 1|Buy Product 2",
    snake_case slugs, or nothing but generic words ("Custom Product Bundles"). `names` (product titles the text
    may quote) are not filler."""
    if _PLACEHOLDER.search(without(text, names)):
        return True
    words = re.findall(r"[^\W\d_]+", text.lower())  # letters of any script
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
    """The first JSON object in the text (models sometimes wrap it in prose or code fences, or add a second
    object after it). Integers too long to convert and nesting too deep to parse are invalid output too."""
    if not text or not text.strip():
        raise LLMOutputError("the model returned empty output")
    try:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            start = text.find("{")
            if start < 0:
                # never quote the output: this message reaches logs and the repair turn, and may repeat the prompt
                raise LLMOutputError(f"no JSON object in model output ({len(text)} characters)") from None
            try:
                value, _ = json.JSONDecoder().raw_decode(text, start)
            except json.JSONDecodeError as exc:
                raise LLMOutputError(f"invalid JSON from the model: {exc.msg} at char {exc.pos}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is handled above; LLMOutputError passes through
        raise LLMOutputError(f"unparseable JSON from the model ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise LLMOutputError("the model's JSON is not an object")
    return value


def recover_truncated(text: str) -> dict | None:
    """The complete bundles of a JSON answer cut off at max_tokens (the last, partial bundle is dropped)."""
    start = text.find("{")
    if start < 0:
        return None
    body = text[start:].rstrip().removesuffix(",")
    for closing in ("]}", "}]}"):  # cut right after a whole bundle (or the list): it parses once closed
        try:
            value = json.loads(body + closing)
        except (ValueError, RecursionError):
            continue
        bundles = value.get("bundles") if isinstance(value, dict) else None
        if isinstance(bundles, list):
            complete = [b for b in bundles if isinstance(b, dict) and {"items", "title", "reason"} <= set(b)]
            return {"bundles": complete} if complete else None
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
    return {"bundles": complete} if complete else None  # the last bundle was cut somewhere inside


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
        where = ".".join(str(part) if isinstance(part, int) or part in _SCHEMA_FIELDS else "(an unexpected field)"
                         for part in first["loc"])  # never quote the model's own keys: they may carry anything
        raise LLMOutputError(f"model JSON does not match the schema at {where}: {first['type']}") from None
    allowed_ids = set(key_to_id.values())
    anchor_set = set(anchors)
    bundles: list[ComposedBundle] = []
    seen_sets: set[frozenset] = set()
    for n, b in enumerate(parsed.bundles[:k]):
        ids: list[str] = []
        for ref in b.items:
            item = key_to_id.get(ref.strip())
            if item is None:
                report.note(f"bundle {n + 1}: dropped an unknown reference")
                continue
            if item in ids:
                report.note(f"bundle {n + 1}: dropped a duplicate")
                continue
            ids.append(item)
        chosen = list(ids)
        kinds = {kind_of(products[i]) for i in ids if i in anchor_set}  # an anchor keeps its kind's place
        for item in [i for i in ids if i not in anchor_set]:
            kind = kind_of(products[item])
            if kind in kinds:
                ids.remove(item)
                report.note(f"bundle {n + 1}: dropped a substitute of the same kind ({kind})")
            else:
                kinds.add(kind)
        ids = ids[:bundle_size]
        if budget is not None:
            while len(ids) > 2 and sum(products[i].price or 0.0 for i in ids) > budget:
                removable = [i for i in ids if i not in anchor_set]
                if not removable:
                    break
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
        dropped = [i for i in chosen if i not in ids]
        own = vocabulary(products[i] for i in ids)
        reason = named_by_title(plain_text(b.reason), ids, key_to_id, products)
        title = plain_text(b.title)
        if (not _reason_is_grounded(reason, ids, key_to_id, products, own) or _leaks(reason) or degenerate(reason)
                or names_dropped(reason, dropped, ids, products, own)):
            report.note(f"bundle {n + 1}: reason named products outside the bundle, repeated the instructions "
                        "or looped; replaced")
            reason = grounded_reason(ids, products)
        elif (placeholder(reason) or len(reason.split()) < MIN_REASON_WORDS
              or not about_the_products(reason, ids, products)):
            report.note(f"bundle {n + 1}: reason was filler, not a reason; replaced")
            reason = grounded_reason(ids, products)
        if (_leaks(title) or degenerate(title + " x") or len(title) < 3 or placeholder(title) or _KEY.search(title)
                or not _reason_is_grounded(title, ids, key_to_id, products, own)
                or names_dropped(title, dropped, ids, products, own)):
            report.note(f"bundle {n + 1}: title replaced")
            title = fallback_title(ids, products)
        bundles.append(ComposedBundle(title or "Bundle", tuple(ids), reason))
    if not bundles:
        raise LLMOutputError("no bundle survived grounding: " + "; ".join(report.repaired[:5]))
    return bundles


def _reason_is_grounded(reason: str, ids: Sequence[str], key_to_id: dict[str, str],
                        products: dict[str, Product], own: set[str] | None = None) -> bool:
    """No key, title signature (first three words), brand or model number of a candidate outside the bundle
    (`own`: the bundle's vocabulary, when the caller has it)."""
    text = " ".join(re.findall(r"[a-z0-9]+", reason.lower()))
    inside = set(ids)
    own = vocabulary(products[i] for i in ids) if own is None else own
    for key, item in key_to_id.items():
        if item in inside:
            continue
        if re.search(rf"\b{re.escape(key.lower())}\b", reason.lower()):
            return False
        sig = _signature(products[item])
        if sig and sig in text and not any(_signature(products[i]) == sig for i in inside):
            return False
        if _mentions(text, {d for d in _distinctive(products[item]) if not set(d.split()) <= own}):
            return False
    return True


_SCHEMA_FIELDS = frozenset({"bundles", "items", "title", "reason"})
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_KEY = re.compile(r"\bP\d+\b")


def plain_text(text: str) -> str:
    """One line for a shopper: control, line-break and bidirectional-override characters become spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())


def named_by_title(text: str, ids: Sequence[str], key_to_id: dict[str, str], products: dict[str, Product]) -> str:
    """The bundle's own prompt keys (P3) written as its products' short titles: shoppers never see keys."""
    from rag_rec.compose.heuristic import short_title

    inside = set(ids)
    return _KEY.sub(lambda m: short_title(products[key_to_id[m.group(0)]], 4)
                    if key_to_id.get(m.group(0)) in inside else m.group(0), text)


def vocabulary(products: Iterable[Product]) -> set[str]:
    """Every word of the products' titles, brands and categories (lower case)."""
    words: set[str] = set()
    for p in products:
        words.update(re.findall(r"[a-z0-9]+", " ".join((p.title, p.brand or "", *p.category)).lower()))
    return words


@lru_cache(maxsize=65536)
def _distinctive_of(title: str, brand: str) -> frozenset[str]:
    tokens = re.findall(r"[a-z0-9]+", title.lower())
    found = {t for t in tokens if len(t) >= 3 and re.search("[a-z]", t) and re.search("[0-9]", t)}
    words = title.split()
    if not brand and words and len(words[0]) >= 4 and words[0][0].isupper() and words[0].isalpha():
        brand = words[0]  # catalogues without a brand field mostly lead the title with it
    name = " ".join(re.findall(r"[a-z0-9]+", brand.lower()))
    if len(name) >= 3 and name not in _GENERIC_WORDS and name not in _NOT_BRANDS:
        found.add(name)
    return frozenset(found)


def _distinctive(product: Product) -> frozenset[str]:
    """What names this product rather than its kind: its brand (or a title's leading capitalised word when the
    catalogue has no brand) and its model numbers (tokens of letters and digits, "d3200", "el14")."""
    return _distinctive_of(product.title, product.brand or "")


def _mentions(text_words: str, names: frozenset[str] | set[str]) -> bool:
    padded = f" {text_words} "
    return any(f" {name} " in padded for name in names)


_NOT_BRANDS = frozenset("generic unbranded unknown none replacement original genuine premium professional "
                        "compatible universal high pack".split())


def names_dropped(text: str, dropped: Sequence[str], ids: Sequence[str], products: dict[str, Product],
                  own: set[str] | None = None) -> bool:
    """The text mentions a product grounding took out of the model's bundle: a title word (4+ letters) of it that
    no kept product has; a reason written for the whole set would otherwise describe what is not served."""
    if not dropped:
        return False
    own = vocabulary(products[i] for i in ids) if own is None else own
    text_words = " ".join(re.findall(r"[a-z0-9]+", text.lower()))
    words = set(text_words.split())
    for i in dropped:
        p = products[i]
        if ({w for w in re.findall(r"[a-z]+", p.title.lower()) if len(w) >= 4} - own - _GENERIC_WORDS) & words:
            return True
        if _mentions(text_words, {d for d in _distinctive(p) if not set(d.split()) <= own}):
            return True
    return False


@lru_cache(maxsize=8)
def _prompt_runs(prompt: str = "compose_bundles") -> frozenset[str]:
    from rag_rec.compose.prompts import load_prompt

    runs = set()
    for piece in re.split(r"\{[a-z_]+\}", load_prompt(prompt).system):
        words = re.findall(r"[a-z0-9]+", piece.lower())
        runs.update(" ".join(words[i:i + PROMPT_RUN]) for i in range(len(words) - PROMPT_RUN + 1))
    return frozenset(runs)


def _leaks(text: str, prompt: str = "compose_bundles", names: Iterable[str] = ()) -> bool:
    """Prompt markers, internal/format words, links, or a run of PROMPT_RUN words of the `prompt` template's
    system prompt; `names` (product titles the text may quote) are left out of the marker and prompt checks."""
    low = without(text, names).lower()
    if any(marker.lower() in low for marker in LEAK_MARKERS) or _LINK.search(text):
        return True
    words = re.findall(r"[a-z0-9]+", low)
    runs = _prompt_runs(prompt)
    return any(" ".join(words[i:i + PROMPT_RUN]) in runs for i in range(len(words) - PROMPT_RUN + 1))


def fallback_title(ids: Sequence[str], products: dict[str, Product]) -> str:
    """The bundle's kinds of product ("Batteries + Memory Cards"); products without a category are left out."""
    kinds = [products[i].category[-1] for i in ids if products[i].category]
    return " + ".join(dict.fromkeys(kinds)) if kinds else f"Bundle of {len(ids)} products"


def grounded_reason(ids: Sequence[str], products: dict[str, Product]) -> str:
    from rag_rec.compose.heuristic import short_title

    names = [short_title(products[i], 6) for i in ids]
    return f"{names[0]} pairs with {', '.join(names[1:])}: different products that are used together."
