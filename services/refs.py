"""Names (``org/name``) and version references (``org/name@rev``): what they name in the database.

Their syntax is ``deltazoo.refs`` (shared with the SDK); a malformed one answers 422 here."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from deltazoo.registry.errors import Conflict, NotFound, Unprocessable
from deltazoo.registry.models import Model, Version
from deltazoo.registry.repositories import ModelRepository, TagRepository, VersionRepository
from deltazoo.services.access import Principal, can_read_model, model_not_found
from sqlalchemy.orm import Session

from deltazoo import refs as ref_syntax
from deltazoo.refs import COMMIT_ID_RE, MAIN, Ref, RefError, Revision

T = TypeVar("T")
RELATIONS = ("finetune", "adapter", "merge", "quantized", "continued-pretrain")


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


def checked(parse: Callable[[str], T], text: str) -> T:
    """``parse(text)`` with a ``deltazoo.refs`` parser; a malformed name, revision or tag answers 422."""
    try:
        return parse(text)
    except RefError as exc:
        raise Unprocessable(exc.message, code=exc.code) from None


def parse_name(name: str) -> tuple[str, str]:
    return checked(ref_syntax.parse_name, name or "")


def parse_revision(text: str | int) -> Revision:
    return checked(ref_syntax.parse_revision, text)  # type: ignore[arg-type]


def parse_ref(ref: str) -> Ref:
    return checked(ref_syntax.parse_ref, ref)


def ref_string(full_name: str, revision: int) -> str:
    return f"{full_name}@{revision}"


def get_model(session: Session, org: str, name: str) -> Model:
    model = ModelRepository(session).get(org, name)
    if model is None:
        raise model_not_found(org, name)
    return model


def get_readable_model(session: Session, viewer: Principal, org: str, name: str) -> Model:
    """The model ``org/name`` when ``viewer`` may read it (``access.can_read_model``, the one privacy
    rule); a private model it may not read is missing, with the same answer as a model that is not there."""
    model = get_model(session, org, name)
    if not can_read_model(viewer, model, org):
        raise model_not_found(org, name)
    return model


def get_version(session: Session, org: str, name: str, revision: str | int | None) -> tuple[Model, Version]:
    model = get_model(session, org, name)
    return model, find_version(session, model, f"{org}/{name}", revision)


SHORT_COMMIT_RE = re.compile(r"[0-9a-f]{7,39}")


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
        if version is None and SHORT_COMMIT_RE.fullmatch(rev):  # as git: a unique prefix of a commit id
            version = versions.by_commit_prefix(model.id, rev)
        what = f"has no revision or tag {rev!r} (nor one commit id starting so)"
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
