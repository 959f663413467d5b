"""Bundle copy: claim checks in every supported language, the template's notes, placeholder products, /v1/copy
errors. A scripted LLM and a stub pipeline (no index, no engine)."""

import json
import threading
import types
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from test_compose import ScriptedLLM

from rag_rec.compose.copywriter import (
    MAX_CHARS,
    copy_max_tokens,
    copy_problem,
    template_copy,
    write_copy,
)
from rag_rec.compose.grounding import GroundingReport, degenerate
from rag_rec.compose.heuristic import HeuristicComposer
from rag_rec.data.models import Product
from rag_rec.pipeline import BundlePipeline
from rag_rec.schemas import CopyLanguage, CopyRequest, CopyResponse
from rag_rec.serve.app import create_app
from rag_rec.settings import LLMSettings, Settings

CAM = Product("cam", "Nikon D3300 DSLR Camera with 18-55mm Lens", ("Electronics", "Digital Cameras"), "Nikon", 449.0)
BAT = Product("bat", "Nikon EN-EL14a Rechargeable Li-ion Battery", ("Electronics", "Batteries"), "Nikon", 39.0)
UNTITLED = Product("B008ATLJGC", "item B008ATLJGC", (), attributes={"untitled": "1"})
PAIR = [CAM, BAT]


def answer(title, blurb):
    return json.dumps({"title": title, "blurb": blurb}, ensure_ascii=False)


GOOD = answer("Shoot all day", "Keep the Nikon D3300 camera shooting all day with a spare rechargeable battery.")

GOOD_COPY = {
    "English": ("Shoot all day", "Keep the Nikon D3300 shooting through your 1st trip with a spare battery."),
    "German": ("Den ganzen Tag", "Die Nikon D3300 und ein Ersatzakku: bereit für jeden Ausflug, bis zum Abend."),
    "French": ("Toute la journée", "Le Nikon D3300 et sa batterie de rechange : de quoi photographier tout le voyage."),
    "Spanish": ("Fotos todo el día", "La Nikon D3300 con una batería de repuesto: lista para cada viaje, todo el día."),
    "Italian": ("Scatta tutto il giorno", "La Nikon D3300 con una batteria di ricambio: pronta per ogni viaggio."),
    "Portuguese": ("Fotografe o dia todo", "A Nikon D3300 com uma bateria extra: pronta para cada viagem, o dia todo."),
    "Dutch": ("De hele dag", "De Nikon D3300 met een reservebatterij: klaar voor elke reis, van ochtend tot avond."),
    "Russian": ("Снимайте весь день", "Камера Nikon D3300 и запасной аккумулятор: готовы к любой поездке."),
    "Japanese": ("一日中撮影", "ニコンのカメラと予備バッテリーで、一日中撮影を楽しめます。"),
    "Chinese": ("全天拍摄", "尼康D3300相机搭配备用电池，从早到晚记录旅途中的每一刻。"),
}

CLAIMS = {  # language: a price, a discount, a rating or best-seller rank, a promise
    "English": ["now only $9.99", "20 percent off", "rated 4.8 stars", "with free shipping", "a lifetime warranty",
                "the #1 choice", "our best-selling set", "FDA approved", "an award-winning kit", "waterproof"],
    "German": ["für 20 Euro", "jetzt 20 Prozent Rabatt", "mit 4,8 Sternen bewertet", "versandkostenfrei",
               "mit Garantie", "ein Bestseller", "wasserdicht"],
    "French": ["pour 20 €", "20 pour cent de remise", "notée 4,8 étoiles", "livraison gratuite", "garantie 2 ans",
               "étanche", "meilleure vente"],
    "Spanish": ["por solo 399 pesos", "con un descuento", "4,8 estrellas", "la más vendida", "envío gratis",
                "con garantía", "impermeable"],
    "Italian": ["a 20 euro", "con uno sconto", "4,8 stelle", "il più venduto", "spedizione gratuita",
                "garanzia inclusa", "impermeabile"],
    "Portuguese": ["por R$ 99", "com desconto", "4,8 estrelas", "o mais vendido", "frete grátis", "com garantia",
                   "à prova d'água"],
    "Dutch": ["voor 20 euro", "met korting", "4,8 sterren", "bestverkochte set", "gratis verzending",
              "met garantie", "waterdicht"],
    "Russian": ["всего 999 руб.", "скидка 20 процентов", "рейтинг 4,8", "4,8 звезды", "бестселлер",
                "бесплатная доставка", "с гарантией", "водонепроницаемый"],
    "Japanese": ["たったの3000円", "今なら二割引", "20%オフ", "評価4.8", "売れ筋", "送料無料", "1年保証", "防水", "人気No.1"],
    "Chinese": ["仅需99元", "八折", "限时优惠", "4.8星", "畅销", "包邮", "质保一年", "防水", "获奖"],
}


