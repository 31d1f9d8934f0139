"""``lineage_descendant`` (registry.lineage_index) always equals the walk it replaces: after concurrent
pushes and deletes on Postgres, after a parent is set at commit or cut by a delete, and after upgrading
a populated database of the previous schema."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from deltazoo.registry.db import session_scope, upgrade_database
from deltazoo.registry.lineage_repository import LineageRepository
from deltazoo.registry.models import Model, Version
from deltazoo.registry.objectstore import object_store_from_settings
from deltazoo.registry.settings import Settings
from deltazoo.services.access import OPEN
from deltazoo.services.refs import get_model, get_version
from deltazoo.services.versions import DeclaredFile, create_model, create_version, delete_version
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

FILES = [DeclaredFile("config.json", 2, "a" * 64)]


def walked(session: Session) -> set[tuple[int, int, str]]:
    """(ancestor model, version, relation) for every version and every other model above it, by
    walking parent links in Python: what the index must hold."""
    rows = session.execute(select(Version.id, Version.model_id, Version.parent_version_id, Version.relation))
    by_id = {vid: (mid, parent, rel) for vid, mid, parent, rel in rows}
    out = set()
    for vid, (mid, parent, rel) in by_id.items():
        while parent is not None:
            owner, parent_of_parent, _ = by_id[parent]
            if owner != mid:
                out.add((owner, vid, rel))
            parent = parent_of_parent
    return out


def indexed(session: Session) -> set[tuple[int, int, str]]:
    q = text("SELECT ancestor_model_id, version_id, relation FROM lineage_descendant")
    return {(a, v, r) for a, v, r in session.execute(q)}


def _settings(home: Path, url: str | None) -> Settings:
    return Settings(home=home, database_url=url, broker_url=None, s3_endpoint=None, auth=False)


def _push(settings: Settings, name: str, base: str, relation: str = "finetune", ready: bool = True) -> None:
    with session_scope(settings) as s:
        model, _ = create_model(s, name, "", False, True)
        version, _ = create_version(s, model, base, relation, [], FILES, viewer=OPEN)
        if ready:
            version.status = "ready"  # what the encode job ends with; only the parent link matters here


def _delete(settings: Settings, name: str) -> None:
    org, short = name.split("/")
    with session_scope(settings) as s:
        _, version = get_version(s, org, short, None)
        delete_version(s, object_store_from_settings(settings), version, name)


def test_concurrent_pushes_and_deletes_keep_the_index_exact_on_postgres(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = _settings(tmp_path, postgres_url)
    org = f"c{secrets.token_hex(4)}"
    _push(settings, f"{org}/base", "")
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(6):
                ft = f"{org}/ft-{t}-{i}"
                _push(settings, ft, f"{org}/base@1", "adapter" if i % 2 else "finetune")
                _push(settings, f"{org}/gc-{t}-{i}", f"{ft}@1")
                if i % 3 == 0:
                    _delete(settings, ft)  # its child is cut loose: the child's rows must go
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with session_scope(settings) as s:
        assert indexed(s) == walked(s)
        base = get_model(s, org, "base")
        counts, page = LineageRepository(s).descendants(base.id, None, 0, 1000)
        # per thread: adapters 1, 3, 5 and fine-tunes 0, 2, 4, of which 0 and 3 deleted; each kept one
        # has a grandchild (a fine-tune) below it
        assert counts == {"adapter": 4 * 2, "finetune": 4 * 2 + 4 * 4}
        assert len(page) == sum(counts.values())


def test_parent_set_at_commit_and_cut_by_delete_rewrite_the_subtree(tmp_path: Path) -> None:
    settings = _settings(tmp_path, None)
    upgrade_database(settings.resolved_database_url)
    _push(settings, "z/base", "")
    _push(settings, "z/mid", "z/base@1")
    _push(settings, "z/leaf", "z/mid@1")
    _push(settings, "z/orphan", "")
    with session_scope(settings) as s:
        _, orphan = get_version(s, "z", "orphan", None)
        _, leaf = get_version(s, "z", "leaf", None)
        orphan.parent_version_id = leaf.id  # as base="auto" or a model card sets it at commit
        s.flush()
        assert indexed(s) == walked(s)
        assert len([r for r in indexed(s) if r[1] == orphan.id]) == 3
    _delete(settings, "z/mid")
    with session_scope(settings) as s:
        assert indexed(s) == walked(s)
        mid_gone = {m for m, _, _ in indexed(s)}
        assert get_model(s, "z", "base").id not in mid_gone  # leaf and orphan no longer descend from it


def test_upgrading_a_populated_database_fills_the_index(tmp_path: Path) -> None:
    from alembic import command
    from deltazoo.registry.db import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "issue13_lossy_files")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO namespace (id, name, created_at) VALUES (1, 'o', '2026-01-01')"))
        for mid in (1, 2, 3):
            conn.execute(
                text(
                    "INSERT INTO model (id, namespace_id, name, description, private, created_at)"
                    " VALUES (:id, 1, :name, '', :private, '2026-01-01')"
                ),
                {"id": mid, "name": f"m{mid}", "private": mid == 3},
            )
        for vid, mid, parent, relation in (
            (1, 1, None, "finetune"),
            (2, 1, 1, "finetune"),
            (3, 2, 2, "adapter"),
            (4, 3, 3, "merge"),
        ):
            conn.execute(
                text(
                    "INSERT INTO version (id, model_id, revision, parent_version_id, relation, status,"
                    " logical_bytes, stored_bytes, lossy, profiles, created_at, updated_at, commit_id)"
                    " VALUES (:id, :mid, :id, :parent, :relation, 'ready', 1, 1, 0, '[]', '2026-01-01',"
                    " '2026-01-01', :commit)"
                ),
                {"id": vid, "mid": mid, "parent": parent, "relation": relation, "commit": f"{vid:040d}"},
            )
    engine.dispose()
    command.upgrade(cfg, "head")
    engine = create_engine(url)
    with Session(engine) as s:
        assert indexed(s) == walked(s) == {(1, 3, "adapter"), (1, 4, "merge"), (2, 4, "merge")}
        private = s.execute(text("SELECT version_id, private FROM lineage_descendant ORDER BY 1, 2")).all()
        assert {(v, bool(p)) for v, p in private} == {(3, False), (4, True)}
        assert s.get(Model, 3) is not None
    engine.dispose()
