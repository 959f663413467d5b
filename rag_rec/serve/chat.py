"""Dialogue policy of the shopping assistant: need + budget from the conversation, clarify or answer, reply text.

Deterministic and free of I/O: the app gives it a product lookup and the service's BundleResponse.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rag_rec.schemas import MAX_ANCHORS, BundleRequest, BundleResponse, ChatMessage, ChatRequest, ItemOut

def _num(name: str = "n") -> str:
    """An amount ("1,299.99", "1.299,99", "50", "2k"), not the digits of "1080p" or "32GB"."""
    return (rf"(?P<{name}>\d{{1,3}}(?:[.,]\d{{3}})+(?:[.,]\d{{1,2}})?|\d{{1,7}}(?:[.,]\d{{1,2}})?)"
            rf"(?:\s*(?P<{name}k>k)\b|(?![\w]))")


_NUM = _num()
_CURRENCY = r"(?:(?:dollars?|bucks|usd|euros?|eur)\b|€)"
_SIGN = r"(?:\$|€)"
_UPPER = (r"(?:under|below|less\s+than|no\s+more\s+than|not\s+more\s+than|max(?:imum)?|at\s+most|up\s+to|within|"
          r"cheaper\s+than|spend(?:ing)?(?:\s+(?:at\s+most|up\s+to|under|about|around))?|around|about|"
          r"(?:do\s+not|don't|won't|can't|cannot)\s+(?:want\s+to\s+)?spend\s+(?:more\s+than|over)|"
          r"budget(?:\s+(?:of|is))?\s*:?)")
_LIMIT = r"\s*(?:or\s+less|or\s+under|max|tops|at\s+most|budget|limit)"
BUDGET_PATTERNS = (
    re.compile(r"between\s+" + _SIGN + r"?\s*\d[\d.,]*\s*(?:and|to|-|–)\s*" + _SIGN + r"?\s*" + _NUM
               + r"(?:\s*" + _CURRENCY + r")?", re.IGNORECASE),                                # between $20 and $40
    re.compile(_SIGN + r"\s*\d[\d.,]*\s*(?:-|–|to)\s*" + _SIGN + r"?\s*" + _NUM, re.IGNORECASE),  # $20-$40
    re.compile(_UPPER + r"\s+(?:an?\s+)?" + _SIGN + r"\s*" + _NUM, re.IGNORECASE),             # under $50, budget of $1k
    re.compile(_UPPER + r"\s+(?:an?\s+)?" + _NUM + r"\s*" + _CURRENCY, re.IGNORECASE),         # under 50 dollars
    re.compile(_SIGN + r"\s*" + _NUM + _LIMIT, re.IGNORECASE),
    re.compile(_NUM + r"\s*" + _CURRENCY + _LIMIT, re.IGNORECASE),
    re.compile(r"budget(?:\s+(?:of|is)\s*|\s*:\s*)(?:an?\s+)?" + _NUM, re.IGNORECASE),       # budget is 80
    re.compile(r"\bfor\s+(?:about\s+|around\s+)?" + _SIGN + r"\s*" + _NUM, re.IGNORECASE),     # a tripod for $50
    re.compile(r"\bfor\s+(?:about\s+|around\s+)?" + _NUM + r"\s*" + _CURRENCY, re.IGNORECASE),  # for 50 bucks
    re.compile(r"(?:under|below|less\s+than|no\s+more\s+than|at\s+most|up\s+to|max)\s+" + _NUM
               + r"(?=\s*(?:[.!?,;]|$))", re.IGNORECASE),                                      # a tv under 2k
)
ONLY_AMOUNT = re.compile(r"^\s*(?:(?:i'd\s+say|maybe|about|around|max(?:imum)?|up\s+to|under|say)\s+)?"
                         + _SIGN + r"?\s*" + _NUM + r"\s*" + _CURRENCY + r"?\s*(?:max|tops|please)?[\s.!]*$",
                         re.IGNORECASE)                                                        # "$50" as an answer
NOT_A_LIMIT = re.compile(r"\b(?:not|no|cost|costs|costed|paid|pay|was|were|priced(?:\s+at)?|worth)\s*$", re.IGNORECASE)
NO_BUDGET = re.compile(r"\b(?:no\s+budget|any\s+price(?:\s+is\s+(?:fine|ok(?:ay)?))?|price\s+(?:doesn't|does\s+not|"
                       r"won't)\s+matter|money\s+is\s+no\s+(?:object|issue)|no\s+(?:price\s+)?limit)\b",
                       re.IGNORECASE)
CHEAPER = re.compile(r"\b(cheaper|less\s+expensive|lower\s+price|too\s+(?:expensive|pricey)|"
                     r"(?:costs?|is|it's|that's)\s+too\s+much)\b", re.IGNORECASE)
PRODUCT_ID = re.compile(r"\b(?=[A-Z0-9]*\d)(?=[A-Z0-9]*[A-Z])[A-Z0-9]{8,14}\b|\b\d{5,10}\b", re.IGNORECASE)
LEADING_FILLER = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"^(?:hi|hello|hey|hiya|good\s+(?:morning|afternoon|evening))\b[\s,!.]*(?:there\b[\s,!.]*)?",
    r"^(?:ok(?:ay)?|so|well|and|also|plus|great|thanks?(?:\s+you)?)\b[\s,!.]*",
    (r"^(?:please\s+)?(?:can|could|would|will)\s+you\s+(?:please\s+)?(?:help\s+me\s+)?"
     r"(?:find|recommend|suggest|show|get|pick|put\s+together)?(?:\s+me)?\s*"),
    r"^(?:i'?m|i\s+am|we'?re|we\s+are)\s+(?:looking|searching|shopping)\s+for\s+",
    r"^(?:looking|searching|shopping)\s+for\s+",
    r"^(?:i|we)\s*(?:'d|would)?\s*(?:really\s+)?(?:need|want|like|would\s+like)\s+(?:to\s+(?:buy|get|find)\s+)?",
    r"^(?:i|we)\s+(?:have|own)\s+a\s+budget\b[^,.;]*[,.;]?\s*",
    r"^(?:show|find|recommend|suggest|get|give)\s+(?:me|us)\s+",
    r"^(?:recommend|suggest)\s+",
    r"^(?:what|how)\s+about\s+",
    r"^(?:what|which)\s+(?:goes|go|works?|pairs?)\s+(?:well\s+)?with\b\s*",
    r"^(?:actually|instead|no)\b[\s,]*",
))
TRAILING_FILLER = re.compile(r"(?:[\s,]*\b(?:please|thanks?|thank\s+you|pls|instead)\b)+[\s.!?]*$|[\s.!?,;:]+$", re.IGNORECASE)
REPLACE_MARKERS = re.compile(r"\b(instead|something\s+else|never\s*mind|forget\s+(?:it|that)|"
                             r"(?:a|an)\s+different\s+(?:product|thing|kind|topic))\b", re.IGNORECASE)
REFINES = re.compile(r"\b(it|its|one|ones|them|that|those|this|these|in\s+(?:a|an)\s+\w+\s+(?:colou?r|size))\b",
                     re.IGNORECASE)
NEED_PHRASE = re.compile(r"\b(need|want|looking\s+for|searching\s+for|shopping\s+for|recommend|suggest|"
                         r"show\s+me|find\s+me)\b", re.IGNORECASE)
STOPWORDS = frozenset(["a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for", "with", "from", "into", "onto", "about", "as", "is", "are", "was", "were", "be", "been", "being", "am", "i", "i'm", "im", "me", "my", "mine", "we", "us", "our", "you", "your", "he", "she", "they", "them", "their", "his", "her", "it", "its", "this", "that", "these", "those", "there", "here", "some", "any", "all", "each", "every", "no", "not", "just", "really", "very", "quite", "also", "too", "so", "such", "then", "than", "more", "most", "less", "much", "many", "few", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "do", "does", "did", "done", "have", "has", "had", "get", "got", "make", "made", "please", "thanks", "thank", "hi", "hello", "hey", "ok", "okay", "yes", "yeah", "sure", "well", "like", "want", "wants", "need", "needs", "needed", "looking", "look", "find", "show", "give", "recommend", "suggest", "help", "buy", "buying", "bought", "shop", "shopping", "search", "searching", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "new", "one", "ones", "maybe", "perhaps", "around", "about", "under", "over", "below", "within", "cheaper", "expensive", "cheap", "price", "prices", "budget", "dollars", "dollar", "bucks", "usd", "spend", "spending", "max", "maximum", "least", "most", "instead", "actually", "else", "rather", "different", "never", "mind", "forget"])
VAGUE = frozenset(["something", "anything", "everything", "stuff", "thing", "things", "nice", "good", "great", "cool", "awesome", "best", "better", "fun", "neat", "lovely", "gift", "gifts", "present", "presents", "idea", "ideas", "recommendation", "recommendations", "bundle", "bundles", "products", "product", "items", "item", "whatever", "surprise", "random", "useful", "interesting", "special"])
TIMING_NOTE = re.compile(r"^[\w -]+ \d+(?:\.\d+)? ?ms$")  # e.g. "retrieval 73.6 ms": for operators, not shoppers
TOKEN = re.compile(r"[^\W_][\w'+\-.]*[^\W_]|[^\W_]")  # letters and digits of every script
MAX_FILLER_PASSES = 8

PATH_NOTES = {
    "llm": "Composed by the language model from the retrieved products.",
    "llm_repaired": "Composed by the language model (its draft needed a repair to stay grounded).",
    "fallback": "The language model was unavailable, so these come from the retrieval fallback.",
    "heuristic": "Composed from co-purchase and similarity signals, without the language model.",
}


def content_words(text: str) -> list[str]:
    """Words that say what the shopper needs (no filler, no vague words, no prices)."""
    return [w for w in TOKEN.findall(text.lower())
            if w not in STOPWORDS and w not in VAGUE and not w.replace(".", "").isdigit()]


def _money(value: float) -> str:
    return f"${value:,.0f}" if float(value).is_integer() else f"${value:,.2f}"


def _amount(number: str) -> float:
    """"1,299.99" / "1.299,99" / "1.000" (thousands) / "12,50" / "12.50" as a float."""
    grouped = re.fullmatch(r"\d{1,3}([.,])\d{3}(?:\1\d{3})*(?:[.,]\d{1,2})?", number)
    if grouped:
        thousands = grouped.group(1)
        decimal = "," if thousands == "." else "."
        return float(number.replace(thousands, "").replace(decimal, "."))
    return float(number.replace(",", "."))


def find_budget(text: str) -> tuple[float | None, str]:
    """The last budget phrase in `text` (as dollars) and the text without any budget phrase. A number after
    "cost", "paid", "not" or "no" is no limit ("which cost around $800", "not less than $100")."""
    spans: list[tuple[int, int, float]] = []
    for pattern in BUDGET_PATTERNS:
        for m in pattern.finditer(text):
            if any(start <= m.start() < end or m.start() <= start < m.end() for start, end, _ in spans):
                continue
            if NOT_A_LIMIT.search(text[max(0, m.start() - 24):m.start()]):
                continue
            value = _amount(m.group("n")) * (1000 if m.group("nk") else 1)
            spans.append((m.start(), m.end(), value))
    if not spans:
        return None, text
    spans.sort()
    stripped = text
    for start, end, _ in reversed(spans):
        stripped = stripped[:start] + " " + stripped[end:]
    budget = spans[-1][2]
    return (budget if budget > 0 else None), re.sub(r"\s{2,}", " ", stripped).strip()


def clean_fragment(text: str) -> str:
    """A user turn reduced to its need: greetings, 'I'm looking for', 'please' and trailing punctuation removed."""
    previous = None
    text = text.strip()
    for _ in range(MAX_FILLER_PASSES):  # bounded: a turn of 1,000 "no"s must not hold the server
        if previous == text:
            break
        previous = text
        for pattern in LEADING_FILLER:
            text = pattern.sub("", text, count=1).strip()
        text = TRAILING_FILLER.sub("", text).strip()
    return text