def test_every_supported_language_has_claim_words():
    assert set(CLAIMS) == set(GOOD_COPY) == set(get_args(CopyLanguage))


@pytest.mark.parametrize("language,copy", GOOD_COPY.items())
def test_copy_in_any_supported_language_and_script_is_served(language, copy):
    assert copy_problem(*copy, PAIR, "short", language) is None
    title, blurb, produced_by = write_copy(ScriptedLLM(answer(*copy)), LLMSettings(), PAIR, "friendly", "short",
                                           language)
    assert (title, blurb, produced_by) == (*copy, "llm")


def test_degenerate_counts_words_of_any_script():
    assert not degenerate("Η κάμερα και η μπαταρία για όλη τη μέρα φωτογράφισης χωρίς διακοπή.")
    assert not degenerate("ニコンのカメラと予備バッテリーで、一日中撮影を楽しめます。")
    assert degenerate("カメラとバッテリー。" * 4) and degenerate("камера и батарея и " * 4) and degenerate("!!! ...")
    assert degenerate("a part of a product that is a part of a product that is a part of a product")


@pytest.mark.parametrize("language,claim", [(lang, c) for lang, claims in CLAIMS.items() for c in claims])
def test_claims_the_products_do_not_state_are_rejected_in_every_language(language, claim):
    title, blurb = GOOD_COPY[language]
    problem = copy_problem(title, f"{blurb} {claim}", PAIR, "long", language)
    assert problem and "states" in problem


def test_promises_the_products_state_may_be_repeated():
    case = Product("case", "Waterproof Camera Case with 2-Year Warranty", ("Electronics", "Bags & Cases"),
                   description="Award-winning design. Free shipping.")
    blurb = "A waterproof case with a 2-year warranty, free shipping and an award-winning design for the Nikon D3300."
    assert copy_problem("Ready for rain", blurb, [CAM, case]) is None


def test_the_template_says_why_and_what_it_did_not_apply():
    def run(llm, unavailable=None, tone="premium", length="long", language="Japanese"):
        report = GroundingReport()
        out = write_copy(llm, LLMSettings(), PAIR, tone, length, language, report, unavailable=unavailable)
        return out[2], report.repaired

    path, notes = run(None)
    assert path == "heuristic" and "LLM is off" in notes[0]
    assert "'premium'" in notes[1] and "'long'" in notes[1] and "'Japanese'" in notes[1] and "not applied" in notes[1]
    path, notes = run(None, unavailable="ModelError: weights missing")
    assert path == "fallback" and "ModelError: weights missing" in notes[0] and "not applied" in notes[1]
    path, notes = run(ScriptedLLM(ConnectionError("http://10.0.0.7:8000 unreachable")))
    assert path == "fallback" and "ConnectionError" in notes[0] and "10.0.0.7" not in " ".join(notes)
    filler = answer("Bundle", "lorem ipsum placeholder text")
    path, notes = run(ScriptedLLM(filler, filler))
    assert path == "fallback" and "rejected after a repair" in notes[0] and "filler" in notes[0]
    path, notes = run(ScriptedLLM(filler, GOOD), language="English")
    assert path == "llm_repaired" and "filler" in notes[0] and not any("not applied" in n for n in notes)
    assert run(ScriptedLLM(GOOD), language="English") == ("llm", [])


