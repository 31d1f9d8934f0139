"""The model card (``README.md``) shown on the model page: front matter as fields, Markdown as HTML.

Rendering only: which front-matter keys set a version's parent (``base_model``) is the push's
business (the Hub routes), not this module's. Raw HTML in the card is escaped (markdown-it with
``html`` off) and links keep to safe schemes (markdown-it's ``validateLink``), so a card cannot run
script on the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deltazoo.services.model_card import load_header
from markdown_it import MarkdownIt

CARD_NAMES = ("README.md", "readme.md", "README.MD", "Readme.md")
MAX_CARD_BYTES = 256 * 1024

_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


@dataclass(frozen=True)
class ModelCard:
    fields: list[tuple[str, str]]  # front matter, in order; lists joined with ", "
    html: str  # the body rendered (escaped, safe to insert)
    problem: str | None = None  # front matter that could not be read, said plainly


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def split_front_matter(text: str) -> tuple[str | None, str]:
    """``(front matter, body)``: the YAML between a first line ``---`` and the next ``---`` line."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None, text
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            return "".join(lines[1:i]), "".join(lines[i + 1 :])
    return None, text


def render_card(data: bytes) -> ModelCard:
    text = data[:MAX_CARD_BYTES].decode("utf-8", errors="replace")
    front, body = split_front_matter(text)
    fields: list[tuple[str, str]] = []
    problem = None
    if front is not None:
        meta, problem = load_header(front)
        fields = [(str(k), _text(v)) for k, v in (meta or {}).items()]
    return ModelCard(fields=fields, html=_md.render(body), problem=problem)
