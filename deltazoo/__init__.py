"""deltazoo: storage for families of fine-tuned models (exact deltas, DeltaDQ serving profiles, lineage).

``from deltazoo import Client, load_model``; errors are typed (``deltazoo.NotFoundError`` is also a
``FileNotFoundError``, ``deltazoo.BadRequestError`` a ``ValueError``, ...).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from deltazoo.client import Client
from deltazoo.errors import (
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    DeltazooConnectionError,
    DeltazooError,
    IntegrityError,
    JobFailedError,
    NotFoundError,
    PermissionDenied,
    RateLimitedError,
    ServerError,
    UsageError,
)
from deltazoo.loading import load_model

try:
    __version__ = version("deltazoo")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "DeltazooConnectionError",
    "DeltazooError",
    "IntegrityError",
    "JobFailedError",
    "NotFoundError",
    "PermissionDenied",
    "RateLimitedError",
    "ServerError",
    "UsageError",
    "__version__",
    "load_model",
]