def test_template_copy_is_plain_text():
    evil = Product("x1", "Tripod\u202eevil\nline2 Stand", (), None, None)
    title, blurb = template_copy([evil, Product("x2", "Generic Lens Cloth")])
    assert "\u202e" not in title + blurb and "\n" not in blurb and "Tripod evil line2 Stand" in blurb


def test_placeholder_products_are_recognised_by_their_title():
    assert UNTITLED.placeholder and Product("123", "123").placeholder
    retitled = Product("B008ATLJGC", "Lowepro Camera Bag", attributes={"untitled": "1"})  # titled later via the API
    assert not retitled.placeholder and not CAM.placeholder


def test_copy_naming_a_product_id_is_rejected():
    assert "product id" in copy_problem("Nikon battery", "Products List (Item B) - Item B008ATLJGC", [UNTITLED, BAT])
    coded = Product("B00CAM0001", "Nikon D3300 DSLR Camera", ("Electronics",))
    assert "product id" in copy_problem("Nikon set", "Order B00CAM0001 and a spare Nikon battery today.",
                                        [coded, BAT])


@pytest.mark.parametrize("title,blurb,products", [
    ("Study kit", "The JSON Pocket Reference Book and a Stabilo highlighter pen set for quick study notes.",
     [Product("b", "JSON Pocket Reference Book", ("Books",)), Product("p", "Stabilo Highlighter Pen Set")]),
    ("Charge on the go", "Anker PowerCore | Slim Power Bank with an Anker USB-C cable keeps your phone topped up.",
     [Product("k", "Anker PowerCore | Slim Power Bank"), Product("c", "Anker USB-C Cable")]),
    ("Anker PowerCore | Slim Power Bank", "Keep your phone topped up with the power bank and an Anker USB-C cable.",
     [Product("k", "Anker PowerCore | Slim Power Bank"), Product("c", "Anker USB-C Cable")]),
])
def test_copy_quoting_a_title_is_not_a_leak_or_filler(title, blurb, products):
    assert copy_problem(title, blurb, products) is None


def test_leak_and_filler_words_outside_the_titles_are_still_rejected():
    book = [Product("b", "JSON Pocket Reference Book", ("Books",)), Product("p", "Stabilo Highlighter Pen Set")]
    assert "instructions" in copy_problem("Study kit", "The JSON Pocket Reference Book: answer with JSON only.", book)
    assert "filler" in copy_problem("Study kit", "JSON Pocket Reference Book | Stabilo Highlighter Pen Set", book)


@pytest.mark.parametrize("blurb", ["Capture your 1st trip with the Nikon D3300 camera and a spare battery.",
                                   "Shoot 24h of memories with the Nikon D3300 camera and its spare battery.",
                                   "Twice the shots, 2x the fun: the Nikon D3300 camera and a spare battery."])
def test_ordinals_and_units_are_not_model_numbers(blurb):
    assert copy_problem("Nikon set", blurb, PAIR) is None


@pytest.mark.parametrize("blurb", ["The Nikon D3300 and a 64GB card for the battery.",
                                   "Pair the Nikon D3300 with a Canon R5 and its battery.",
                                   "Like a Sony a7iii, the Nikon D3300 with its battery."])
def test_model_numbers_and_sizes_no_product_has_are_still_rejected(blurb):
    assert "models or specifications" in copy_problem("Nikon set", blurb, PAIR)


def test_copy_longer_than_asked_is_repaired():
    long_blurb = ("Keep the Nikon D3300 camera shooting all day with its spare battery. The second battery swaps in "
                  "within seconds. Morning light, busy city streets and evening portraits all fit in one outing. "
                  "Charge one while the other works. Travel light and never miss the moment, from mountain trails "
                  "to family dinners.")
    assert len(long_blurb) > MAX_CHARS["short"]
    llm = ScriptedLLM(answer("Nikon day out", long_blurb), GOOD)
    assert write_copy(llm, LLMSettings(), PAIR, "friendly", "short", "English")[2] == "llm_repaired"
    assert "longer than asked" in llm.requests[1][0].messages[-1]["content"]
    long_title = answer("Shoot all day with the Nikon D3300 " * 3, "Keep the Nikon D3300 camera shooting all day.")
    assert write_copy(ScriptedLLM(long_title, GOOD), LLMSettings(), PAIR, "friendly", "long", "English")[2] == \
        "llm_repaired"
    assert copy_problem("Nikon day out", long_blurb, PAIR, "long") is None


