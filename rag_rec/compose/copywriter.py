"""Bundle copy (title + blurb) for copywriters: LLM with a JSON schema, grounded, else a template."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Sequence

from pydantic import ValidationError

from rag_rec.compose.grounding import (
    GroundingReport,
    _leaks,
    degenerate,
    parse_json_object,
    placeholder,
    plain_text,
    vocabulary,
    without,
)
from rag_rec.compose.heuristic import short_title
from rag_rec.compose.llm_composer import _clean
from rag_rec.compose.prompts import load_prompt
from rag_rec.data.models import Product
from rag_rec.errors import LLMOutputError
from rag_rec.llm.base import GenerationRequest
from rag_rec.schemas import LLMCopy

LENGTHS = {"short": "one or two sentences", "medium": "three or four sentences", "long": "a short paragraph"}
MAX_CHARS = {"short": 300, "medium": 600, "long": 1200}
MAX_TITLE = 80
UTF8_BYTES = {"Russian": 2, "Japanese": 3, "Chinese": 3}  # per character of the copy; Latin scripts 1
PROMPT_ROOM = 1024  # tokens of a copy prompt (8 titles and the instructions) and its repair turn's text
log = logging.getLogger("rag_rec.compose.copy")


def copy_schema(length: str) -> dict:
    return {"type": "object", "properties": {"title": {"type": "string", "minLength": 3, "maxLength": MAX_TITLE},
                                             "blurb": {"type": "string", "minLength": 20, "maxLength": MAX_CHARS[length]}},
            "required": ["title", "blurb"], "additionalProperties": False}


def copy_max_tokens(settings, length: str, language: str) -> int:
    """Room for the longest title and blurb asked for: a token per two UTF-8 bytes (small models' vocabularies
    split other scripts finely), within what the context leaves after the prompt and a repair turn."""
    need = (MAX_TITLE + MAX_CHARS[length]) * UTF8_BYTES.get(language, 1) // 2 + 32
    return max(settings.max_tokens, min(need, (settings.max_model_len - PROMPT_ROOM) // 2))


def template_copy(products: Sequence[Product]) -> tuple[str, str]:
    first = products[0]
    title = f"{first.category[-1]} bundle" if first.category else f"{short_title(first, 3)} bundle"
    blurb = (f"Everything you need in one go: {short_title(first)} together with "
             + ", ".join(short_title(p) for p in products[1:]) + ".")
    return plain_text(title), plain_text(blurb)


_NUMBER_WORDS = r"(?:five|four|fünf|vier|cinq|quatre|cinco|cuatro|cinque|quattro|quatro|vijf|пять|четыре)"
_STARS = r"(?:stars?|sterne?n?|étoiles?|estrellas?|stelle|estrelas?|sterren|звёзд\w*|звезд\w*)"


def _claims(words: str, unspaced: str) -> re.Pattern:
    """Words (whole words; stems end in \\w*) or, for scripts without spaces, character strings."""
    return re.compile(rf"(?<!\w)(?:{words})(?!\w)|{unspaced}", re.IGNORECASE)


CLAIMS = {
    "a price": re.compile(
        r"(?:[$€£¥₹₽₩]|\b(?:r\$|us\$|chf))\s?\d"
        r"|\d\s?(?:[$€£¥₹₽₩円元]|ドル|ユーロ|美元|欧元|日元|卢布|块钱|(?:usd|eur|gbp|jpy|cny|rmb|rub|chf|dollars?|euros?"
        r"|pounds?|pesos?|reais|reales|yen|yuan|francs?|rupees?|руб(?:л\w*)?|доллар\w*|евро)(?!\w))", re.IGNORECASE),
    "a discount": _claims(
        r"per\s?cent|percent|prozent|pour\s?cent|por\s?ciento|per\s?cento|por\s?cento|procent|процент\w*"
        r"|discount\w*|half[- ]price|clearance sale|on sale|rabatt\w*|reduziert\w*|preisnachlass|sonderangebot\w*"
        r"|remises?|réduction\w*|soldes|promo(?:tion)?s?|descuento\w*|rebaj\w*|scont(?:o|i|at\w*)|saldi"
        r"|desconto\w*|promoç\w*|korting\w*|uitverkoop|afgeprijsd|скидк\w*|распродаж\w*|уценк\w*",
        r"\d+\s?[%％]|[%％]|パーセント|割引|値引|セール|半額|[一二三四五六七八九\d]割|百分之|折扣|打折|优惠|特价|促销|半价|[一二三四五六七八九\d]折"),
    "a rating or sales rank": _claims(
        rf"\d+(?:[.,]\d+)?\s*(?:/\s*5|{_STARS})|{_NUMBER_WORDS}[- ]?{_STARS}|\d[- ]star|top[- ]?rated|highly rated"
        r"|best[- ]?rated|ratings?|bewertung\w*|valoraci\w*|valutazion\w*|avaliaç\w*|beoordeling\w*|рейтинг\w*"
        r"|best[- ]?sell\w*|bestseller\w*|meistverkauft\w*|meilleures? ventes?|más vendid[oa]s?|più vendut[oaie]"
        r"|mais vendid[oa]s?|bestverkocht\w*|best verkochte|бестселлер\w*|хит продаж|продаваем\w*",
        r"\d+(?:[.,]\d+)?\s*つ?星|[五四三]つ星|[五四]星级|評価|レビュー|ベストセラー|売れ筋|ランキング|评分|好评|畅销|热销|销量"),
    "a promise (warranty, shipping, certification, award, rank)": _claims(
        r"\w*garant\w*|\w*garand\w*|garanzi\w*|guarant\w*|warrant\w*|gewährleistung|free (?:shipping|delivery|returns)|ships free"
        r"|money[- ]back|certif\w*|approved|waterproof|water[- ]?resistant|award\w*|#\s?1|no\.?\s?1|nr\.?\s?1|№\s?1"
        r"|n[°º]\s?1|number one|numéro un|número un[oa]?|numero uno|nummer (?:eins|één|een)|versandkostenfrei"
        r"|kostenlose[nr]? versand|gratis[- ]?versand|zertifiziert\w*|zugelassen\w*|wasserdicht\w*|wasserfest\w*"
        r"|preisgekrönt\w*|auszeichnung\w*|testsieger|livraison (?:gratuite|offerte)|frais de port offerts"
        r"|approuvé\w*|homologué\w*|étanche\w*|primé\w*|récompensé\w*|envío (?:gratis|gratuito)|aprobad[oa]s?"
        r"|impermeab\w*|impermeáve\w*|premiad[oa]s?|galardonad[oa]s?|spedizione gratuita|approvat[oaie]|premiat[oaie]"
        r"|frete grátis|(?:entrega|envio) grátis|aprovad[oa]s?|à prova d'água|gratis (?:verzending|bezorging)"
        r"|gecertificeerd|goedgekeurd|waterdicht\w*|bekroond\w*|prijswinnend\w*|гарант\w*|бесплатн\w* доставк\w*"
        r"|сертифи\w*|одобрен\w*|водонепроницаем\w*|награ[дж]\w*|номер один",
        r"保証|保证|保修|质保|送料無料|配送無料|包邮|免运费|免费送货|免费配送|認証|認定|承認|认证|批准|防水|受賞|获奖"
        r"|第?1位|ナンバーワン|第一名|排名第一|no\.\s?1(?!\d)"),
}
NATIVE_WORDS = {"Spanish": ["todo"], "Portuguese": ["todo"]}  # ordinary words there, filler markers in English
_UNIT = re.compile(r"\d+(?:st|nd|rd|th|er|e|re|eme|h|hr|hrs|min|mins|x|k|cm|mm)")


def copy_problem(title: str, blurb: str, products: Sequence[Product], length: str = "long",
                 language: str = "English") -> str | None:
    """Why generated copy cannot be served, or None: longer than asked, the prompt's words, links, looping or
    filler, a product id, prices, discounts, ratings or promises (warranty, free shipping, awards...) that the
    products' titles and descriptions do not state, or model numbers and sizes ("R5", "64GB") that none of the
    bundle's products has. The products' own titles may be quoted: their words are not leaks or filler."""
    if len(title) > MAX_TITLE or len(blurb) > MAX_CHARS[length]:
        return f"copy is longer than asked (title at most {MAX_TITLE}, blurb at most {MAX_CHARS[length]} characters)"
    text = f"{title} {blurb}"
    titled = [p for p in products if not p.placeholder]
    names = [p.title for p in titled]
    if _leaks(text, "bundle_copy", names):
        return "copy repeats the instructions or links elsewhere"
    words = names + NATIVE_WORDS.get(language, [])
    if placeholder(title, words) or placeholder(blurb, words) or degenerate(blurb):
        return "copy is template filler or loops"
    own = vocabulary(titled)
    tokens = set(re.findall(r"[a-z0-9]+", without(text, names).lower()))
    if any(p.id.lower() in tokens - own for p in products if len(p.id) >= 4 and re.search(r"\d", p.id)):
        return "copy names a product id"
    source = " ".join(f"{p.title} {p.description or ''} {' '.join(p.category)}" for p in titled).lower()
    for what, pattern in CLAIMS.items():
        if any(m.group(0).lower() not in source for m in pattern.finditer(text)):
            return f"copy states {what} the product titles do not"
    claims = {t for t in tokens if re.search("[a-z]", t) and re.search("[0-9]", t) and not _UNIT.fullmatch(t)}
    if claims - own:
        return "copy names models or specifications none of the products has"
    return None


def write_copy(llm, settings, products: Sequence[Product], tone: str, length: str, language: str,
               report: GroundingReport | None = None, unavailable: str | None = None) -> tuple[str, str, str]:
    """(title, blurb, produced_by): one generation, one repair turn that quotes why the first was refused, else
    the template ("fallback"; "heuristic" when the LLM is off: `llm` is None and no `unavailable` error). The
    report's notes say why the template was served and that it ignores tone, length and language."""
    report = report if report is not None else GroundingReport()

    def template(path: str, why: str) -> tuple[str, str, str]:
        report.note(f"template copy served: {why}")
        report.note(f"the template is one plain English sentence: tone '{tone}', length '{length}' and language "
                    f"'{language}' were not applied")
        return (*template_copy(products), path)

    if llm is None:
        return template("fallback", f"LLM unavailable ({unavailable})") if unavailable else template(
            "heuristic", "the LLM is off (llm.backend is none)")
    messages = load_prompt("bundle_copy").render(
        items="\n".join(f"- {_clean(p.title)}" for p in products), tone=tone, length=LENGTHS[length],
        language=_clean(language, 40))
    request = GenerationRequest(messages, copy_schema(length), copy_max_tokens(settings, length, language),
                                settings.temperature, repetition_penalty=settings.repetition_penalty, no_emoji=True)
    problem = None
    for attempt in range(2):
        try:
            generation = llm.generate([request])[0]
        except Exception as exc:  # transport failure: no second try
            log.warning("copy generation failed: %s: %s", type(exc).__name__, exc)
            return template("fallback", f"LLM generation failed ({type(exc).__name__})")
        first_problem, problem = problem, "the answer was not the JSON asked for"
        try:
            parsed = LLMCopy.model_validate(parse_json_object(generation.text))
            title, blurb = plain_text(parsed.title), plain_text(parsed.blurb)
            problem = copy_problem(title, blurb, products, length, language)
            if problem is None:
                if attempt:
                    report.note(f"the first LLM copy was rejected ({first_problem}); the repaired one is served")
                return title, blurb, "llm" if attempt == 0 else "llm_repaired"
        except (LLMOutputError, ValidationError):
            pass
        request = replace(request, messages=messages + [
            {"role": "assistant", "content": generation.text[:2000]},
            {"role": "user", "content": f"That copy was rejected: {problem}. Write it again, as JSON only."}])
    return template("fallback", f"LLM copy rejected after a repair ({problem})")
