"""The ``deltazoo`` command (see ``deltazoo --help``): the parser and ``main``; the commands live in
``cli_transfer`` (push, pull, get, pull-delta, profile, rm), ``cli_browse`` (ls, info, lineage, stats,
leaderboard), ``cli_manage`` (tag, token, text), ``cli_cache`` (cache), ``cli_server`` (serve, worker,
admin) and ``host/cli`` (host).

Exit codes: 0 ok, 1 the server said no (4xx, a failed job), 2 usage error, 3 server or connection
error. Errors are one line on stderr, ``error: <what is wrong and what to do>``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from deltazoo.cli_args import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SERVER,
    EXIT_USAGE,
    CommandTable,
    global_options,
)
from deltazoo.cli_browse import add_browse_commands
from deltazoo.cli_cache import add_cache_parser
from deltazoo.cli_hints import cli_message
from deltazoo.cli_manage import add_manage_commands
from deltazoo.cli_server import add_server_commands
from deltazoo.cli_transfer import add_transfer_commands
from deltazoo.errors import (
    ClientError,
    DeltazooConnectionError,
    DeltazooError,
    IntegrityError,
    JobFailedError,
    ServerError,
    UsageError,
)
from deltazoo.refs import RefError


def build_parser() -> argparse.ArgumentParser:
    from deltazoo import __version__

    p = argparse.ArgumentParser(prog="deltazoo", description="Storage for families of fine-tuned models.")
    p.add_argument("--version", action="version", version=f"deltazoo {__version__}")
    global_options(p)
    # the same options after the command (`deltazoo ls --url ...`): set only when given there
    common = argparse.ArgumentParser(add_help=False)
    global_options(common, after=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = CommandTable(sub, common)
    add_transfer_commands(commands)
    add_cache_parser(sub, common)
    add_browse_commands(commands)
    add_manage_commands(commands)
    add_server_commands(commands)

    from deltazoo.host.cli import add_host_command

    add_host_command(sub)
    return p


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, UsageError | RefError):
        return EXIT_USAGE
    if isinstance(exc, ClientError | JobFailedError):
        return EXIT_REFUSED
    if isinstance(exc, ServerError | DeltazooConnectionError | IntegrityError | TimeoutError):
        return EXIT_SERVER
    return EXIT_SERVER


def has_token(args: argparse.Namespace) -> bool:
    if getattr(args, "token", None):
        return True
    from deltazoo.settings import get_settings

    try:
        return bool(get_settings().token)
    except UsageError:  # a malformed setting: the error being reported says which
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DeltazooError as exc:
        print(f"error: {cli_message(exc, has_token=has_token(args))}", file=sys.stderr)
        return exit_code(exc)
    except (RefError, TimeoutError) as exc:  # a malformed ORG/NAME[@REV]; a wait that ran out
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:  # the reader went away (`deltazoo info x | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK
    except OSError as exc:  # a local file problem (permissions, disk full, a path in the way)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt as exc:  # a push interrupted while waiting says that it is committed
        print(f"error: {str(exc) or 'interrupted; run the same command again to resume'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