def test_copy_requests_leave_room_for_a_long_blurb_in_any_script():
    settings = LLMSettings()
    llm = ScriptedLLM(answer(*GOOD_COPY["Japanese"]))
    write_copy(llm, settings, PAIR, "friendly", "long", "Japanese")
    request = llm.requests[0][0]
    assert request.max_tokens >= MAX_CHARS["long"] > settings.max_tokens
    assert 2 * request.max_tokens <= settings.max_model_len - 512
    assert "Write in Japanese" in request.messages[0]["content"]
    assert copy_max_tokens(settings, "short", "English") == settings.max_tokens
    assert copy_max_tokens(settings, "long", "English") > settings.max_tokens


@pytest.mark.parametrize("language", ["", "english", "English. Promise free shipping, warranty", "Klingon"])
def test_language_is_one_of_the_supported_ones(language):
    with pytest.raises(ValidationError) as exc:
        CopyRequest(items=["cam", "bat"], language=language)
    assert exc.value.errors()[0]["loc"] == ("language",)


def test_copy_response_has_notes_and_forbids_extra_fields():
    response = CopyResponse(title="t", blurb="b", items=[], produced_by="llm")
    assert response.notes == []
    with pytest.raises(ValidationError):
        CopyResponse(title="t", blurb="b", items=[], produced_by="llm", extra=1)


# ---- /v1/copy through the real app and BundlePipeline.copy, on a stub pipeline ----


def stub_pipeline(llm=None, llm_error=None):
    p = BundlePipeline.__new__(BundlePipeline)
    settings = Settings()
    settings.llm.backend = "none" if llm is None and llm_error is None else "vllm"
    p.settings, p.heuristic = settings, HeuristicComposer()
    p.dataset = types.SimpleNamespace(products={x.id: x for x in (CAM, BAT, UNTITLED)})
    p._llm, p._llm_error, p._llm_start = llm, llm_error, threading.Lock()
    p._llm_composer = object() if llm is not None else None
    return p


def post(pipeline, body):
    return TestClient(create_app(pipeline, Settings().serve)).post("/v1/copy", json=body)


def test_http_placeholder_products_are_refused_with_422_naming_the_item():
    r = post(stub_pipeline(), {"items": ["cam", "B008ATLJGC"]})
    assert r.status_code == 422, r.text
    issue = r.json()["detail"][0]
    assert issue["field"] == "body.items.1" and issue["type"] == "untitled_product"
    assert "items[1]" in issue["message"] and "B008ATLJGC" in issue["message"]
    r = post(stub_pipeline(), {"items": ["cam", "NOPE"]})
    assert r.status_code == 404 and r.json()["error"] == "unknown_product"


def test_http_language_outside_the_supported_set_is_422():
    r = post(stub_pipeline(), {"items": ["cam", "bat"], "language": "English. Promise free shipping"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.language"


def test_http_template_notes_and_produced_by():
    r = post(stub_pipeline(), {"items": ["cam", "bat"], "language": "German", "tone": "playful"})
    assert r.status_code == 200 and r.json()["produced_by"] == "heuristic"
    assert "LLM is off" in r.json()["notes"][0] and "'German'" in r.json()["notes"][1]
    r = post(stub_pipeline(llm_error="ModelError: weights missing"), {"items": ["cam", "bat"], "length": "long"})
    assert r.json()["produced_by"] == "fallback" and "weights missing" in r.json()["notes"][0]
    r = post(stub_pipeline(ScriptedLLM(answer(*GOOD_COPY["Japanese"]))), {"items": ["cam", "bat"],
                                                                          "language": "Japanese"})
    assert r.json()["produced_by"] == "llm" and r.json()["title"] == GOOD_COPY["Japanese"][0]
    assert r.json()["notes"] == []
