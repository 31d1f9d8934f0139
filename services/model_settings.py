"""A model's settings after it is created: its description and whether it is private.

Making a model **public** changes nothing stored. Making it **private** must keep the rules every
private model keeps from its first push (docs/REST.md, "Hardening rules"):

- no public model, and no model of another namespace, builds on it: such descendants (at any depth)
  refuse the change (409 ``has_public_descendants``, naming those the caller may read), since their
  deltas decode through its bytes and their lineage names it;
- no public model, and no model of another namespace, links a tensor to it by dedup (``same``): such
  copies are given bytes of their own first (exactly, as when a model is deleted), and pushes still
  waiting to copy one of its files get the file's bytes staged for them, so nothing of it shows through
  a model others may read and nobody learns that its bytes are stored.

The model's row is locked first, so a push choosing it as its base waits for the change (and then
sees the model private).
"""

from __future__ import annotations

from typing import Any

from deltazoo.registry.errors import Conflict
from deltazoo.registry.models import File, LineageDescendant, Model, Tensor, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import ModelRepository, TensorRepository, VersionRepository
from deltazoo.services.access import Principal, readable_versions
from deltazoo.services.dedup_handover import hand_over_copies
from deltazoo.services.detach import give_own_bytes
from deltazoo.services.refs import check_description
from deltazoo.services.versions import MAX_NAMED_DEPENDENTS, refs_by_id
from sqlalchemy import Select, or_, select, update
from sqlalchemy.orm import Session


def update_model(
    session: Session,
    store: ObjectStore,
    model: Model,
    full_name: str,
    viewer: Principal,
    *,
    description: str | None = None,
    private: bool | None = None,
) -> Model:
    """Set what is given of ``description`` and ``private`` on ``model`` (the caller checked it may
    write it)."""
    ModelRepository(session).lock(model.id)
    session.refresh(model)
    if description is not None:
        model.description = check_description(description, "model")
    if private is not None and private != model.private:
        if private:
            _check_no_outside_descendants(session, model, full_name, viewer)
            ids = [v.id for v in VersionRepository(session).for_model(model.id)]
            outsiders = _outside_versions(model)
            hand_over_copies(session, store, ids, File.version_id.in_(outsiders))
            copies = TensorRepository(session).copies_of(
                ids, (Tensor.encoding == "same") & Tensor.version_id.in_(outsiders)
            )
            give_own_bytes(session, store, copies)
        model.private = private
        session.execute(
            update(LineageDescendant).where(LineageDescendant.model_id == model.id).values(private=private)
        )
    session.flush()
    return model


def _outside_versions(model: Model) -> Select[Any]:
    """Versions of the models that may not see ``model`` once it is private: public models and models
    of other namespaces (itself excluded)."""
    return (
        select(Version.id)
        .join(Model, Model.id == Version.model_id)
        .where(
            Model.id != model.id,
            or_(Model.private.is_(False), Model.namespace_id != model.namespace_id),
        )
    )


def _check_no_outside_descendants(session: Session, model: Model, full_name: str, viewer: Principal) -> None:
    rows = session.execute(
        select(LineageDescendant.version_id)
        .join(Model, Model.id == LineageDescendant.model_id)
        .where(
            LineageDescendant.ancestor_model_id == model.id,
            or_(Model.private.is_(False), Model.namespace_id != model.namespace_id),
        )
    )
    blocking = sorted({int(vid) for (vid,) in rows})
    if not blocking:
        return
    visible = sorted(readable_versions(session, viewer, set(blocking)))
    named = refs_by_id(session, visible[:MAX_NAMED_DEPENDENTS])
    if len(visible) > MAX_NAMED_DEPENDENTS:
        named.append(f"{len(visible) - MAX_NAMED_DEPENDENTS} more (`deltazoo lineage --all` lists them)")
    hidden = len(blocking) - len(visible)
    if hidden:
        named.append(f"{hidden} version(s) of models this token cannot read")
    raise Conflict(
        f"{full_name} cannot be made private while public models or models of other namespaces build on "
        f"it: {', '.join(named)}. A public model may not build on a private base: make those private, or"
        " delete them, first",
        code="has_public_descendants",
    )
