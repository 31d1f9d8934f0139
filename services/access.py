"""Who may see and change what: the request's principal and the private-model rules.

With auth off the server is open (every caller is treated as an admin; the embedded default binds to
localhost only). With auth on, anonymous callers read public models; private models are visible only
to tokens with the ``read`` scope on their namespace (or on every namespace, or admin). A private
model that the caller may not read answers 404 exactly as a missing one would, so its name does not
leak; writes need a token with the ``write`` scope on the namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltazoo.registry.errors import DeltazooError, NotFound
from deltazoo.registry.models import Artifact, File, Model, Tensor, TensorChunk, Version
from deltazoo.registry.repositories import of_readable_versions
from sqlalchemy import or_, select
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Principal:
    token_id: int | None
    admin: bool
    namespace: str | None  # None: every namespace
    scopes: frozenset[str]

    def can(self, scope: str, org: str) -> bool:
        if self.admin:
            return True
        if self.token_id is None or scope not in self.scopes:
            return False
        return self.namespace is None or self.namespace == org

    def private_namespaces(self) -> list[str] | None:
        """Namespaces whose private models this principal may read; None means all of them."""
        if self.admin or (self.token_id is not None and "read" in self.scopes and self.namespace is None):
            return None
        if self.token_id is not None and "read" in self.scopes and self.namespace is not None:
            return [self.namespace]
        return []


OPEN = Principal(token_id=None, admin=True, namespace=None, scopes=frozenset({"read", "write"}))
ANONYMOUS = Principal(token_id=None, admin=False, namespace=None, scopes=frozenset())


def model_not_found(org: str, name: str) -> NotFound:
    return NotFound(
        f"model {org}/{name} does not exist; create it with POST /v1/models", code="model_not_found"
    )


def can_read_model(principal: Principal, model: Model, org: str) -> bool:
    return not model.private or principal.can("read", org)


def check_model_access(principal: Principal, model: Model | None, org: str, name: str, write: bool) -> None:
    """401/403 for a write without the right token, then 404 for a private model the caller may not
    read. In that order: a write that answered 404 for a private model and 401/403 for a missing one
    would tell whoever tries which private names exist."""
    if write:
        check_write(principal, org)
    if model is not None and not can_read_model(principal, model, org):
        raise model_not_found(org, name)


def check_write(principal: Principal, org: str | None) -> None:
    if principal.admin:
        return
    if principal.token_id is None:
        raise DeltazooError(
            "writing needs a token: send 'Authorization: Bearer <token>' (DELTAZOO_TOKEN for the CLI)",
            code="unauthorized",
            status=401,
        )
    if "write" not in principal.scopes:
        raise DeltazooError(
            "the token has no write scope; ask the admin for a token with scopes read,write",
            code="forbidden",
            status=403,
        )
    if org is None and principal.namespace is not None:
        raise DeltazooError("only an admin token may do this", code="forbidden", status=403)
    if org is not None and principal.namespace is not None and principal.namespace != org:
        raise DeltazooError(
            f"the token may not write in namespace {org!r} (it is limited to {principal.namespace!r})",
            code="forbidden",
            status=403,
        )


def check_admin(principal: Principal) -> None:
    if principal.admin:
        return
    if principal.token_id is None:
        raise DeltazooError(
            "this needs an admin token: send 'Authorization: Bearer <token>'", code="unauthorized", status=401
        )
    raise DeltazooError("only an admin token may manage tokens", code="forbidden", status=403)


def can_read_blob(session: Session, principal: Principal, sha256: str) -> bool:
    """Whether a blob is part of a model the principal may read: a file, header, tensor or profile
    artifact of a version of a public model, or of a private one in a namespace it may read. A blob that
    only private models the caller cannot read refer to answers like a missing one."""
    allowed = principal.private_namespaces()
    if allowed is None:
        return True
    holders = [
        select(Version.id).join(File, File.version_id == Version.id)
        .where(or_(File.blob == sha256, File.header_blob == sha256)),
        select(Version.id).join(Tensor, Tensor.version_id == Version.id).where(Tensor.blob == sha256),
        select(Version.id)
        .join(Tensor, Tensor.version_id == Version.id)
        .join(TensorChunk, TensorChunk.tensor_id == Tensor.id)
        .where(TensorChunk.blob == sha256),
        select(Version.id).join(Artifact, Artifact.version_id == Version.id).where(Artifact.blob == sha256),
    ]
    for holder in holders:
        if session.execute(of_readable_versions(holder, allowed).limit(1)).first() is not None:
            return True
    return False


def readable_versions(session: Session, principal: Principal, version_ids: set[int] | list[int]) -> set[int]:
    """Those of ``version_ids`` whose model the principal may read: the one rule every view applies
    before it names a version (a parent, a ``same`` twin, a dependent, a job's target, a ranking)."""
    ids = set(version_ids)
    allowed = principal.private_namespaces()
    if allowed is None or not ids:
        return ids
    query = of_readable_versions(select(Version.id).where(Version.id.in_(ids)), allowed)
    return set(session.scalars(query))

