"""Names (``org/name``) and version references (``org/name@rev``): parsing and lookup."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

from registry.errors import NotFound, Unprocessable
from registry.models import Model, Version
from registry.repositories import ModelRepository, VersionRepository

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
NAME_RE = re.compile(rf"^({_PART})/({_PART})$")
RELATIONS = ("finetune", "adapter", "merge", "quantized", "continued-pretrain")


@dataclass(frozen=True)
class Ref:
    org: str
    name: str
    revision: int | None  # None = latest

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


def parse_revision(text: str | int) -> int | None:
    if isinstance(text, int):
        return text
    if text in ("", "latest"):
        return None
    if not text.isdigit() or int(text) < 1:
        raise Unprocessable(
            f"revision {text!r} must be a positive integer or 'latest'", code="invalid_revision"
        )
    return int(text)


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
    rev = parse_revision(revision) if revision is not None else None
    versions = VersionRepository(session)
    version = versions.latest(model.id) if rev is None else versions.by_revision(model.id, rev)
    if version is None:
        what = "has no versions yet" if rev is None else f"has no revision {rev}"
        raise NotFound(f"model {org}/{name} {what}", code="version_not_found")
    return model, version
