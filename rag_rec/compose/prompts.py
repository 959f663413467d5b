"""Load versioned prompt templates from the rag_rec.prompts package data and render them as chat messages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

_SECTION = re.compile(r"^## (system|user)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    system: str
    user: str

    def render(self, **values: str) -> list[dict[str, str]]:
        """Chat messages with {variables} filled in; values are inserted verbatim (never re-formatted)."""
        return [{"role": "system", "content": _fill(self.system, values)},
                {"role": "user", "content": _fill(self.user, values)}]

    @property
    def id(self) -> str:
        return f"{self.name}.v{self.version}"


def _fill(template: str, values: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"prompt variable {{{key}}} has no value")
        return str(values[key])

    return re.sub(r"\{([a-z_]+)\}", sub, template)


def prompt_names() -> list[str]:
    """The names of the shipped templates (each loads at its highest version)."""
    found = (re.fullmatch(r"(.+)\.v\d+\.md", p.name) for p in resources.files("rag_rec.prompts").iterdir())
    return sorted({m.group(1) for m in found if m})


@lru_cache(maxsize=None)
def load_prompt(name: str, version: int | None = None) -> PromptTemplate:
    """The named template; the highest version unless `version` is given."""
    files = {p.name: p for p in resources.files("rag_rec.prompts").iterdir() if p.name.endswith(".md")}
    versions = sorted(int(m.group(1)) for f in files if (m := re.fullmatch(rf"{re.escape(name)}\.v(\d+)\.md", f)))
    if not versions:
        raise FileNotFoundError(f"no prompt template named {name!r} in rag_rec.prompts")
    chosen = version if version is not None else versions[-1]
    text = files[f"{name}.v{chosen}.md"].read_text(encoding="utf-8")
    body = text.split("---", 2)[2] if text.startswith("---") else text
    parts = _SECTION.split(body)
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    return PromptTemplate(name, chosen, sections["system"], sections["user"])
