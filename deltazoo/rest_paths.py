"""The REST paths of a version that the SDK's modules call (docs/REST.md)."""

from __future__ import annotations

from urllib.parse import quote

from deltazoo.refs import Ref


def version_path(ref: Ref) -> str:
    return f"/v1/models/{ref.org}/{ref.name}/versions/{ref.rev}"


def file_path(ref: Ref, path: str) -> str:
    """A file of the version: ``PUT`` uploads it, ``GET`` downloads it."""
    return f"{version_path(ref)}/files/{quote(path)}"
