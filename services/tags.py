"""Named revisions: tags (``prod``, ``v1.2``) that point at a version of their model and can be moved.

A tag is usable wherever a revision is (``acme/ft@prod``, ``/versions/prod``, the Hub protocol's
``revision=``). Its name may not read as another kind of revision: a number, ``latest``, ``main`` or a
40-hex commit id.
"""

from __future__ import annotations

from deltazoo.registry.errors import NotFound
from deltazoo.registry.models import Model, VersionTag
from deltazoo.registry.repositories import TagRepository, VersionRepository
from deltazoo.services.refs import checked, find_version, ref_string
from sqlalchemy.orm import Session

from deltazoo import refs as ref_syntax
from deltazoo.schemas import Tag


def check_tag_name(tag: str) -> str:
    return checked(ref_syntax.check_tag_name, tag)


def set_tag(session: Session, model: Model, full_name: str, tag: str, revision: str) -> tuple[Tag, bool]:
    """Point ``tag`` at the version ``revision`` names (a number, main, a commit id or another tag),
    creating or moving it; returns the tag and whether it is new."""
    check_tag_name(tag)
    version = find_version(session, model, full_name, revision)
    tags = TagRepository(session)
    row = tags.get(model.id, tag)
    created = row is None
    if row is None:
        row = VersionTag(model_id=model.id, name=tag, version_id=version.id)
        session.add(row)
    else:
        row.version_id = version.id
    session.flush()
    return tag_info(session, row, full_name), created


def delete_tag(session: Session, model: Model, full_name: str, tag: str) -> None:
    row = TagRepository(session).get(model.id, tag)
    if row is None:
        raise NotFound(f"model {full_name} has no tag {tag!r}", code="tag_not_found")
    session.delete(row)
    session.flush()


def list_tags(session: Session, model: Model, full_name: str) -> list[Tag]:
    return [tag_info(session, row, full_name) for row in TagRepository(session).for_model(model.id)]


def tag_info(session: Session, row: VersionTag, full_name: str) -> Tag:
    version = VersionRepository(session).get(row.version_id)
    assert version is not None  # the foreign key cascades: a tag never outlives its version
    return Tag(
        name=row.name,
        ref=f"{full_name}@{row.name}",
        version=ref_string(full_name, version.revision),
        revision=version.revision,
        commit_id=version.commit_id,
        updated_at=row.updated_at,
    )
