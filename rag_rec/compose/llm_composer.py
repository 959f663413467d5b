"""The LLM composer: candidates -> prompt -> structured generation (ids restricted to candidates) ->
grounding -> one repair retry -> fallback to the heuristic composer. Batched across requests."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Sequence

from rag_rec.compose.base import ComposeContext, ComposeResult
from rag_rec.compose.grounding import GroundingReport, bundles_schema, ground_bundles, keyed
from rag_rec.compose.heuristic import HeuristicComposer, kind_of
from rag_rec.compose.prompts import load_prompt
from rag_rec.data.models import Product
from rag_rec.errors import LLMOutputError
from rag_rec.llm.base import GenerationRequest, LLMBackend
from rag_rec.settings import LLMSettings

log = logging.getLogger("rag_rec.compose")

# chat-template control tokens (<|im_start|>, <|eot_id|>, <s>, [INST]...): in catalogue text they would open turns
_TEMPLATE_TOKENS = re.compile(r"<\|[^<>|]{0,64}\|>|</?s>|\[/?INST\]|<<\s*/?SYS\s*>>|<\|?|\|>", re.IGNORECASE)
REPAIR_ALLOWANCE = 128  # tokens for the repair turn's instruction beside the quoted first answer


def _clean(text: str, limit: int = 160) -> str:
    """Product text as prompt data: one line, no chat-template control tokens, no braces/backticks that could
    look like structure, bounded."""
    text = _TEMPLATE_TOKENS.sub(" ", str(text))
    text = " ".join(text.split()).replace("{", "(").replace("}", ")").replace("`", "'")
    return text[:limit]


def estimated_tokens(messages: list[dict[str, str]]) -> int:
    """An upper estimate of a prompt's tokens without the model's tokenizer: a third of its UTF-8 bytes (English
    is ~4 bytes a token; other scripts 2-3 bytes a character) plus the turns' template."""
    return sum(len(m["content"].encode()) // 3 + 8 for m in messages)


def prompt_tokens(llm, messages: list[dict[str, str]]) -> int:
    """The prompt's tokens by the backend's own tokenizer when it has one (VLLMEngine.prompt_tokens), else the
    estimate."""
    counter = getattr(llm, "prompt_tokens", None)
    if counter is not None:
        try:
            return counter(messages)
        except Exception:  # the estimate is an upper bound for any byte-level tokenizer's English
            log.exception("counting prompt tokens failed; using the estimate")
    return estimated_tokens(messages)


def describe(product, key: str) -> str:
    parts = [f"{key}: {_clean(product.title)}"]
    if product.category:
        parts.append(f"[{_clean(product.category[-1], 40)}]")
    if product.price is not None:
        parts.append(f"${product.price:.2f}")
    return " ".join(parts)


class LLMComposer:
    name = "llm"

    def __init__(self, llm: LLMBackend, settings: LLMSettings, *, fallback: HeuristicComposer | None = None):
        self.llm, self.settings = llm, settings
        self.fallback = fallback or HeuristicComposer()
        self.template = load_prompt("compose_bundles")

    def build_request(self, context: ComposeContext) -> tuple[GenerationRequest | None, dict[str, str]]:
        """The generation request and its key map; candidates are cut from the end of the list until the prompt
        leaves room in the model's context for the answer and a repair turn. None when fewer than two products
        could be listed (nothing to compose)."""
        cands = [c.id for c in context.candidates if c.id in context.products][: self.settings.max_candidates]
        limit = self.settings.max_model_len - 2 * self.settings.max_tokens - REPAIR_ALLOWANCE
        while True:
            request, key_to_id = self._request(context, cands)
            used = prompt_tokens(self.llm, request.messages)
            if used <= limit or not cands:
                break
            cands = cands[:min(len(cands) - 1, len(cands) * limit // used)]
        if used > limit or len(key_to_id) < 2:
            return None, key_to_id
        return request, key_to_id

    def _request(self, context: ComposeContext, cands: Sequence[str]) -> tuple[GenerationRequest, dict[str, str]]:
        anchors = [a for a in context.anchors if a in context.products]
        ids = list(dict.fromkeys(anchors + spread_by_kind(cands, context.products, anchors)))
        key_to_id = keyed(ids)
        id_to_key = {v: k for k, v in key_to_id.items()}
        products = context.products
        anchors = ", ".join(f"{id_to_key[a]} ({_clean(products[a].title, 80)})" for a in context.anchors
                            if a in id_to_key) or "none"
        history = "; ".join(_clean(products[i].title, 60) for i in context.user_history[-5:] if i in products) or "none"
        messages = self.template.render(
            need=_clean(context.need, 300) if context.need else "not stated",
            anchors=anchors,
            user_history=history,
            candidates="\n".join(describe(products[i], id_to_key[i]) for i in ids),
            k=str(context.k),
            bundle_size=str(context.bundle_size),
            budget=f"Budget per bundle: ${context.budget:.2f}" if context.budget else "",
        )
        schema = bundles_schema(list(key_to_id), context.k, context.bundle_size)
        return GenerationRequest(messages, schema, self.settings.max_tokens, self.settings.temperature,
                                 repetition_penalty=self.settings.repetition_penalty, no_emoji=True), key_to_id

    def compose(self, context: ComposeContext) -> ComposeResult:
        return self.compose_many([context])[0]

    def compose_many(self, contexts: Sequence[ComposeContext]) -> list[ComposeResult]:
        built = [self.build_request(c) for c in contexts]
        results: list[ComposeResult | None] = [None] * len(contexts)
        for n, (request, key_to_id) in enumerate(built):
            if request is None:
                why = ("fewer than two products to compose" if len(key_to_id) < 2
                       else "the products do not fit the model's context")
                results[n] = self._fallback(contexts[n], why)
        todo = [n for n in range(len(contexts)) if results[n] is None]
        if not todo:
            return results
        try:
            generations = self._generate([built[n][0] for n in todo])
        except Exception as exc:  # transport/engine failure: serve the grounded fallback, say why
            log.warning("LLM generation failed: %s: %s", type(exc).__name__, exc)
            for n in todo:
                results[n] = self._fallback(contexts[n], f"LLM unavailable ({type(exc).__name__})")
            return results
        retry: list[int] = []
        errors: dict[int, str] = {}
        first_text: dict[int, str] = {}
        for n, gen in zip(todo, generations):
            first_text[n] = gen.text
            try:
                results[n] = self._ground(contexts[n], built[n][1], gen.text, "llm")
            except LLMOutputError as exc:
                errors[n] = str(exc)
                retry.append(n)
        if retry:
            repair_requests = []
            for n in retry:
                req, _ = built[n]
                messages = req.messages + [
                    {"role": "assistant", "content": first_text[n][:2000]},
                    {"role": "user", "content": f"That answer was rejected: {errors[n]}. Answer again with JSON "
                                                f"only, using only the product keys listed."}]
                repair_requests.append(replace(req, messages=messages))  # same schema and sampling
            try:
                repaired = self._generate(repair_requests)
            except Exception as exc:
                log.warning("LLM repair generation failed: %s: %s", type(exc).__name__, exc)
                repaired = None
                for n in retry:
                    errors[n] += f"; retry failed ({type(exc).__name__})"
            for j, n in enumerate(retry):
                if repaired is not None:
                    try:
                        results[n] = self._ground(contexts[n], built[n][1], repaired[j].text, "llm_repaired")
                        continue
                    except LLMOutputError as exc:
                        errors[n] += f"; retry: {exc}"
                results[n] = self._fallback(contexts[n], errors[n])
        return results

    def _generate(self, requests: list[GenerationRequest]):
        generations = self.llm.generate(requests)
        if len(generations) != len(requests):
            raise LLMOutputError(f"the backend answered {len(generations)} of {len(requests)} requests")
        return generations

    def _ground(self, context: ComposeContext, key_to_id: dict[str, str], text: str, path: str) -> ComposeResult:
        report = GroundingReport()
        try:
            bundles = ground_bundles(text, key_to_id, context.products, k=context.k,
                                     bundle_size=context.bundle_size, anchors=context.anchors, budget=context.budget,
                                     report=report)
        except LLMOutputError:
            raise
        except Exception as exc:  # a grounding bug must not take the request down: the fallback serves it
            log.exception("grounding failed on a model answer")
            raise LLMOutputError(f"the answer could not be checked ({type(exc).__name__})") from exc
        scores = {c.id: c.score for c in context.candidates}
        for b in bundles:
            b.score = sum(scores.get(i, 0.0) for i in b.items)
        return ComposeResult(bundles, path, self.llm.name, report.repaired, raw=text)

    def _fallback(self, context: ComposeContext, why: str) -> ComposeResult:
        result = self.fallback.compose(context)
        result.produced_by = "fallback"
        result.notes = [f"LLM output rejected, served the heuristic composer: {why}"] + result.notes
        return result


def spread_by_kind(ids: Sequence[str], products: Mapping[str, Product], taken: Sequence[str] = ()) -> list[str]:
    """`ids` (in rank order) dealt one kind at a time: each kind's best, then each kind's second best, and so on;
    the kinds of `taken` (the anchors) start a round later. A bundle holds one product per kind, so the first
    candidates a model reads are ones it can combine; small models pick mostly from the top of the list."""
    dealt = Counter(kind_of(products[i]) for i in taken)
    order = []
    for rank, i in enumerate(ids):
        kind = kind_of(products[i])
        order.append((dealt[kind], rank, i))
        dealt[kind] += 1
    return [i for _, _, i in sorted(order)]
