"""Names (``org/name``) and version references (``org/name@rev``): parsing and lookup."""

from __future__ import annotations

import re
from dataclasses import dataclass

from deltazoo.registry.errors import Conflict, NotFound, Unprocessable
from deltazoo.registry.models import Model, Version
from deltazoo.registry.repositories import ModelRepository, TagRepository, VersionRepository
from deltazoo.services.access import Principal, can_read_model, model_not_found
from sqlalchemy.orm import Session

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
NAME_RE = re.compile(rf"^({_PART})/({_PART})$")
RELATIONS = ("finetune", "adapter", "merge", "quantized", "continued-pretrain")
COMMIT_ID_RE = re.compile(r"^[0-9a-f]{40}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAIN = "main"  # the Hugging Face default branch: the latest ready version
RESERVED_REVISIONS = ("latest", MAIN)
Revision = int | str | None


@dataclass(frozen=True)
class Ref:
    org: str
    name: str
    revision: Revision  # None = latest; an int; "main", a 40-hex commit id or a tag name

    @property
    def full_name(self) -> str:
        return f"{self.org}/{self.name}"


MAX_DESCRIPTION_CHARS = 10_000


def check_description(text: str, what: str) -> str:
    """A free-text description the database can hold: no NUL, at most ``MAX_DESCRIPTION_CHARS``."""
    if "\x00" in text or len(text) > MAX_DESCRIPTION_CHARS:
        raise Unprocessable(
            f"the {what} description must be at most {MAX_DESCRIPTION_CHARS} characters without NUL"
            f" (got {len(text)})",
            code="invalid_description",
        )
    return text


def parse_name(name: str) -> tuple[str, str]:
    m = NAME_RE.match(name or "")
    if not m:
        raise Unprocessable(
            f"{name!r} is not a model name; use ORG/NAME (letters, digits, '.', '_', '-'; up to 100 each)",
            code="invalid_name",
        )
    return m.group(1), m.group(2)


MAX_REVISION = 2**31 - 1  # the revision column is a 32-bit integer


def parse_revision(text: str | int) -> Revision:
    """A revision as users write it: a number, ``latest`` (None), ``main``, a commit id or a tag name."""
    if isinstance(text, int):
        return text
    if text in ("", "latest"):
        return None
    if text.isascii() and text.isdigit():  # ASCII only: '²' is a digit to str.isdigit, not to int()
        if len(text) > len(str(MAX_REVISION)) or not 1 <= int(text) <= MAX_REVISION:
            raise Unprocessable(
                f"revision {text[:40]!r} must be a positive integer up to {MAX_REVISION}",
                code="invalid_revision",
            )
        return int(text)
    if not text.isascii() or len(text) > 200:
        raise Unprocessable(
            "a revision is a number, 'latest', 'main', a 40-hex commit id or a tag name (ASCII letters,"
            " digits, '.', '_', '-')",
            code="invalid_revision",
        )
    if text == MAIN or COMMIT_ID_RE.match(text) or TAG_RE.match(text):
        return text
    raise Unprocessable(
        f"revision {text!r} must be a positive integer, 'latest', 'main', a 40-hex commit id or a tag name"
        " (letters, digits, '.', '_', '-')",
        code="invalid_revision",
    )


def parse_ref(ref: str) -> Ref:
    name, _, rev = ref.partition("@")
    org, model = parse_name(name)
    return Ref(org, model, parse_revision(rev))


def ref_string(full_name: str, revision: int) -> str:
    return f"{full_name}@{revision}"


def get_model(session: Session, org: str, name: str) -> Model:
    model = ModelRepository(session).get(org, name)
    if model is None:
        raise NotFound(
            f"model {org}/{name} does not exist; create it with POST /v1/models", code="model_not_found"
        )
    return model


def get_version(session: Session, org: str, name: str, revision: str | int | None) -> tuple[Model, Version]:
    model = get_model(session, org, name)
    return model, find_version(session, model, f"{org}/{name}", revision)


def find_version(session: Session, model: Model, full_name: str, revision: str | int | None) -> Version:
    """The version a revision names: a number, latest (None), ``main`` (latest ready), a commit id, a tag."""
    rev = parse_revision(revision) if revision is not None else None
    versions = VersionRepository(session)
    if rev is None:
        version, what = versions.latest(model.id), "has no versions yet"
    elif isinstance(rev, int):
        version, what = versions.by_revision(model.id, rev), f"has no revision {rev}"
    elif rev == MAIN:
        version, what = versions.latest(model.id, ready_only=True), "has no ready version yet (main)"
    elif COMMIT_ID_RE.match(rev):
        version, what = versions.by_commit_id(model.id, rev), f"has no version with commit id {rev}"
    else:
        tag = TagRepository(session).get(model.id, rev)
        version = versions.get(tag.version_id) if tag is not None else None
        what = f"has no revision or tag {rev!r}"
    if version is None:
        raise NotFound(f"model {full_name} {what}", code="version_not_found")
    return version


def resolve_base(session: Session, base: str, viewer: Principal) -> Version:
    """The ready version ``base`` (``ORG/NAME[@REV]``) names, if ``viewer`` may read it."""
    ref = parse_ref(base)
    try:
        model, version = get_version(session, ref.org, ref.name, ref.revision)
        if not can_read_model(viewer, model, ref.org):
            raise model_not_found(ref.org, ref.name)
    except NotFound as exc:
        raise NotFound(f"base {base} not found: {exc.message}", code="base_not_found") from None
    if version.status != "ready":
        raise Conflict(
            f"base {base} is {version.status}, not ready; wait for its job to finish (or push it again)",
            code="base_not_ready",
        )
    return version
