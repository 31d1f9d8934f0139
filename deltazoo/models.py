"""The SDK's names for the answers of docs/REST.md. They are the response contract's models
(``deltazoo/schemas.py``), the very ones the server answers with, parsed with ``model_validate``; unknown
keys are ignored (a newer server does not break an older client) and ``raw`` is an answer's JSON form
(what ``--json`` prints).

``VersionInfo`` is a version's detail (``Client.version_info``); a push answers a ``VersionSummary``, of
which the detail is a subclass. ``ModelInfo`` is a model with its versions; ``ModelList`` items are
``ModelSummary`` (``version_count`` on both).
"""

from __future__ import annotations

from deltazoo.refs import Ref
from deltazoo.schemas import (
    Artifact,
    ArtifactRequested,
    BaseSuggestion,
    Committed,
    Edge,
    FileInfo,
    Job,
    Lineage,
    Model,
    ModelList,
    ModelSummary,
    PendingList,
    PendingVersion,
    Stats,
    Tag,
    TagList,
    TensorInfo,
    TokenCreated,
    TokenInfo,
    TokenList,
    VersionCreated,
    VersionDetail,
    VersionSummary,
)

VersionInfo = VersionDetail
ModelInfo = Model
TagInfo = Tag

__all__ = [
    "Artifact", "ArtifactRequested", "BaseSuggestion", "Committed", "Edge", "FileInfo", "Job", "Lineage",
    "Model", "ModelInfo", "ModelList", "ModelSummary", "PendingList", "PendingVersion", "Ref", "Stats", "Tag",
    "TagInfo", "TagList", "TensorInfo", "TokenCreated", "TokenInfo", "TokenList", "VersionCreated",
    "VersionDetail", "VersionInfo", "VersionSummary",
]
