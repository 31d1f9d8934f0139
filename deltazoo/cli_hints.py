"""Errors in the terms of the ``deltazoo`` command: the next command to run, never a REST route.

The server's messages are written for every client (REST, SDK, CLI) and may name a route; the CLI
rewrites those phrases into the command that does the same thing, and adds the token hint a 404 of a
model may need (a private model is indistinguishable from a missing one to a caller who may not read
it, as on the Hugging Face Hub).
"""

from __future__ import annotations

import re

from deltazoo.errors import DeltazooError

_MODEL_404 = re.compile(r"model (?P<model>[\w.-]+/[\w.-]+) does not exist")
_ARTIFACT_404 = re.compile(r"^(?P<ref>\S+) has no (?P<profile>\S+) artifact")

_PHRASES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"register one with POST /v1/texts"), "register one with `deltazoo text add NAME FILE`"),
    (re.compile(r"GET /v1/tokens lists them"), "`deltazoo token ls` lists them"),
    (
        re.compile(r"send 'Authorization: Bearer <token>'( \(DELTAZOO_TOKEN for the CLI\))?"),
        "pass --token TOKEN or set DELTAZOO_TOKEN",
    ),
]


def cli_message(exc: DeltazooError, *, has_token: bool) -> str:
    """``exc``'s message with REST advice replaced by the command to run next."""
    message = exc.message
    model = _MODEL_404.search(message)
    if model is not None:
        name = model["model"]
        message = message.replace(
            "create it with POST /v1/models",
            f"`deltazoo ls` lists the models you can see; `deltazoo push DIR --name {name}` creates it",
        )
        if exc.status == 404:
            org = name.split("/")[0]
            message += (
                f". If {name} is private, your token may not read namespace {org!r}: use a token "
                "with read scope on it (--token or DELTAZOO_TOKEN)"
                if has_token
                else f". If {name} is private, it needs a token: pass --token TOKEN or set DELTAZOO_TOKEN"
            )
    artifact = _ARTIFACT_404.search(message)
    if artifact is not None:
        message = message.replace(
            "request it with POST .../artifacts",
            f"request it with `deltazoo profile add {artifact['ref']} {artifact['profile']} --wait`",
        )
    for pattern, replacement in _PHRASES:
        message = pattern.sub(replacement, message)
    return message
