"""Lossy retention (``--retain lossy``): a float32 checkpoint archived with ELF (seed 003), not bit for bit.

Only on an explicit request. The version is marked lossy everywhere it is shown; its F32 tensors are stored
as ELF payloads (``compression.elf32``: every value within 2⁻²⁴, values ELF cannot align kept exactly) and
the exact upload is not kept. A pull returns the ELF-decoded weights, so a file's served bytes differ from
the uploaded ones: the file row keeps both, ``original_sha256`` (what was pushed) and ``sha256`` (what is
served, what a client checks its download against).
"""

from __future__ import annotations

import hashlib

from deltazoo.compression.safetensors_io import SafetensorsError, read_header
from deltazoo.registry.errors import Unprocessable
from deltazoo.registry.models import File, Version
from deltazoo.registry.objectstore import ObjectStore
from deltazoo.registry.repositories import FileRepository
from deltazoo.services.transfer import file_plan, iter_file
from sqlalchemy.orm import Session

FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def check_lossy_checkpoint(session: Session, store: ObjectStore, version: Version) -> None:
    """A lossy version must be a float32 checkpoint: every float tensor F32, at least one of them.
    Anything else is refused (422 ``lossy_needs_f32``) before a byte is encoded."""
    if not version.lossy:
        return
    other: dict[str, str] = {}
    f32 = 0
    for file in FileRepository(session).for_version(version.id):
        if file.kind != "safetensors" or file.staging_key is None:
            continue
        key = file.staging_key
        try:
            header = read_header(lambda o, n, key=key: store.get_range(key, o, n), file.size)  # type: ignore[misc]
        except SafetensorsError:
            continue  # validated at upload
        for t in header.tensors:
            f32 += t.dtype == "F32"
            if t.dtype in FLOATS and t.dtype != "F32":
                other.setdefault(t.dtype, f"{file.path}:{t.name}")
    if other or not f32:
        found = ", ".join(f"{d} ({where})" for d, where in sorted(other.items())) or "no float32 tensor"
        raise Unprocessable(
            f"--retain lossy archives float32 checkpoints only (ELF, error <= 2^-24); this one has {found}."
            " Push it without --retain lossy to store it exactly",
            code="lossy_needs_f32",
        )


def record_served_sha256(session: Session, store: ObjectStore, file: File) -> None:
    """After a lossy file is encoded: keep the pushed sha256 as ``original_sha256`` and set ``sha256`` to
    that of the bytes a pull serves, rebuilt from the stored tensors as a download rebuilds them."""
    digest = hashlib.sha256()
    for part in iter_file(store, file_plan(session, store, file)):
        digest.update(part)
    if file.original_sha256 is None:
        file.original_sha256 = file.sha256
    file.sha256 = digest.hexdigest()
