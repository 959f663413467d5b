"""Bundle copy (title + blurb) for copywriters: LLM with a JSON schema, grounded, else a template."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Sequence

from pydantic import ValidationError

from rag_rec.compose.grounding import _leaks, degenerate, parse_json_object, placeholder, plain_text, vocabulary
from rag_rec.compose.heuristic import short_title
from rag_rec.compose.llm_composer import _clean
from rag_rec.compose.prompts import load_prompt
from rag_rec.data.models import Product
from rag_rec.errors import LLMOutputError
from rag_rec.llm.base import GenerationRequest
from rag_rec.schemas import LLMCopy

LENGTHS = {"short": "one or two sentences", "medium": "three or four sentences", "long": "a short paragraph"}
MAX_CHARS = {"short": 300, "medium": 600, "long": 1200}
log = logging.getLogger("rag_rec.compose.copy")


def copy_schema(length: str) -> dict:
    return {"type": "object", "properties": {"title": {"type": "string", "minLength": 3, "maxLength": 80},
                                             "blurb": {"type": "string", "minLength": 20, "maxLength": MAX_CHARS[length]}},
            "required": ["title", "blurb"], "additionalProperties": False}


def template_copy(products: Sequence[Product]) -> tuple[str, str]:
    first = products[0]
    title = f"{first.category[-1]} bundle" if first.category else f"{short_title(first, 3)} bundle"
    blurb = (f"Everything you need in one go: {short_title(first)} together with "
             + ", ".join(short_title(p) for p in products[1:]) + ".")
    return title, blurb


_MONEY = re.compile(r"[$€£¥₹]\s?\d|\d\s?(?:usd|eur|gbp|dollars?|euros?)\b|\d\s?%|\bpercent\b", re.IGNORECASE)
_RATING = re.compile(r"\b\d(?:\.\d)?\s*(?:stars?|/\s*5)\b|\bbest[- ]?sell", re.IGNORECASE)


def copy_problem(title: str, blurb: str, products: Sequence[Product]) -> str | None:
    """Why generated copy cannot be served, or None: the prompt's words, links, looping or filler, prices,
    discounts or ratings (the prompt forbids claims the titles do not support), or model numbers and sizes
    ("R5", "64GB") that none of the bundle's products has."""
    text = f"{title} {blurb}"
    if _leaks(text, "bundle_copy"):
        return "copy repeats the instructions or links elsewhere"
    if placeholder(title) or placeholder(blurb) or degenerate(blurb):
        return "copy is template filler or loops"
    titles = " ".join(p.title for p in products).lower()
    if any(m.group(0).lower() not in titles for m in (*_MONEY.finditer(text), *_RATING.finditer(text))):
        return "copy states a price, discount or rating the product titles do not"
    own = vocabulary(products)
    claims = {t for t in re.findall(r"[a-z0-9]+", text.lower()) if re.search("[a-z]", t) and re.search("[0-9]", t)}
    if claims - own:
        return "copy names models or specifications none of the products has"
    return None


def write_copy(llm, settings, products: Sequence[Product], tone: str, length: str, language: str
               ) -> tuple[str, str, str]:
    """(title, blurb, produced_by): one generation, one repair turn that quotes why the first was refused, else
    the template."""
    if llm is None:
        title, blurb = template_copy(products)
        return title, blurb, "heuristic"
    messages = load_prompt("bundle_copy").render(
        items="\n".join(f"- {_clean(p.title)}" for p in products), tone=tone, length=LENGTHS[length],
        language=_clean(language, 40))
    request = GenerationRequest(messages, copy_schema(length), settings.max_tokens, settings.temperature,
                                repetition_penalty=settings.repetition_penalty, no_emoji=True)
    for attempt in range(2):
        try:
            generation = llm.generate([request])[0]
        except Exception as exc:  # transport failure: no second try
            log.warning("copy generation failed: %s: %s", type(exc).__name__, exc)
            break
        try:
            parsed = LLMCopy.model_validate(parse_json_object(generation.text))
            title, blurb = plain_text(parsed.title), plain_text(parsed.blurb)
            problem = copy_problem(title, blurb, products)
            if problem is None:
                return title, blurb, "llm" if attempt == 0 else "llm_repaired"
        except (LLMOutputError, ValidationError):
            problem = "the answer was not the JSON asked for"
        request = replace(request, messages=messages + [
            {"role": "assistant", "content": generation.text[:2000]},
            {"role": "user", "content": f"That copy was rejected: {problem}. Write it again, as JSON only."}])
    title, blurb = template_copy(products)
    return title, blurb, "fallback"
