"""The syntax of model names and revisions, written once for the SDK, the CLI and the server.

``ORG/NAME`` names a model (each part 1-100 of ASCII letters, digits, ``.``, ``_``, ``-``, starting with
a letter or digit); ``ORG/NAME@REV`` a version of it, where ``REV`` is a revision number, ``latest``
(the default), ``main`` (the latest ready version), a 40-hex commit id or a tag name. This module imports
nothing of deltazoo but the errors' root (a contract module, like the response shapes); the server maps
``RefError`` onto its 422 and resolves what a revision names in ``services/refs.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deltazoo.error_base import DeltazooError

NAME_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
NAME_RE = re.compile(rf"^({NAME_PART})/({NAME_PART})\Z")  # \Z: "$" also matches before a final newline
COMMIT_ID_RE = re.compile(r"^[0-9a-f]{40}\Z")
TAG_RE = re.compile(rf"^{NAME_PART}\Z")
LATEST = "latest"
MAIN = "main"  # the Hugging Face default branch: the latest ready version
RESERVED_REVISIONS = (LATEST, MAIN)
MAX_REVISION = 2**31 - 1  # the server's revision column is a 32-bit integer
Revision = int | str | None  # None = latest; a number; "main", a 40-hex commit id or a tag name


class RefError(DeltazooError, ValueError):
    """A model name, revision or tag that is not well formed; ``code`` is ``invalid_name``,
    ``invalid_revision`` or ``invalid_tag``. The CLI exits 2 on it (a usage error); the server answers
    it with a 422. A ``DeltazooError`` like every error of the SDK, and a ``ValueError``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, code=code)


def parse_name(name: str) -> tuple[str, str]:
    """``ORG/NAME`` -> (org, name)."""
    m = NAME_RE.match(name) if isinstance(name, str) else None
    if not m:
        raise RefError(
            f"{name!r} is not a model name; use ORG/NAME (letters, digits, '.', '_', '-'; up to 100 each)",
            "invalid_name",
        )
    return m.group(1), m.group(2)


def parse_revision(text: str | int) -> Revision:
    """A revision as users write it: a number, ``latest`` (None), ``main``, a commit id or a tag name."""
    if isinstance(text, int):
        return text
    if text in ("", LATEST):
        return None
    if text.isascii() and text.isdigit():  # ASCII only: '²' is a digit to str.isdigit, not to int()
        if len(text) > len(str(MAX_REVISION)) or not 1 <= int(text) <= MAX_REVISION:
            raise RefError(
                f"revision {text[:40]!r} must be a positive integer up to {MAX_REVISION}", "invalid_revision"
            )
        return int(text)
    if not text.isascii() or len(text) > 200:
        raise RefError(
            "a revision is a number, 'latest', 'main', a 40-hex commit id or a tag name (ASCII letters,"
            " digits, '.', '_', '-')",
            "invalid_revision",
        )
    if text == MAIN or COMMIT_ID_RE.match(text) or TAG_RE.match(text):
        return text
    raise RefError(
        f"revision {text!r} must be a positive integer, 'latest', 'main', a 40-hex commit id or a tag name"
        " (letters, digits, '.', '_', '-')",
        "invalid_revision",
    )


def check_tag_name(tag: str) -> str:
    """A tag may not read as another kind of revision: a number, ``latest``, ``main`` or a commit id."""
    if not TAG_RE.match(tag) or tag.isdigit() or tag in RESERVED_REVISIONS or COMMIT_ID_RE.match(tag):
        raise RefError(
            f"tag {tag!r} must be 1-100 letters, digits, '.', '_' or '-' starting with a letter or digit, and"
            " not a number, 'latest', 'main' or 40 hex digits (those already name revisions)",
            "invalid_tag",
        )
    return tag


def parse_ref(text: str) -> Ref:
    """``ORG/NAME[@REV]`` (no ``@REV`` is ``latest``)."""
    name, at, rev = text.partition("@")
    org, model = parse_name(name)
    try:
        if at and not rev:
            raise RefError("nothing follows the '@'", "invalid_revision")
        revision = parse_revision(rev)
    except RefError as exc:
        raise RefError(
            f"{text!r} is not ORG/NAME or ORG/NAME@REV: {exc.message}", exc.code or "invalid_revision"
        ) from None
    return Ref(org, model, LATEST if revision is None else str(revision))


@dataclass(frozen=True)
class Ref:
    """A parsed ``org/name[@rev]``; ``rev`` is a revision number as text, ``latest``, ``main``, a 40-hex
    commit id or a tag name (``prod``, ``v1.2``)."""

    org: str
    name: str
    rev: str = LATEST

    @classmethod
    def parse(cls, text: str) -> Ref:
        """``ORG/NAME[@REV]`` as a user typed it (surrounding blanks ignored); raises ``RefError``."""
        if not isinstance(text, str):
            raise RefError(f"{text!r} is not a model name; use ORG/NAME or ORG/NAME@REV", "invalid_name")
        return parse_ref(text.strip())

    @property
    def model(self) -> str:
        return f"{self.org}/{self.name}"

    @property
    def revision(self) -> Revision:
        """``rev`` as the server looks it up: None for ``latest``, an int for a number, else the text."""
        return parse_revision(self.rev)

    @property
    def moving(self) -> bool:
        """Whether the server must say which version this names (``latest``, ``main``, a tag, a commit id);
        a revision number names one version forever."""
        return not self.rev.isdigit()

    def __str__(self) -> str:
        return f"{self.model}@{self.rev}"

    @property
    def order(self) -> tuple[str, str, int, str]:
        """A sort key: by model, then revision numbers as numbers (``@2`` before ``@10``), names last."""
        number = int(self.rev) if self.rev.isdigit() else 1 << 62
        return (self.org, self.name, number, self.rev)


def ref_order(text: str) -> tuple[str, str, int, str]:
    """``Ref.order`` of a ref as text (one that does not parse sorts by its text)."""
    try:
        return Ref.parse(text).order
    except RefError:
        return (text, "", 0, "")