@dataclass
class ConversationState:
    """What the conversation so far asks for."""

    fragments: list[str] = field(default_factory=list)
    budget: float | None = None
    anchors: list[ItemOut] = field(default_factory=list)
    asked_cheaper_without_budget: bool = False

    @property
    def need(self) -> str | None:
        text = ", ".join(self.fragments).strip(" ,")
        return text[:1000] or None

    @property
    def is_vague(self) -> bool:
        return not content_words(self.need or "")


@dataclass(frozen=True)
class Clarify:
    question: str
    missing: Literal["need", "budget"] = "need"


@dataclass(frozen=True)
class Answer:
    request: BundleRequest
    state: ConversationState


ProductLookup = Callable[[str], "ItemOut | None"]


class ChatPolicy:
    """Turns a conversation into either a clarifying question or a BundleRequest, and writes the reply."""

    def __init__(self, k: int = 3, bundle_size: int = 3, max_fragments: int = 3, max_id_lookups: int = 5):
        self.k, self.bundle_size = k, bundle_size
        self.max_fragments, self.max_id_lookups = max_fragments, max_id_lookups

    def understand(self, messages: Sequence[ChatMessage], lookup: ProductLookup | None = None,
                   budget: float | None = None) -> ConversationState:
        """Fold the user turns in order: new topics replace the need (and products named before), follow-ups
        refine it. `budget` (the page's budget field) is where the conversation's budget starts."""
        state = ConversationState(budget=budget)
        for message in messages:
            if message.role != "user":
                continue
            text = message.content.replace("\u2019", "'").replace("\u2018", "'")
            asked_for_budget = state.asked_cheaper_without_budget
            if NO_BUDGET.search(text):
                state.budget, state.asked_cheaper_without_budget = None, False
                text = NO_BUDGET.sub(" ", text)
            only = ONLY_AMOUNT.match(text)
            if only:  # "$50" answering "what is the most you would like to spend?", or said on its own
                budget, text = _amount(only.group("n")) * (1000 if only.group("nk") else 1), ""
            else:
                budget, text = find_budget(text)
            if CHEAPER.search(text):
                if budget is None and state.budget is not None:
                    budget = round(state.budget * 0.75, 2)
                state.asked_cheaper_without_budget = budget is None and state.budget is None
                text = CHEAPER.sub(" ", text)
            elif asked_for_budget and budget is None:
                state.asked_cheaper_without_budget = False  # the shopper went on without giving one
            if budget is not None:
                state.budget = budget if budget > 0 else None
                state.asked_cheaper_without_budget = False
            named_before = len(state.anchors)
            text = self._take_anchors(text, state, lookup)
            fragment = clean_fragment(text)
            words = content_words(fragment)
            if not words:  # "$50", "than that", "please": nothing to add to the need
                continue
            replaces = bool(REPLACE_MARKERS.search(message.content))
            starts_new = replaces or (not REFINES.search(fragment) and (
                len(words) >= 4 or bool(NEED_PHRASE.search(message.content))))
            if replaces and len(state.anchors) == named_before:
                state.anchors = []  # "... instead" naming no product leaves the earlier products behind
            if starts_new or state.is_vague:
                state.fragments = [fragment]
            else:
                topic, rest = state.fragments[:1], state.fragments[1:]
                state.fragments = topic + (rest + [fragment])[-(self.max_fragments - 1):]
        return state

    def _take_anchors(self, text: str, state: ConversationState, lookup: ProductLookup | None) -> str:
        if lookup is None:
            return text
        for m in list(PRODUCT_ID.finditer(text))[: self.max_id_lookups]:
            item = lookup(m.group(0))
            if item is None and not m.group(0).isupper():
                item = lookup(m.group(0).upper())  # ids typed in lower case
            if item is not None and all(a.id != item.id for a in state.anchors):
                state.anchors.append(item)
            if item is not None:
                text = text.replace(m.group(0), " ")
        return re.sub(r"\s{2,}", " ", text).strip()

    def plan(self, request: ChatRequest, lookup: ProductLookup | None = None) -> Clarify | Answer:
        state = self.understand(request.messages, lookup, request.budget)
        if state.is_vague and not state.anchors and not request.user_id:
            return Clarify(self._need_question(state))
        if state.asked_cheaper_without_budget:
            return Clarify("Sure. What is the most you would like to spend on the whole bundle, "
                           "for example “under $50”?", missing="budget")
        bundle_request = BundleRequest(
            user_id=request.user_id,
            anchor_items=[a.id for a in state.anchors][-MAX_ANCHORS:],  # the latest, when turns named more
            need=None if state.is_vague else state.need,
            filters=request.filters,
            budget=state.budget,
            k=self.k,
            bundle_size=self.bundle_size,
        )
        return Answer(request=bundle_request, state=state)

    @staticmethod
    def _need_question(state: ConversationState) -> str:
        said = state.need
        budget = f" with {_money(state.budget)} to spend" if state.budget else ""
        if said:
            opener = f"“{said[:60]}” could be many things{budget}."
        elif state.budget:
            opener = f"Happy to help{budget}."
        else:
            opener = "Happy to help you put a bundle together."
        return (f"{opener} What is it for: a product you already own, an activity or a room? "
                "For example “accessories for my new DSLR camera” or “a desk setup for working from home”.")

    @staticmethod
    def _scope(answer: Answer, response: BundleResponse | None = None) -> str:
        """What the bundles are for; "under $X" only where every bundle's total is known to be within it."""
        request, state = answer.request, answer.state
        parts = []
        if request.need:
            parts.append(f"{'' if request.need.lower().startswith('for ') else 'for '}“{request.need}”")
        if state.anchors:
            titles = ", ".join(textwrap.shorten(a.title, 50, placeholder="…") for a in state.anchors[:2])
            parts.append(f"to go with {titles}")
        if not parts and request.user_id:
            parts.append("based on your past purchases")
        if request.budget:
            checked = response is None or all(
                b.total_price is not None and b.total_price <= request.budget + 0.005 for b in response.bundles)
            parts.append(f"under {_money(request.budget)}" if checked else
                         f"(your {_money(request.budget)} budget could not be checked: some prices are not listed)")
        return " ".join(parts)

    def preamble(self, answer: Answer) -> str:
        return f"Looking for bundles {self._scope(answer)}…\n"

    def reply(self, answer: Answer, response: BundleResponse) -> str:
        scope = self._scope(answer, response)
        n = len(response.bundles)
        if n:
            lines = [f"Here {'is' if n == 1 else 'are'} {n} bundle{'' if n == 1 else 's'} {scope}:"]
            for i, bundle in enumerate(response.bundles, start=1):
                price = f", {_money(bundle.total_price)} in total" if bundle.total_price is not None else ""
                lines.append(f"{i}. {bundle.title} ({len(bundle.items)} items{price})")
            lines.append(PATH_NOTES.get(response.produced_by, ""))
        else:
            lines = [f"I could not find a bundle {scope}.",
                     "Try naming a product you own or what it is for"
                     + (", or a higher budget." if answer.request.budget else ".")]
        shopper_notes = [note for note in response.notes if not TIMING_NOTE.match(note)]
        lines.extend(f"Note: {note}" for note in shopper_notes[:3])
        return "\n".join(line for line in lines if line)


def text_chunks(text: str, size: int = 48) -> list[str]:
    """Split a reply into word-aligned chunks for streaming; joining them gives the text back."""
    chunks, current = [], ""
    for piece in re.findall(r"\S+\s*|\s+", text):
        if current and len(current) + len(piece) > size:
            chunks.append(current)
            current = ""
        current += piece
    if current:
        chunks.append(current)
    return chunks
