"""API tokens: stored as sha256 hashes; the admin token of the settings is registered on start."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import DeltazooError
from registry.models import ApiToken, Namespace, utcnow


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_admin_token(session: Session, token: str) -> None:
    digest = token_hash(token)
    if session.scalar(select(ApiToken).where(ApiToken.token_hash == digest)) is None:
        session.add(
            ApiToken(name="admin (from settings)", token_hash=digest, scopes=["read", "write"], admin=True)
        )


def authorize(session: Session, token: str | None, write: bool, org: str | None) -> ApiToken:
    """The token's row if it may do this; 401 for no or unknown token, 403 when it lacks the scope."""
    if not token:
        raise DeltazooError(
            "this server requires a token: send 'Authorization: Bearer <token>' (DELTAZOO_TOKEN for the CLI)",
            code="unauthorized",
            status=401,
        )
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(token)))
    if row is None:
        raise DeltazooError(
            "the token is not known to this server; ask its admin for one", code="unauthorized", status=401
        )
    if row.admin:
        return row
    needed = "write" if write else "read"
    if needed not in row.scopes:
        raise DeltazooError(f"the token has no {needed} scope", code="forbidden", status=403)
    if row.namespace_id is not None and org is not None:
        ns = session.get(Namespace, row.namespace_id)
        if ns is None or ns.name != org:
            raise DeltazooError(
                f"the token may not {needed} in namespace {org!r}", code="forbidden", status=403
            )
    if write and row.namespace_id is not None and org is None:
        raise DeltazooError("only an admin token may do this", code="forbidden", status=403)
    row.last_used_at = utcnow()
    return row
