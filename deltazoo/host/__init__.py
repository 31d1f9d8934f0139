"""``deltazoo host``: one resident base, fine-tunes' packed deltas fetched on demand from a deltazoo
server, OpenAI-compatible completions with every concurrent request batched into the same forward
passes (one delta id per row).

Needs the client, the kernels and transformers (``pip install 'deltazoo[host]'``), never the server
packages (api, registry, workers).

    from deltazoo.host import Host, HostSettings
    host = Host(client, HostSettings(base="acme/base", profile="deltadq:n=1,m=32,bits=4"))
    host.complete("acme/coder", "def f(", max_tokens=16)
"""

from __future__ import annotations

from typing import Any

__all__ = ["Completion", "DeltaStore", "Host", "HostError", "HostSettings"]


def __getattr__(name: str) -> Any:  # torch and the kernels load on first use, not for the CLI parser
    if name == "Completion":
        from .engine import Completion

        return Completion
    if name == "HostError":
        from .errors import HostError

        return HostError
    if name in ("Host", "HostSettings"):
        from . import service

        return getattr(service, name)
    if name == "DeltaStore":
        from .store import DeltaStore

        return DeltaStore
    raise AttributeError(name)
