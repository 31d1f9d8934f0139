"""The root of the SDK's error hierarchy, alone in a contract module: ``deltazoo.refs`` (which the server
imports too) raises errors of that one hierarchy without importing the SDK. ``deltazoo.errors`` builds the
rest on it; import ``DeltazooError`` from there (or from ``deltazoo``)."""

from __future__ import annotations


class DeltazooError(Exception):
    """Base of every error the deltazoo SDK raises."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        Exception.__init__(self, message)
        self.message = message
        self.code = code
        self.status = status

    def __str__(self) -> str:
        return self.message
