"""The SDK's local cache (layout like huggingface_hub's), under ``settings.cache``::

    blobs/<sha256>                       dense file bytes, named by their sha256 (checked before rename)
    blobs/<sha256>.incomplete            a download in progress; resumed with ``Range``
    stamps/<sha256>                      the blob's size and mtime when its sha256 was last checked
    snapshots/<org>/<name>/<rev>/<path>  hard links to blobs (copies where links are impossible)
    versions/<org>/<name>/<rev>.json     the version's file list, written once its snapshot is whole
    refs/<org>/<name>/<rev>              the revision a moving ref (latest, main, a tag) last resolved to
    tensors/<sha256>.json                per-tensor sha256 index of a cached safetensors blob
    artifacts/<org>/<name>/<rev>/<profile>.safetensors   packed delta containers

Nothing is ever re-downloaded while its blob is here; a blob is only renamed into place after its
size and sha256 are checked, so a file that looks complete is complete. Blobs are read-only: pulls
link them into destinations (``deltazoo.linking``), and an edit in place must not change the cache.
Read-only does not stop root, or a user who ``chmod``s a pulled file: a blob whose size or mtime moved
since its stamp is hashed again before it is used, and deleted (so fetched again) when it changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deltazoo.download import download, incomplete_path, install, sha256_file
from deltazoo.models import FileInfo, VersionInfo
from deltazoo.refs import Ref
from deltazoo.transport import Transport


def profile_filename(profile: str) -> str:
    """A file name for a profile: ``deltadq:n=1,m=32,bits=4`` -> ``deltadq-n=1_m=32_bits=4``."""
    return profile.replace(":", "-").replace(",", "_").replace("/", "_")


class Cache:
    """Content-addressed local store of pulled files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    # --- paths -----------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def incomplete_path(self, sha256: str) -> Path:
        return incomplete_path(self.blob_path(sha256))

    def snapshot_dir(self, ref: Ref) -> Path:
        return self.root / "snapshots" / ref.org / ref.name / ref.rev

    def artifact_path(self, ref: Ref, profile: str) -> Path:
        return (
            self.root
            / "artifacts"
            / ref.org
            / ref.name
            / ref.rev
            / f"{profile_filename(profile)}.safetensors"
        )

    def _version_record(self, ref: Ref) -> Path:
        return self.root / "versions" / ref.org / ref.name / f"{ref.rev}.json"

    def _ref_path(self, asked: Ref) -> Path:
        return self.root / "refs" / asked.org / asked.name / asked.rev

    # --- blobs -----------------------------------------------------------------------------------

    def _stamp_path(self, sha256: str) -> Path:
        return self.root / "stamps" / sha256

    def _stamp(self, sha256: str) -> None:
        """Record the blob's size and mtime now that its bytes are known to hash to ``sha256``."""
        st = self.blob_path(sha256).stat()
        path = self._stamp_path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{st.st_size} {st.st_mtime_ns}")

    def has_blob(self, sha256: str, size: int | None = None, *, check: bool = True) -> bool:
        """Whether ``blobs/<sha256>`` is held whole and unchanged (its size, when given, agreeing).

        A blob edited through a hard link (its mtime or size no longer the stamp's) is hashed again;
        one whose bytes changed is deleted, so the next pull fetches it again instead of handing out
        the edited bytes. ``check=False`` looks at the size only (listings: nothing is read)."""
        p = self.blob_path(sha256)
        try:
            st = p.stat()
        except FileNotFoundError:
            return False
        if size is not None and st.st_size != size:
            return False
        if not check:
            return True
        try:
            if self._stamp_path(sha256).read_text() == f"{st.st_size} {st.st_mtime_ns}":
                return True
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        if sha256_file(p) != sha256:
            self.drop_blob(sha256)
            return False
        self._stamp(sha256)
        return True

    def drop_blob(self, sha256: str) -> None:
        """Delete ``blobs/<sha256>`` and what is recorded of it."""
        self.blob_path(sha256).unlink(missing_ok=True)
        self.drop_records(sha256)

    def drop_records(self, sha256: str) -> None:
        """Delete what is recorded of blob ``sha256``: its stamp and its tensor index."""
        self._stamp_path(sha256).unlink(missing_ok=True)
        self._index_of(sha256).unlink(missing_ok=True)

    def install(self, tmp: Path, sha256: str, size: int, actual_sha256: str | None = None) -> Path:
        """Check ``tmp`` (size, sha256) and rename it to ``blobs/<sha256>``; delete it when wrong.

        ``actual_sha256`` is the hash taken while ``tmp`` was written (``HashingWriter``); without it
        the file is read again to hash it."""
        what = f"blob {sha256[:12]}"
        blob = install(tmp, self.blob_path(sha256), size=size, sha256=sha256, digest=actual_sha256, what=what)
        self._stamp(sha256)
        return blob

    def download(
        self,
        transport: Transport,
        url_path: str,
        file: FileInfo,
        *,
        quiet: bool,
        bar: Any = None,
        before: int = 0,
    ) -> Path:
        """Fetch a dense file into ``blobs/`` (``deltazoo.download``: resumed with ``Range``, checked by
        size and sha256 before it is renamed into place).

        ``bar`` is a progress bar shared by every file of a pull, ``before`` the bytes counted on it
        before this file; without one the file gets a bar of its own.
        """
        if self.has_blob(file.sha256, file.size):
            return self.blob_path(file.sha256)
        blob = download(
            transport,
            url_path,
            self.blob_path(file.sha256),
            size=file.size,
            sha256=file.sha256,
            what=file.path,
            bar=bar,
            before=before,
            quiet=quiet,
        )
        self._stamp(file.sha256)
        return blob

    # --- snapshots and versions ------------------------------------------------------------------

    def link_snapshot(self, ref: Ref, files: Iterable[FileInfo]) -> Path:
        """Make ``snapshots/<org>/<name>/<rev>/`` hold every file (links to blobs)."""
        snap = self.snapshot_dir(ref)
        for f in files:
            target = snap / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            blob = self.blob_path(f.sha256)
            if target.exists() and os.path.samefile(target, blob):
                continue
            target.unlink(missing_ok=True)
            try:
                os.link(blob, target)
            except OSError:
                shutil.copyfile(blob, target)
        return snap

    def record_version(self, version: VersionInfo) -> None:
        ref = Ref.parse(version.ref)
        path = self._version_record(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256, "kind": f.kind} for f in version.files]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ref": version.ref, "files": files}))
        os.replace(tmp, path)

    def cached_files(self, ref: Ref) -> list[FileInfo] | None:
        """The files of a version held whole in the cache, or None."""
        path = self._version_record(ref)
        if not path.is_file():
            return None
        files = [FileInfo.model_validate(f) for f in json.loads(path.read_text())["files"]]
        if all(self.has_blob(f.sha256, f.size) for f in files):
            return files
        return None

    def recorded_files(self, ref: Ref) -> list[FileInfo] | None:
        """The file list of a version this cache has seen (its blobs may be partly held), or None."""
        path = self._version_record(ref)
        if not path.is_file():
            return None
        return [FileInfo.model_validate(f) for f in json.loads(path.read_text())["files"]]

    def remember_revision(self, asked: Ref, revision: int) -> None:
        """Record the revision a moving ref (``latest``, ``main``, a tag, a commit id) resolved to online;
        offline mode answers ``asked`` with it."""
        path = self._ref_path(asked)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(revision))

    def remembered_revision(self, asked: Ref) -> int | None:
        """The revision ``asked`` (a moving ref) last resolved to when online, or None."""
        try:
            return int(self._ref_path(asked).read_text().strip())
        except (OSError, ValueError):
            return None

    def forget_revision(self, ref: Ref) -> None:
        """Drop every remembered moving ref of ``ref``'s model that resolved to ``ref``'s revision."""
        folder = self.root / "refs" / ref.org / ref.name
        for path in folder.iterdir() if folder.is_dir() else ():
            try:
                if path.read_text().strip() == ref.rev:
                    path.unlink()
            except OSError:
                continue

    def latest_revision(self, ref: Ref) -> int | None:
        """The revision ``latest`` last resolved to when online (offline mode answers with it)."""
        return self.remembered_revision(Ref(ref.org, ref.name))

    # --- tensor index (for delta-only pulls) -----------------------------------------------------

    def _tensor_index_path(self, file: FileInfo) -> Path:
        return self._index_of(file.sha256)

    def _index_of(self, sha256: str) -> Path:
        return self.root / "tensors" / f"{sha256}.json"

    def has_tensor_index(self, file: FileInfo) -> bool:
        return self._tensor_index_path(file).is_file()

    def tensor_index(
        self, file: FileInfo, *, listed: dict[str, tuple[int, int]] | None = None
    ) -> dict[str, tuple[int, int]]:
        """``{tensor sha256: (begin, end)}`` absolute byte ranges inside a cached safetensors blob.

        ``listed`` is the server's list of the file's tensors (sha256: offsets after the header): taken
        as it is, with the header's length read from the file; without it every tensor is hashed."""
        index_path = self._tensor_index_path(file)
        if index_path.is_file():
            return {k: (int(v[0]), int(v[1])) for k, v in json.loads(index_path.read_text()).items()}
        blob = self.blob_path(file.sha256)
        index: dict[str, tuple[int, int]] = {}
        with blob.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if listed is not None:
                index = {sha: (8 + n + begin, 8 + n + end) for sha, (begin, end) in listed.items()}
            else:
                header = json.loads(f.read(n))
                entries = sorted(
                    (v["data_offsets"] for k, v in header.items() if k != "__metadata__"), key=lambda o: o[0]
                )
                for begin, end in entries:
                    f.seek(8 + n + begin)
                    index[hashlib.sha256(f.read(end - begin)).hexdigest()] = (8 + n + begin, 8 + n + end)
        index_path.parent.mkdir(parents=True, exist_ok=True)
        index_path.write_text(json.dumps(index))
        return index
