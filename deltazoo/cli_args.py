"""What every ``deltazoo`` command shares: the exit codes, the global options (before or after the
command), the include/exclude options, declaring a subcommand, and the client a command opens."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3


def open_client(args: argparse.Namespace) -> Any:
    from deltazoo.client import Client

    return Client(url=args.url, token=args.token, offline=True if args.offline else None)


def global_options(p: argparse.ArgumentParser, *, after: bool = False) -> None:
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if after else {}
    p.add_argument("--url", help="server URL (default: DELTAZOO_URL, http://127.0.0.1:8000)", **kw)
    p.add_argument("--token", help="API token (default: DELTAZOO_TOKEN)", **kw)
    p.add_argument(
        "--offline",
        action="store_true",
        help="answer pulls from the local cache only, no request (default: DELTAZOO_OFFLINE)",
        **kw,
    )


def pattern_options(sp: argparse.ArgumentParser, verb: str) -> None:
    sp.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help=f"{verb} only files matching this glob, e.g. '*.json' (repeatable)",
    )
    sp.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help=f"do not {verb} files matching this glob (repeatable)",
    )


class CommandTable:
    """The subcommands of ``deltazoo`` being declared; ``common`` holds the global options repeated
    after the command (``deltazoo ls --url ...``)."""

    def __init__(self, sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self.sub, self.common = sub, common

    def add(
        self,
        name: str,
        func: Callable[[argparse.Namespace], int],
        help_: str,
        *,
        json_flag: bool = False,
        quiet: bool = False,
    ) -> argparse.ArgumentParser:
        sp = self.sub.add_parser(name, help=help_, description=help_, parents=[self.common])
        sp.set_defaults(func=func)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print the REST answer as JSON")
        if quiet:
            sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        return sp
