"""Registry cost as the zoo grows: p50/p95 of push, commit, lineage, model page, list, search, stats and
leaderboard with 100, 1,000 and 10,000 fine-tunes of one base (then a 100-model × 100-version zoo on
top), on Postgres and on the embedded SQLite; and EXPLAIN of the hot queries at 1,000,000 versions.

Seeding goes through the service layer, not HTTP (for speed): the base and one fine-tune are pushed
over the API; every other fine-tune declares the same bytes, so ``create_version`` deduplicates the
upload, ``commit_version`` sketches and resolves it (candidate lookup, related-base check) and the real
job function (``workers.jobs.run_job``) copies its tensor rows. The measured requests go through the
real app in process (FastAPI TestClient: no socket), each push a fresh fine-tune whose bytes are
uploaded and encoded; a push is timed from model creation to the encode job's success.

The leaderboard's text set gets one dense evaluation row per version, as the evaluate job writes it
(status ready, a bits-per-byte figure); its bpb values are made up, only their number matters here.

The 1,000,000-version simulation (Postgres only) inserts rows with the columns and values the services
write (``INSERT ... SELECT generate_series``: 10,000 models × 100 revisions, each revision the child of
the previous one, every first revision a child of the base; a file, a tensor, a blob, a job and two
sketch bands per version), runs the hot read paths through the real repository code with every SELECT
captured, and prints ``EXPLAIN ANALYZE`` of each.

    python benchmarks/registry_scale.py                                  # everything (long)
    python benchmarks/registry_scale.py --backends sqlite --levels 100,1000 --zoo 0 --simulate 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from deltazoo.api.app import create_app  # noqa: E402
from deltazoo.registry.db import dispose_engines, session_factory, session_scope, upgrade_database  # noqa: E402
from deltazoo.registry.lineage_index import add_rows as add_lineage_rows  # noqa: E402
from deltazoo.registry.models import (  # noqa: E402
    Blob,
    Evaluation,
    File,
    Job,
    Model,
    Namespace,
    SketchBand,
    Tensor,
    TextSet,
    Version,
    new_commit_id,
)  # noqa: E402
from deltazoo.registry.objectstore import object_store_from_settings  # noqa: E402
from deltazoo.registry.repositories import FileRepository, NamespaceRepository, TensorRepository  # noqa: E402
from deltazoo.registry.settings import Settings  # noqa: E402
from deltazoo.services.access import OPEN  # noqa: E402
from deltazoo.services.evaluation import register_text  # noqa: E402
from deltazoo.services.refs import get_version  # noqa: E402
from deltazoo.services.versions import DeclaredFile, commit_version, create_model, create_version  # noqa: E402
from deltazoo.workers.jobs import JobContext, run_job  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from safetensors.torch import save  # noqa: E402
from sqlalchemy import create_engine, event, insert, select, text, update  # noqa: E402

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
SHAPES = {f"layers.{i}.weight": (64, 64) for i in range(8)}
CONFIG = json.dumps({"architectures": ["NotATransformersModel"], "hidden_size": 64}).encode()
TEXT = "scale-text"
SERVICE_SEEDED = 50  # fine-tunes seeded through the services; the rest clone their rows


# --------------------------------------------------------------------------- tiny checkpoints


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)


BASE = {n: np.random.default_rng(i).standard_normal(s) * 0.02 for i, (n, s) in enumerate(SHAPES.items())}


def checkpoint(seed: int | None) -> dict[str, bytes]:
    """The base (seed None) or a fine-tune of it, as bf16 safetensors and a config.json."""
    rng = np.random.default_rng(seed)
    state = {
        n: _tensor(t if seed is None else t + rng.standard_normal(t.shape) * 0.001) for n, t in BASE.items()
    }
    return {"model.safetensors": save(state), "config.json": CONFIG}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- databases


@contextmanager
def database(backend: str, home: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{home / 'registry.db'}"
        return
    name = f"deltazoo_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --------------------------------------------------------------------------- seeding


class Seeder:
    """Seeds fine-tunes of fam/base. ``finetune`` goes through the services (declare the bytes of
    fam/ft-00000: deduplicated; commit: sketch, candidate lookup, related-base check; the job function
    copies the tensor rows). ``clone`` writes, in bulk, the very rows ``finetune`` wrote for its first
    fine-tune under new names (model, version with its sketch, files pointing at the source file,
    ``same`` tensors, sketch bands, the succeeded job, a ready evaluation, blob reference counts): at
    0.3-0.6 s a fine-tune through the services on a loaded 2-core machine, 10,000 would take an hour."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = object_store_from_settings(settings)
        self.ctx = JobContext(settings, self.store, lambda _job_id: None)
        ft = checkpoint(1)
        self.declared = [DeclaredFile(p, len(d), sha(d)) for p, d in ft.items()]
        self.template: dict[str, Any] | None = None

    def finetune(self, name: str, base: str) -> None:
        with session_scope(self.settings) as s:
            model, _ = create_model(s, name, "", False, True)
            version, uploads = create_version(s, model, base, "finetune", [], self.declared, viewer=OPEN)
            assert not any(needed for _, needed in uploads), "seed bytes must be deduplicated"
            job = commit_version(s, self.store, version, f"{name}@{version.revision}", lambda _id: None)
            job_id = job.id
        assert run_job(job_id, self.ctx) == "succeeded"
        self.evaluate(name)

    def evaluate(self, name: str) -> None:
        with session_scope(self.settings) as s:
            org, short = name.split("/")
            _, version = get_version(s, org, short, None)
            text_id = s.scalar(select(TextSet.id).where(TextSet.name == TEXT))
            bpb = 0.8 + (version.id % 997) / 5000
            s.add(Evaluation(version_id=version.id, text_set_id=text_id, bits_per_byte=bpb, status="ready"))

    def text_set(self) -> None:
        with session_scope(self.settings) as s:
            register_text(s, self.store, TEXT, b"some held-out text " * 64, "", 1 << 20, 0, lambda _id: None)

    def analyze(self) -> None:
        """Postgres: what autovacuum does within a minute or so of a bulk load (planner statistics),
        which a zoo grown push by push has; without it the planner takes the 10,000-row tables the
        clone just filled for a few rows (a leaderboard page then joined and sorted every evaluation:
        52 ms instead of 0.3). SQLite keeps no statistics unless asked, nor does the embedded server."""
        engine = session_factory(self.settings).kw["bind"]
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.execute(text("ANALYZE"))

    def _load_template(self, name: str) -> dict[str, Any]:
        org, short = name.split("/")
        with session_scope(self.settings) as s:
            model, version = get_version(s, org, short, None)
            files = FileRepository(s).for_version(version.id)
            tensors = TensorRepository(s).for_version(version.id)
            bands = s.execute(
                select(SketchBand.band, SketchBand.key).where(SketchBand.version_id == version.id)
            )
            return {
                "namespace_id": model.namespace_id,
                "version": _row(version),
                "files": [_row(f) for f in files],
                "tensors": [_row(t) for t in tensors],
                "bands": [tuple(b) for b in bands],
                "evaluation": s.scalar(select(TextSet.id).where(TextSet.name == TEXT)),
            }

    def clone(self, template: str, items: list[tuple[str, int, str | None]]) -> None:
        """(model name, revision, parent "name@rev" or the template's parent) per new version, in order."""
        t = self.template = self.template or self._load_template(template)
        with session_scope(self.settings) as s:
            orgs = {
                org: NamespaceRepository(s).get_or_create(org).id
                for org in {n.split("/")[0] for n, _, _ in items}
            }
        engine = session_factory(self.settings).kw["bind"]
        with engine.begin() as conn:
            top = {
                tab: int(conn.execute(text(f"SELECT coalesce(max(id), 0) FROM {tab}")).scalar_one())
                for tab in ("model", "version", "file", "tensor", "job", "evaluation")
            }
            known = {
                f"{org}/{name}": mid
                for mid, org, name in conn.execute(
                    select(Model.id, Namespace.name, Model.name).join(
                        Namespace, Namespace.id == Model.namespace_id
                    )
                )
            }
            version_ids: dict[str, int] = {}
            rows: dict[str, list[dict[str, Any]]] = {
                k: [] for k in ("model", "version", "file", "tensor", "job", "ev", "band")
            }
            now = datetime.now(timezone.utc)
            for name, rev, parent in items:
                if name not in known:
                    top["model"] += 1
                    known[name] = top["model"]
                    rows["model"].append(
                        {
                            "id": top["model"],
                            "namespace_id": orgs[name.split("/")[0]],
                            "name": name.split("/")[1],
                            "description": "",
                            "private": False,
                            "created_at": now,
                        }
                    )
                top["version"] += 1
                vid = top["version"]
                version_ids[f"{name}@{rev}"] = vid
                parent_id = (
                    version_ids[parent] if parent in version_ids else t["version"]["parent_version_id"]
                )
                rows["version"].append(
                    {
                        **t["version"],
                        "id": vid,
                        "model_id": known[name],
                        "revision": rev,
                        "parent_version_id": parent_id,
                        "commit_id": new_commit_id(),
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                new_file = {}
                for f in t["files"]:
                    top["file"] += 1
                    new_file[f["id"]] = top["file"]
                    rows["file"].append(
                        {**f, "id": top["file"], "version_id": vid, "source_file_id": f["id"]}
                    )
                for tensor in t["tensors"]:
                    top["tensor"] += 1
                    rows["tensor"].append(
                        {
                            **tensor,
                            "id": top["tensor"],
                            "version_id": vid,
                            "file_id": new_file[tensor["file_id"]],
                            "encoding": "same",
                            "blob": None,
                            "stored_bytes": 0,
                            "parent_tensor_id": tensor["id"],
                        }
                    )
                top["job"] += 1
                rows["job"].append(
                    {
                        "id": top["job"],
                        "kind": "encode_version",
                        "target": f"{name}@{rev}",
                        "target_id": vid,
                        "status": "succeeded",
                        "attempts": 1,
                        "progress": 1.0,
                        "error": None,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                top["evaluation"] += 1
                rows["ev"].append(
                    {
                        "id": top["evaluation"],
                        "version_id": vid,
                        "artifact_id": None,
                        "text_set_id": t["evaluation"],
                        "bits_per_byte": 0.8 + (vid % 997) / 5000,
                        "details": {},
                        "status": "ready",
                        "status_message": None,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                rows["band"] += [{"version_id": vid, "band": b, "key": k} for b, k in t["bands"]]
            for table, key in (
                (Model, "model"),
                (Version, "version"),
                (File, "file"),
                (Tensor, "tensor"),
                (Job, "job"),
                (Evaluation, "ev"),
                (SketchBand, "band"),
            ):
                for i in range(0, len(rows[key]), 5000):
                    conn.execute(insert(table), rows[key][i : i + 5000])
            add_lineage_rows(conn, list(version_ids.values()))  # what registry.lineage_index writes on flush
            for f in t["files"]:
                for blob in (f["blob"], f["header_blob"]):
                    if blob:
                        conn.execute(
                            update(Blob)
                            .where(Blob.sha256 == blob)
                            .values(refcount=Blob.refcount + len(items))
                        )
            if conn.dialect.name == "postgresql":
                for tab in ("model", "version", "file", "tensor", "job", "evaluation"):
                    conn.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{tab}', 'id'), "
                            f"(SELECT max(id) FROM {tab}))"
                        )
                    )


def _row(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns}


# --------------------------------------------------------------------------- measuring (real app)


def push(client: TestClient, name: str, files: dict[str, bytes], base: str) -> tuple[float, float]:
    """(whole push, commit request) seconds: create model, version, upload, commit, wait for the job."""
    t0 = time.perf_counter()
    assert client.post("/v1/models", json={"name": name, "exist_ok": True}).status_code in (200, 201)
    body = {"base": base, "files": [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]}
    created = client.post(f"/v1/models/{name}/versions", json=body)
    assert created.status_code == 201, created.text
    rev = created.json()["version"]["revision"]
    for up in created.json()["uploads"]:
        if up["needed"]:
            r = client.put(f"/v1/models/{name}/versions/{rev}/files/{up['path']}", content=files[up["path"]])
            assert r.status_code == 200, r.text
    t1 = time.perf_counter()
    r = client.post(f"/v1/models/{name}/versions/{rev}/commit")
    t2 = time.perf_counter()
    assert r.status_code == 202, r.text
    job = r.json()["job"]["id"]
    while (status := client.get(f"/v1/jobs/{job}").json()["status"]) not in ("succeeded", "failed"):
        time.sleep(0.002)
    assert status == "succeeded"
    return time.perf_counter() - t0, t2 - t1


def quantiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return {"p50_ms": round(statistics.median(xs) * 1000, 2), "p95_ms": round(p95 * 1000, 2), "n": len(xs)}


def measure(
    client: TestClient,
    pushes: int,
    reps: int,
    name_of: Callable[[int], str],
    base: str,
    reads: dict[str, str],
) -> dict[str, Any]:
    whole, commits = [], []
    for i in range(pushes):
        w, c = push(client, name_of(i), checkpoint(secrets.randbits(32)), base)
        whole.append(w)
        commits.append(c)
    out: dict[str, Any] = {"push": quantiles(whole), "commit": quantiles(commits)}
    for what, path in reads.items():
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = client.get(path)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
        out[what] = quantiles(times)
    return out


def family_reads() -> dict[str, str]:
    return {
        "lineage": "/v1/models/fam/base/lineage",
        "model page": "/models/fam/base",
        "list": "/v1/models?limit=50",
        "search": "/v1/models?search=ft-0004&limit=50",
        "stats": "/v1/stats",
        "leaderboard": f"/v1/leaderboard?text={TEXT}",
    }


def zoo_reads(m: int) -> dict[str, str]:
    return {
        "lineage": f"/v1/models/zoo/m-{m:03d}/lineage",
        "model page": f"/models/zoo/m-{m:03d}",
        "list": "/v1/models?limit=50",
        "search": "/v1/models?search=m-0&limit=50",
        "stats": "/v1/stats",
        "leaderboard": f"/v1/leaderboard?text={TEXT}",
    }


def run_backend(backend: str, levels: list[int], zoo: int, pushes: int, reps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, database(backend, Path(tmp)) as url:
        settings = Settings(
            home=Path(tmp),
            database_url=url,
            broker_url=None,
            s3_endpoint=None,
            auth=False,
            worker_concurrency=2,
        )
        upgrade_database(url)
        seeder = Seeder(settings)
        with TestClient(create_app(settings)) as client:
            push(client, "fam/base", checkpoint(None), "")
            seeder.text_set()
            push(client, "fam/ft-00000", checkpoint(1), "fam/base@1")
            seeder.evaluate("fam/base")
            seeder.evaluate("fam/ft-00000")
            have = 1
            for level in levels:
                t0 = time.perf_counter()
                via_services = range(have, min(level, SERVICE_SEEDED))
                for i in via_services:
                    seeder.finetune(f"fam/ft-{i:05d}", "fam/base@1")
                rest = range(max(have, SERVICE_SEEDED), level)
                seeder.clone("fam/ft-00001", [(f"fam/ft-{i:05d}", 1, None) for i in rest])
                seeder.analyze()
                seeded = time.perf_counter() - t0
                print(f"[{backend}] seeded {level - have} fine-tunes in {seeded:.0f} s", flush=True)
                per = round(seeded / max(1, level - have), 4)
                have = max(have, level)
                results[str(level)] = measure(
                    client,
                    pushes,
                    reps,
                    lambda i, lv=level: f"fam/probe-{lv}-{i}",
                    "fam/base@1",
                    family_reads(),
                )
                results[str(level)]["seed_s_per_finetune"] = per
                print(f"[{backend}] {level}: {json.dumps(results[str(level)])}", flush=True)
            if zoo:
                t0 = time.perf_counter()
                items = [
                    (f"zoo/m-{m:03d}", rev, None if rev == 1 else f"zoo/m-{m:03d}@{rev - 1}")
                    for m in range(zoo)
                    for rev in range(1, zoo + 1)
                ]
                seeder.clone("fam/ft-00001", items)
                seeder.analyze()
                print(
                    f"[{backend}] seeded the {zoo}x{zoo} zoo in {time.perf_counter() - t0:.0f} s", flush=True
                )
                key = f"zoo {zoo}x{zoo} (+{levels[-1]} fine-tunes of fam/base)"
                target = f"zoo/m-{zoo // 2:03d}"  # each push: a new revision on top of its latest
                results[key] = measure(client, pushes, reps, lambda _i: target, target, zoo_reads(zoo // 2))
                print(f"[{backend}] {key}: {json.dumps(results[key])}", flush=True)
    dispose_engines()
    return results


def side_by_side(backend: str, sizes: list[int], pushes: int, reps: int) -> dict[str, Any]:
    """One database per size, built alike, then every push and read alternated between them in one
    run: the machine's load hits every size equally, so the ratios between sizes hold even when the
    absolute times move."""
    with ExitStack() as stack:
        clients: dict[int, TestClient] = {}
        for size in sizes:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = stack.enter_context(database(backend, tmp))
            settings = Settings(
                home=tmp,
                database_url=url,
                broker_url=None,
                s3_endpoint=None,
                auth=False,
                worker_concurrency=2,
            )
            upgrade_database(url)
            seeder = Seeder(settings)
            client = stack.enter_context(TestClient(create_app(settings)))
            push(client, "fam/base", checkpoint(None), "")
            seeder.text_set()
            push(client, "fam/ft-00000", checkpoint(1), "fam/base@1")
            seeder.evaluate("fam/base")
            seeder.evaluate("fam/ft-00000")
            for i in range(1, min(size, SERVICE_SEEDED)):
                seeder.finetune(f"fam/ft-{i:05d}", "fam/base@1")
            seeder.clone("fam/ft-00001", [(f"fam/ft-{i:05d}", 1, None) for i in range(SERVICE_SEEDED, size)])
            seeder.analyze()
            clients[size] = client
            print(f"[{backend} side by side] built {size}", flush=True)
        times: dict[int, dict[str, list[float]]] = {size: {} for size in sizes}
        for i in range(pushes):
            for size, client in clients.items():
                w, c = push(client, f"fam/probe-{i}", checkpoint(secrets.randbits(32)), "fam/base@1")
                times[size].setdefault("push", []).append(w)
                times[size].setdefault("commit", []).append(c)
        for what, path in family_reads().items():
            for _ in range(reps):
                for size, client in clients.items():
                    t0 = time.perf_counter()
                    r = client.get(path)
                    times[size].setdefault(what, []).append(time.perf_counter() - t0)
                    assert r.status_code == 200, (path, r.status_code)
    dispose_engines()
    out = {
        str(size): {what: quantiles(xs) for what, xs in figures.items()} for size, figures in times.items()
    }
    print(f"[{backend} side by side] {json.dumps(out)}", flush=True)
    return out


# --------------------------------------------------------------------------- 1,000,000 versions


SIMULATE_SQL = """
INSERT INTO namespace (id, name, created_at) VALUES (1, 'sim', now());
INSERT INTO model (id, namespace_id, name, description, private, created_at)
  SELECT m, 1, CASE WHEN m = 0 THEN 'base' ELSE 'm-' || lpad(m::text, 5, '0') END, '', false, now()
  FROM generate_series(0, :models) AS m;
INSERT INTO version (id, model_id, revision, parent_version_id, relation, status, logical_bytes, stored_bytes,
                     lossy, profiles, updated_at, created_at, commit_id)
  SELECT 1, 0, 1, NULL, 'finetune', 'ready', 1000, 1000, false, '[]', now(), now(), repeat('0', 40);
INSERT INTO version (id, model_id, revision, parent_version_id, relation, status, logical_bytes, stored_bytes,
                     lossy, profiles, updated_at, created_at, commit_id)
  SELECT 1 + (m - 1) * :revs + r, m, r, CASE WHEN r = 1 THEN 1 ELSE (m - 1) * :revs + r END, 'finetune',
         'ready', 1000, 100, false, '[]', now(), now() - interval '1 hour',
         md5('c' || m || '/' || r) || left(md5('d' || m || '/' || r), 8)
  FROM generate_series(1, :models) AS m, generate_series(1, :revs) AS r;
INSERT INTO blob (sha256, size, refcount, created_at)
  SELECT md5(v.id::text) || md5('b' || v.id::text), 100, 1, now() FROM version v;
INSERT INTO file (id, version_id, path, size, sha256, kind, uploaded, header_blob, blob)
  SELECT v.id, v.id, 'model.safetensors', 1000, md5('f' || v.id::text) || md5(v.id::text),
         'safetensors', true, NULL, NULL FROM version v;
INSERT INTO tensor (id, version_id, file_id, name, dtype, shape, sha256, offset_begin, offset_end, encoding,
                    blob, stored_bytes, depth, parent_tensor_id)
  SELECT v.id, v.id, v.id, 'layers.0.weight', 'BF16', '[64, 64]', md5('t' || v.id::text) || md5(v.id::text),
         0, 8192, CASE WHEN v.parent_version_id IS NULL THEN 'plain' ELSE 'delta' END,
         md5(v.id::text) || md5('b' || v.id::text), 100, 0, v.parent_version_id FROM version v;
INSERT INTO job (id, kind, target, target_id, status, attempts, progress, updated_at, created_at)
  SELECT v.id, 'encode_version', 'sim@' || v.id, v.id, 'succeeded', 1, 1.0, now(), now() FROM version v;
INSERT INTO lineage_descendant (ancestor_model_id, version_id, model_id, relation, private)
  SELECT 0, v.id, v.model_id, 'finetune', false FROM version v WHERE v.model_id <> 0;
INSERT INTO sketch_band (version_id, band, key)
  SELECT v.id, b, (v.id * 2654435761 + b) % 4096 FROM version v, generate_series(1, 2) AS b;
SELECT setval(pg_get_serial_sequence('version', 'id'), (SELECT max(id) FROM version));
SELECT setval(pg_get_serial_sequence('model', 'id'), (SELECT max(id) FROM model));
SELECT setval(pg_get_serial_sequence('namespace', 'id'), 1);
SELECT setval(pg_get_serial_sequence('file', 'id'), (SELECT max(id) FROM file));
SELECT setval(pg_get_serial_sequence('tensor', 'id'), (SELECT max(id) FROM tensor));
SELECT setval(pg_get_serial_sequence('job', 'id'), (SELECT max(id) FROM job));
"""


def hot_paths(models: int, revs: int) -> dict[str, Callable[[Any], Any]]:
    """Name -> a read path of the services, run on a session (its SELECTs are captured)."""
    from deltazoo.registry.lineage_repository import LineageRepository
    from deltazoo.registry.repositories import (
        FileRepository,
        JobRepository,
        ModelRepository,
        TensorRepository,
    )
    from deltazoo.registry.repositories import VersionRepository as VR
    from deltazoo.registry.sketch_band_repository import SketchBandRepository
    from deltazoo.services.access import ANONYMOUS, can_read_blob
    from deltazoo.services.lineage import lineage_page
    from deltazoo.services.refs import get_model, get_version
    from deltazoo.services.views import model_detail

    leaf_model = models // 2
    leaf = f"m-{leaf_model:05d}"
    leaf_version = 1 + (leaf_model - 1) * revs + revs
    from datetime import datetime, timedelta, timezone

    return {
        "get a version by name (every request)": lambda s: get_version(s, "sim", leaf, None),
        "lineage of a model with 100 revisions": lambda s: lineage_page(
            s, get_model(s, "sim", leaf), f"sim/{leaf}"
        ),
        "lineage of the base (all 1,000,000 descend from it)": lambda s: lineage_page(
            s, get_model(s, "sim", "base"), "sim/base"
        ),
        "model detail (its versions)": lambda s: model_detail(s, get_model(s, "sim", leaf), f"sim/{leaf}"),
        "list models (first page)": lambda s: ModelRepository(s).search("", 50, 0, []),
        "search models": lambda s: ModelRepository(s).search("m-0500", 50, 0, []),
        "push: upload dedup by sha256": lambda s: FileRepository(s).stored_ready_with_sha("0" * 64, 1000, []),
        "push: next revision": lambda s: VR(s).next_revision(leaf_model),
        "commit: stale-upload sweep": lambda s: VR(s).pending_created_before(
            datetime.now(timezone.utc) - timedelta(hours=24)
        ),
        "commit: base=auto candidates by sketch band": lambda s: SketchBandRepository(s).sharing(
            {1: 17, 2: 99}, 8, exclude=0
        ),
        "commit: candidates' ancestors": lambda s: LineageRepository(s).ancestor_ids([leaf_version]),
        "encode: tensor bytes already stored": lambda s: TensorRepository(s).stored_with_sha("0" * 64),
        "evaluate: latest job of a target": lambda s: JobRepository(s).latest_for("evaluate", leaf_version),
        "blob read: may the caller read it": lambda s: can_read_blob(s, ANONYMOUS, "0" * 64),
    }


def simulate(versions: int) -> str:
    revs = 100
    models = versions // revs
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, database("postgres", Path(tmp)) as url:
        upgrade_database(url)
        engine = create_engine(url)
        t0 = time.perf_counter()
        with engine.begin() as conn:
            for statement in SIMULATE_SQL.split(";\n"):
                if statement.strip():
                    conn.execute(text(statement), {"models": models, "revs": revs})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        counts = {}
        with engine.connect() as conn:
            for table in (
                "model",
                "version",
                "file",
                "tensor",
                "blob",
                "job",
                "sketch_band",
                "lineage_descendant",
            ):
                counts[table] = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        lines.append(f"rows inserted in {time.perf_counter() - t0:.0f} s: {counts}")
        from sqlalchemy.orm import Session

        for name, path in hot_paths(models, revs).items():
            captured: list[tuple[str, Any]] = []

            def grab(
                _conn: Any,
                _cursor: Any,
                statement: str,
                params: Any,
                _ctx: Any,
                _many: bool,
                into: list = captured,
            ) -> None:
                if statement.lstrip().upper().startswith(("SELECT", "WITH")):
                    into.append((statement, params))

            event.listen(engine, "before_cursor_execute", grab)
            with Session(engine) as s:
                t0 = time.perf_counter()
                path(s)
                took = time.perf_counter() - t0
            event.remove(engine, "before_cursor_execute", grab)
            lines.append(f"\n### {name}: {len(captured)} statement(s), {took * 1000:.1f} ms in all")
            raw = engine.raw_connection()
            try:
                cur = raw.cursor()
                for statement, params in captured:
                    cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING ON) " + statement, params)
                    plan = [row[0] for row in cur.fetchall()]
                    lines.append("\n    " + " ".join(statement.split())[:300])
                    lines += ["    " + p for p in plan]
            finally:
                raw.close()
        engine.dispose()
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    ops = ["push", "commit", "lineage", "model page", "list", "search", "stats", "leaderboard"]
    lines = []
    for backend, levels in results.items():
        lines.append(f"\n{backend}: p50 / p95 ms\n")
        lines.append("| models | " + " | ".join(ops) + " |")
        lines.append("| --- | " + " | ".join("---" for _ in ops) + " |")
        for level, figures in levels.items():
            cells = [f"{figures[o]['p50_ms']:.1f} / {figures[o]['p95_ms']:.1f}" for o in ops]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
        keys = [k for k in levels if k.isdigit()]
        if len(keys) >= 2:
            lo, hi = levels[keys[0]], levels[keys[-1]]
            growth = {o: round(hi[o]["p50_ms"] / lo[o]["p50_ms"], 2) for o in ops}
            lines.append(f"\np50 growth {keys[0]} -> {keys[-1]}: {growth}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="postgres,sqlite")
    p.add_argument("--levels", default="100,1000,10000")
    p.add_argument(
        "--zoo", type=int, default=100, help="N: an N-model x N-version zoo after the levels (0: none)"
    )
    p.add_argument("--pushes", type=int, default=9)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--simulate", type=int, default=1_000_000, help="versions of the EXPLAIN run (0: none)")
    p.add_argument(
        "--side-by-side",
        default="",
        help="sizes (e.g. 100,10000) built in separate databases, measured alternately",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "registry_scale.md")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    results = {}
    for backend in filter(None, args.backends.split(",")):
        if args.side_by_side:
            sizes = [int(x) for x in args.side_by_side.split(",")]
            results[f"{backend}, side by side"] = side_by_side(backend, sizes, args.pushes, args.reps)
        else:
            results[backend] = run_backend(backend, levels, args.zoo, args.pushes, args.reps)
    report = [
        "# registry_scale",
        "",
        f"`python benchmarks/registry_scale.py {' '.join(sys.argv[1:])}` on {platform.node()}, "
        f"{platform.python_version()}; in-process app (TestClient), tiny bf16 weights (8 × 64×64).",
        *table(results),
        "",
        "```json",
        json.dumps(results, indent=1),
        "```",
    ]
    if args.simulate:
        report += [
            "",
            f"## EXPLAIN ANALYZE at {args.simulate:,} versions (Postgres)",
            "",
            "```",
            simulate(args.simulate),
            "```",
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report) + "\n")
    print("\n".join(report[:40]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
