"""API tokens: stored as sha256 hashes; the admin token of the settings is registered on start."""

from __future__ import annotations

import hashlib
import re
import secrets

from deltazoo.registry.errors import DeltazooError, NotFound, Unprocessable
from deltazoo.registry.models import ApiToken, Namespace, utcnow
from deltazoo.registry.repositories import ModelRepository, NamespaceRepository
from deltazoo.services.access import ANONYMOUS, Principal, check_model_access, check_write
from sqlalchemy import select
from sqlalchemy.orm import Session

from deltazoo.refs import NAME_PART

SCOPES = ("read", "write")
NAMESPACE_RE = re.compile(rf"^{NAME_PART}\Z")  # the syntax of an ORG or NAME part


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


ADMIN_FROM_SETTINGS = "admin (from settings)"


def ensure_admin_token(session: Session, token: str) -> None:
    """The admin token named by the settings exists, and replaces the one an earlier setting named (a
    rotated secret stops working at the next start); admin tokens created through the API are kept."""
    digest = token_hash(token)
    for old in session.scalars(select(ApiToken).where(ApiToken.name == ADMIN_FROM_SETTINGS)):
        if old.token_hash != digest:
            session.delete(old)
    session.flush()
    if session.scalar(select(ApiToken).where(ApiToken.token_hash == digest)) is None:
        session.add(
            ApiToken(name=ADMIN_FROM_SETTINGS, token_hash=digest, scopes=["read", "write"], admin=True)
        )


def authorise(
    session: Session, token: str, org: str | None, name: str | None, *, write: bool, creating: bool
) -> Principal:
    """The principal of one request's token (anonymous without one), checked for what the request does
    to ``org/name``: 404 for a private model it may not read, 401/403 for a write without the right
    token. ``creating``: the request creates ``org/name``, which need not exist yet."""
    principal = principal_for(session, token) if token else ANONYMOUS
    if org is not None and name is not None and not creating:
        check_model_access(principal, ModelRepository(session).get(org, name), org, name, write)
    elif write:
        check_write(principal, org)
    return principal


def principal_for(session: Session, token: str) -> Principal:
    """The principal of a presented token; 401 when the server does not know it."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(token)))
    if row is None:
        raise DeltazooError(
            "the token is not known to this server; ask its admin for one", code="unauthorized", status=401
        )
    row.last_used_at = utcnow()
    ns = session.get(Namespace, row.namespace_id) if row.namespace_id is not None else None
    return Principal(
        token_id=row.id, admin=row.admin, namespace=ns.name if ns else None, scopes=frozenset(row.scopes)
    )


def create_token(
    session: Session, name: str, namespace: str | None, scopes: list[str], admin: bool
) -> tuple[ApiToken, str]:
    """A new token row and its secret (shown once; only its sha256 is stored)."""
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        raise Unprocessable(
            f"scopes must be a non-empty subset of {', '.join(SCOPES)} (got {', '.join(scopes) or 'none'})",
            code="invalid_scopes",
        )
    if not name.strip() or len(name) > 200 or "\x00" in name:
        raise Unprocessable("a token needs a name of 1 to 200 characters (no NUL)", code="invalid_token_name")
    if admin and namespace is not None:
        raise Unprocessable(
            "an admin token covers every namespace; leave namespace null", code="invalid_scopes"
        )
    ns_id = None
    if namespace is not None:
        if not NAMESPACE_RE.match(namespace):
            raise Unprocessable(
                f"{namespace!r} is not a namespace (letters, digits, '.', '_', '-'; up to 100)",
                code="invalid_name",
            )
        ns_id = NamespaceRepository(session).get_or_create(namespace).id
    secret = "dz_" + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name, token_hash=token_hash(secret), namespace_id=ns_id, scopes=sorted(set(scopes)), admin=admin
    )
    session.add(row)
    session.flush()
    return row, secret


def list_tokens(session: Session) -> list[tuple[ApiToken, str | None]]:
    rows = session.execute(
        select(ApiToken, Namespace.name)
        .outerjoin(Namespace, Namespace.id == ApiToken.namespace_id)
        .order_by(ApiToken.id)
    )
    return [(t, ns) for t, ns in rows]


def delete_token(session: Session, token_id: int) -> None:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"token {token_id} does not exist; GET /v1/tokens lists them", code="token_not_found")
    session.delete(row)
    session.flush()
