"""Bundle copy (title + blurb) for copywriters: LLM with a JSON schema, grounded, else a template."""

from __future__ import annotations

from typing import Sequence

from pydantic import ValidationError

from rag_rec.compose.grounding import LEAK_MARKERS, parse_json_object, placeholder
from rag_rec.compose.heuristic import kind_of, short_title
from rag_rec.compose.llm_composer import _clean
from rag_rec.compose.prompts import load_prompt
from rag_rec.data.models import Product
from rag_rec.errors import LLMOutputError
from rag_rec.llm.base import GenerationRequest
from rag_rec.schemas import LLMCopy

LENGTHS = {"short": "one or two sentences", "medium": "three or four sentences", "long": "a short paragraph"}
MAX_CHARS = {"short": 300, "medium": 600, "long": 1200}


def copy_schema(length: str) -> dict:
    return {"type": "object", "properties": {"title": {"type": "string", "minLength": 3, "maxLength": 80},
                                             "blurb": {"type": "string", "minLength": 20, "maxLength": MAX_CHARS[length]}},
            "required": ["title", "blurb"], "additionalProperties": False}


def template_copy(products: Sequence[Product]) -> tuple[str, str]:
    kinds = [kind_of(p) for p in products]
    title = f"{kinds[0]} bundle" if kinds else "Bundle"
    blurb = (f"Everything you need in one go: {short_title(products[0])} together with "
             + ", ".join(short_title(p) for p in products[1:]) + ".")
    return title, blurb


def write_copy(llm, settings, products: Sequence[Product], tone: str, length: str, language: str
               ) -> tuple[str, str, str]:
    """(title, blurb, produced_by)."""
    if llm is None:
        title, blurb = template_copy(products)
        return title, blurb, "heuristic"
    messages = load_prompt("bundle_copy").render(
        items="\n".join(f"- {_clean(p.title)}" for p in products), tone=tone, length=LENGTHS[length],
        language=_clean(language, 40))
    request = GenerationRequest(messages, copy_schema(length), settings.max_tokens, settings.temperature)
    for attempt in range(2):
        try:
            text = llm.generate([request])[0].text
            parsed = LLMCopy.model_validate(parse_json_object(text))
            if any(m.lower() in (parsed.title + parsed.blurb).lower() for m in LEAK_MARKERS):
                raise LLMOutputError("copy repeats the instructions")
            if placeholder(parsed.title) or placeholder(parsed.blurb):
                raise LLMOutputError("copy is template filler")
            return parsed.title.strip(), parsed.blurb.strip(), "llm" if attempt == 0 else "llm_repaired"
        except (LLMOutputError, ValidationError):
            continue
        except Exception:  # transport failure: no second try
            break
    title, blurb = template_copy(products)
    return title, blurb, "fallback"
