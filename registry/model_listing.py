"""One page of the model list, in ``org/name`` order, read from the indexes whatever the zoo's size.

The order spans two tables (namespace, then model), so no single index holds it, and a plain
``JOIN ... ORDER BY namespace.name, model.name LIMIT 50`` makes Postgres read and sort every model
(3.4 ms at 10,000 models, all of them read for a page of 50). Here Postgres reads each namespace's
models through ``uq_model_namespace_id`` (``namespace_id, name``) in a ``LATERAL`` subquery that stops
after the page: a page reads at most ``offset + limit + 1`` models per namespace, however many models
the namespace holds. SQLite walks namespaces by name and each one's models by that index in order
(its planner sees the nested loop gives the order) when the page's bounds are range conditions on
both (the first page's are ``""``); handed only a privacy filter it would scan every model and sort.

A page after a cursor (the ``org/name`` of the last model of the previous page) starts inside the
index, at that name: deep pages cost what shallow ones do, unlike an ``offset`` (kept for old clients),
which reads the models it skips.

A text search is served by ``registry.model_search``'s index (the matching ids), then sorted: few models
match a search, and walking a namespace to filter it would read every model of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deltazoo.registry.model_search import matching_model_ids
from deltazoo.registry.models import Model, Namespace
from sqlalchemy import ColumnElement, and_, case, func, or_, select, true
from sqlalchemy.orm import Session, aliased

BIGINT_MAX = 2**63 - 1


@dataclass(frozen=True)
class After:
    """The position a page starts after: the ``org`` and ``name`` of the previous page's last model."""

    org: str
    name: str


def readable(private_namespaces: Sequence[str]) -> ColumnElement[bool]:
    """Models a caller may read: public ones and private ones in ``private_namespaces`` (a query using
    it joins Model and Namespace)."""
    return or_(Model.private.is_(False), Namespace.name.in_(list(private_namespaces)))


def model_page(
    session: Session,
    text: str,
    limit: int,
    offset: int,
    private_namespaces: Sequence[str] | None,
    namespace: str | None,
    after: After | None,
) -> list[tuple[Model, str]]:
    """The models (with their ``org/name``) of one page: those matching ``text`` (all when empty), in
    ``namespace`` when given, readable with ``private_namespaces`` (None: all), after ``after``, skipping
    ``offset`` of them, at most ``limit``."""
    lower = after or After("", "")  # names are never empty: "" is below every one
    ns_where = [Namespace.name >= lower.org]
    if namespace is not None:
        ns_where.append(Namespace.name == namespace)
    # the models after ``lower``: for each namespace the loop visits the bound is a constant, so the
    # index (namespace_id, name) serves it as a range
    name_floor = Model.name > case((Namespace.name == lower.org, lower.name), else_="")
    m: type[Model] = Model
    if text:
        q = select(Model, Namespace.name).join(Namespace).where(*ns_where)
        q = q.where(Model.id.in_(matching_model_ids(session, text)))
        q = q.where(or_(Namespace.name > lower.org, Model.name > lower.name))
        if private_namespaces is not None:
            q = q.where(readable(private_namespaces))
    elif session.get_bind().dialect.name == "postgresql":
        inner = select(Model).where(Model.namespace_id == Namespace.id, name_floor)
        if private_namespaces is not None:
            inner = inner.where(readable(private_namespaces))
        lateral = inner.order_by(Model.name).limit(min(offset + limit, BIGINT_MAX)).lateral("page")
        m = aliased(Model, lateral)
        q = select(m, Namespace.name).select_from(Namespace).join(lateral, true()).where(*ns_where)
    else:
        # without the bounds SQLite's planner, handed the privacy filter, scans every model and sorts
        q = select(Model, Namespace.name).select_from(Namespace).join(Model).where(*ns_where, name_floor)
        if private_namespaces is not None:
            q = q.where(readable(private_namespaces))
    rows = session.execute(q.order_by(Namespace.name, m.name).limit(limit).offset(offset))
    return [(model, f"{org}/{model.name}") for model, org in rows]


def matching_count(
    session: Session, text: str, private_namespaces: Sequence[str] | None, namespace: str | None
) -> int:
    """How many models ``model_page`` pages through (without a cursor)."""
    q = select(func.count()).select_from(Model).join(Namespace)
    if namespace is not None:
        q = q.where(Namespace.name == namespace)
    if private_namespaces is not None:
        q = q.where(readable(private_namespaces))
    if text:
        q = q.where(Model.id.in_(matching_model_ids(session, text)))
    return int(session.scalar(q) or 0)


def private_count(session: Session, namespaces: Sequence[str]) -> int:
    """How many private models ``namespaces`` hold (a namespace-scoped reader's own)."""
    q = select(func.count()).select_from(Model).join(Namespace)
    q = q.where(and_(Model.private.is_(True), Namespace.name.in_(list(namespaces))))
    return int(session.scalar(q) or 0)
