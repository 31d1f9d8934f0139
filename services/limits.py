"""Per-upload limits, checked at commit before any encode work is queued: the largest tensor and the
number of tensors one version may declare (``settings.max_tensor_mb`` / ``settings.max_tensors``), so
one upload can neither take the worker's memory nor occupy it for minutes."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from functools import partial

from deltazoo.compression.safetensors_io import SafetensorsError, is_index_file, read_header, validate_index
from deltazoo.registry.errors import DeltazooError, Unprocessable
from deltazoo.registry.models import File, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import FileRepository, TensorRepository
from deltazoo.services.transfer import MAX_INDEX_BYTES
from sqlalchemy.orm import Session


def _read_range(store: ObjectStore, key: str, offset: int, length: int) -> bytes:
    return store.get_range(key, offset, length)


@dataclass(frozen=True)
class UploadLimits:
    max_tensor_bytes: int = 64 << 30
    max_tensors: int = 100_000


def check_upload_limits(session: Session, store: ObjectStore, version: Version, limits: UploadLimits) -> None:
    """413 ``tensor_too_large`` / 422 ``too_many_tensors`` naming the file and tensor at fault."""
    count = 0
    tensors = TensorRepository(session)
    for f in FileRepository(session).for_version(version.id):
        if f.kind != "safetensors":
            continue
        if f.staging_key is None:  # deduplicated against a stored file: its tensors are known
            count += len(tensors.for_file(f.source_file_id)) if f.source_file_id else 0
            continue
        try:
            header = read_header(partial(_read_range, store, f.staging_key), f.size)
        except SafetensorsError:
            continue  # uploads were validated; a damaged staging object fails in the encode job
        for t in header.tensors:
            if t.nbytes > limits.max_tensor_bytes:
                raise DeltazooError(
                    f"{f.path}: tensor {t.name!r} has {t.nbytes} bytes, more than the server's limit of "
                    f"{limits.max_tensor_bytes} (DELTAZOO_MAX_TENSOR_MB); split it or ask the admin",
                    code="tensor_too_large",
                    status=413,
                )
        count += len(header.tensors)
        if count > limits.max_tensors:
            raise Unprocessable(
                f"this version declares more than {limits.max_tensors} tensors (at {f.path}), the server's "
                "limit (DELTAZOO_MAX_TENSORS); push fewer, larger tensors or ask the admin",
                code="too_many_tensors",
            )


def check_shard_indexes(session: Session, store: ObjectStore, version: Version) -> None:
    """A ``*.safetensors.index.json`` uploaded with this version names exactly the shards uploaded
    beside it (every one, and no other), all inside the checkpoint: 422 naming what is wrong."""
    files = FileRepository(session).for_version(version.id)
    shards = {f.path for f in files if f.kind == "safetensors"}
    for f in files:
        if not is_index_file(f.path) or f.staging_key is None or f.size > MAX_INDEX_BYTES:
            continue
        try:
            weight_map = validate_index(store.get_range(f.staging_key, 0, f.size))
        except SafetensorsError:
            continue  # validated at upload
        folder = posixpath.dirname(f.path)
        named = {posixpath.normpath(posixpath.join(folder, shard)) for shard in set(weight_map.values())}
        outside = sorted(p for p in named if p.startswith("../") or p == ".." or posixpath.isabs(p))
        if outside:
            raise Unprocessable(
                f"{f.path} names shards outside the checkpoint: {', '.join(outside[:5])}",
                code="index_outside",
            )
        missing = sorted(named - shards)
        beside = {s for s in shards if posixpath.dirname(s) == folder}
        unnamed = sorted(beside - named)
        if missing or unnamed:
            what = [f"names shards not uploaded: {', '.join(missing[:5])}"] if missing else []
            what += [f"does not name uploaded shards: {', '.join(unnamed[:5])}"] if unnamed else []
            raise Unprocessable(
                f"{f.path} {'; '.join(what)}; push the index with exactly its shards", code="index_mismatch"
            )
        check_index_tensors(session, store, f.path, folder, weight_map, {g.path: g for g in files})


def check_index_tensors(
    session: Session,
    store: ObjectStore,
    index: str,
    folder: str,
    weight_map: dict[str, str],
    by_path: dict[str, File],
) -> None:
    """Every tensor the index maps is in the shard it names, and every tensor of those shards is mapped
    there (transformers loads by the map: a tensor it cannot find fails the load): 422 naming the first."""
    held: dict[str, str] = {}  # tensor name -> the shard that holds it
    for shard in set(weight_map.values()):
        path = posixpath.normpath(posixpath.join(folder, shard))
        names = _tensor_names(session, store, by_path[path])
        if names is None:
            return  # a shard not readable here: the encode job reads every byte anyway
        held.update(dict.fromkeys(names, shard))
    wrong = sorted(k for k, shard in weight_map.items() if held.get(k) != shard)
    unmapped = sorted(set(held) - set(weight_map))
    if wrong or unmapped:
        what = [f"maps tensors its shards do not hold there: {', '.join(wrong[:5])}"] if wrong else []
        what += [f"leaves out tensors of its shards: {', '.join(unmapped[:5])}"] if unmapped else []
        raise Unprocessable(f"{index} {'; '.join(what)}; write the index again", code="index_mismatch")


def _tensor_names(session: Session, store: ObjectStore, f: File) -> list[str] | None:
    """The tensor names of an uploaded shard: its staged header, or the stored file it repeats."""
    if f.staging_key is not None:
        try:
            return [t.name for t in read_header(partial(_read_range, store, f.staging_key), f.size).tensors]
        except SafetensorsError:
            return None
    if f.source_file_id is None:
        return None
    return [t.name for t in TensorRepository(session).for_file(f.source_file_id)]
