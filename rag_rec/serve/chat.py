"""Dialogue policy of the shopping assistant: need + budget from the conversation, clarify or answer, reply text.

Deterministic and free of I/O: the app gives it a product lookup and the service's BundleResponse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rag_rec.schemas import MAX_ANCHORS, BundleRequest, BundleResponse, ChatMessage, ChatRequest, ItemOut

_NUM = r"(\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?|\d{1,7}(?:[.,]\d{1,2})?)\s*(k\b)?"
_CURRENCY = r"(?:(?:dollars?|bucks|usd|euros?|eur)\b|€)"
_UPPER = (r"(?:under|below|less\s+than|no\s+more\s+than|not\s+more\s+than|max(?:imum)?|at\s+most|up\s+to|within|"
          r"cheaper\s+than|spend(?:ing)?(?:\s+(?:at\s+most|up\s+to|under|about|around))?|around|about|"
          r"budget(?:\s+(?:of|is))?\s*:?)")
BUDGET_PATTERNS = (
    re.compile(_UPPER + r"\s+(?:an?\s+)?\$\s*" + _NUM, re.IGNORECASE),                    # under $50, budget of $1k
    re.compile(_UPPER + r"\s+(?:an?\s+)?" + _NUM + r"\s*" + _CURRENCY, re.IGNORECASE),    # under 50 dollars
    re.compile(r"\$\s*" + _NUM + r"\s*(?:or\s+less|or\s+under|max|tops|at\s+most|budget|limit)", re.IGNORECASE),
    re.compile(_NUM + r"\s*" + _CURRENCY + r"\s*(?:or\s+less|or\s+under|max|tops|at\s+most|budget|limit)", re.IGNORECASE),
    re.compile(r"budget(?:\s+(?:of|is))?\s*:?\s+(?:an?\s+)?" + _NUM, re.IGNORECASE),       # budget is 80
)
CHEAPER = re.compile(r"\b(cheaper|less\s+expensive|lower\s+price|too\s+(?:expensive|pricey|much))\b", re.IGNORECASE)
PRODUCT_ID = re.compile(r"\b(?=[A-Z0-9]*\d)(?=[A-Z0-9]*[A-Z])[A-Z0-9]{8,14}\b|\b\d{5,9}\b")
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
    r"^(?:actually|instead|no)\b[\s,]*",
))
TRAILING_FILLER = re.compile(r"(?:[\s,]*\b(?:please|thanks?|thank\s+you|pls|instead)\b)+[\s.!?]*$|[\s.!?,;:]+$", re.IGNORECASE)
REPLACE_MARKERS = re.compile(r"\b(instead|actually|something\s+else|never\s*mind|forget\s+(?:it|that)|"
                             r"different|what\s+about|how\s+about|rather)\b", re.IGNORECASE)
NEED_PHRASE = re.compile(r"\b(need|want|looking\s+for|searching\s+for|shopping\s+for|recommend|suggest|"
                         r"show\s+me|find\s+me)\b", re.IGNORECASE)
STOPWORDS = frozenset(["a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for", "with", "from", "into", "onto", "about", "as", "is", "are", "was", "were", "be", "been", "being", "am", "i", "i'm", "im", "me", "my", "mine", "we", "us", "our", "you", "your", "he", "she", "they", "them", "their", "his", "her", "it", "its", "this", "that", "these", "those", "there", "here", "some", "any", "all", "each", "every", "no", "not", "just", "really", "very", "quite", "also", "too", "so", "such", "then", "than", "more", "most", "less", "much", "many", "few", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "do", "does", "did", "done", "have", "has", "had", "get", "got", "make", "made", "please", "thanks", "thank", "hi", "hello", "hey", "ok", "okay", "yes", "yeah", "sure", "well", "like", "want", "wants", "need", "needs", "needed", "looking", "look", "find", "show", "give", "recommend", "suggest", "help", "buy", "buying", "bought", "shop", "shopping", "search", "searching", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "new", "one", "ones", "maybe", "perhaps", "around", "about", "under", "over", "below", "within", "cheaper", "expensive", "cheap", "price", "prices", "budget", "dollars", "dollar", "bucks", "usd", "spend", "spending", "max", "maximum", "least", "most", "instead", "actually", "else", "rather", "different", "never", "mind", "forget"])
VAGUE = frozenset(["something", "anything", "everything", "stuff", "thing", "things", "nice", "good", "great", "cool", "awesome", "best", "better", "fun", "neat", "lovely", "gift", "gifts", "present", "presents", "idea", "ideas", "recommendation", "recommendations", "bundle", "bundles", "products", "product", "items", "item", "whatever", "surprise", "random", "useful", "interesting", "special"])
TIMING_NOTE = re.compile(r"^[\w -]+ \d+(?:\.\d+)? ?ms$")  # e.g. "retrieval 73.6 ms": for operators, not shoppers
TOKEN = re.compile(r"[a-z0-9][a-z0-9'+\-.]*[a-z0-9+]|[a-z0-9]")

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


def find_budget(text: str) -> tuple[float | None, str]:
    """The last budget phrase in `text` (as dollars) and the text without any budget phrase."""
    spans: list[tuple[int, int, float]] = []
    for pattern in BUDGET_PATTERNS:
        for m in pattern.finditer(text):
            if any(start <= m.start() < end or m.start() <= start < m.end() for start, end, _ in spans):
                continue
            number, thousands = m.group(1), m.group(2)
            grouped = re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", number)
            value = float(number.replace(",", "") if grouped else number.replace(",", "."))
            spans.append((m.start(), m.end(), value * (1000 if thousands else 1)))
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
    while previous != text:
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

    def understand(self, messages: Sequence[ChatMessage], lookup: ProductLookup | None = None) -> ConversationState:
        """Fold the user turns in order: new topics replace the need, short follow-ups refine it."""
        state = ConversationState()
        for message in messages:
            if message.role != "user":
                continue
            text = message.content
            budget, text = find_budget(text)
            if CHEAPER.search(text):
                if budget is None and state.budget is not None:
                    budget = round(state.budget * 0.75, 2)
                state.asked_cheaper_without_budget = budget is None and state.budget is None
                text = CHEAPER.sub(" ", text)
            if budget is not None:
                state.budget = budget
                state.asked_cheaper_without_budget = False
            text = self._take_anchors(text, state, lookup)
            fragment = clean_fragment(text)
            words = content_words(fragment)
            if not fragment:
                continue
            starts_new = bool(REPLACE_MARKERS.search(message.content)) or len(words) >= 4 or (
                bool(NEED_PHRASE.search(message.content)) and len(words) >= 2)
            if words and (starts_new or state.is_vague):
                state.fragments = [fragment]
            else:
                state.fragments = (state.fragments + [fragment])[-self.max_fragments:]
        return state

    def _take_anchors(self, text: str, state: ConversationState, lookup: ProductLookup | None) -> str:
        if lookup is None:
            return text
        for m in list(PRODUCT_ID.finditer(text))[: self.max_id_lookups]:
            item = lookup(m.group(0))
            if item is not None and all(a.id != item.id for a in state.anchors):
                state.anchors.append(item)
            if item is not None:
                text = text.replace(m.group(0), " ")
        return re.sub(r"\s{2,}", " ", text).strip()

    def plan(self, request: ChatRequest, lookup: ProductLookup | None = None) -> Clarify | Answer:
        state = self.understand(request.messages, lookup)
        if state.budget is None and request.budget is not None:
            state.budget = request.budget
            state.asked_cheaper_without_budget = False
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
    def _scope(answer: Answer) -> str:
        request, state = answer.request, answer.state
        parts = []
        if request.need:
            parts.append(f"{'' if request.need.lower().startswith('for ') else 'for '}“{request.need}”")
        if state.anchors:
            titles = ", ".join(a.title[:50] for a in state.anchors[:2])
            parts.append(f"to go with {titles}")
        if not parts and request.user_id:
            parts.append("based on your past purchases")
        if request.budget:
            parts.append(f"under {_money(request.budget)}")
        return " ".join(parts)

    def preamble(self, answer: Answer) -> str:
        return f"Looking for bundles {self._scope(answer)}…\n"

    def reply(self, answer: Answer, response: BundleResponse) -> str:
        scope = self._scope(answer)
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
