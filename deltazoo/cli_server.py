"""Server-side commands: ``deltazoo serve``, ``deltazoo worker`` and ``deltazoo admin audit``. The one door
from the client package into the server: the server packages are imported inside these commands only."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from deltazoo.cli_args import EXIT_OK, EXIT_REFUSED, EXIT_SERVER, CommandTable
from deltazoo.cli_output import print_json
from deltazoo.errors import UsageError


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from deltazoo.registry.db import upgrade_database
    except ImportError as exc:
        raise UsageError(
            f"`deltazoo serve` needs the server extra ({exc.name} is missing): pip install 'deltazoo[server]'"
        ) from exc
    s = server_settings()
    full = bool(s.database_url or s.broker_url or s.s3_endpoint)
    database = (
        "SQLite at " + s.resolved_database_url.split("///", 1)[-1]
        if not s.database_url
        else ("database " + s.database_url.split("@")[-1])
    )
    objects = (
        f"S3 bucket {s.s3_bucket} at {s.s3_endpoint}"
        if s.s3_endpoint
        else f"objects at {s.objects_dir.resolve()}"
    )
    worker = "in-process worker" if s.embedded else "Celery workers via the broker (run `deltazoo worker`)"
    auth = "tokens required" if s.auth else "open/no auth"
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    bound = "bound to localhost" if loopback else f"bound to {args.host}"
    mode = "full stack" if full else "embedded"
    print(
        f"deltazoo serve: {mode} ({database}, {objects}, {worker}, {auth}, {bound}) "
        f"on http://{args.host}:{args.port}",
        file=sys.stderr,
    )
    if not loopback and not s.auth:
        if not args.insecure:
            raise UsageError(
                f"refusing to serve without auth on {args.host}: anyone who can reach it could read and "
                "delete everything. Set DELTAZOO_AUTH=true (and DELTAZOO_ADMIN_TOKEN), bind to 127.0.0.1, "
                "or pass --insecure if the network is trusted",
                code="open_server_on_network",
            )
        print(
            "WARNING: --insecure: an open server (no tokens) is reachable from the network", file=sys.stderr
        )
    if not services_ready("serve", s, broker=not s.embedded):
        return EXIT_SERVER
    if s.auth and not s.admin_token:
        print(
            "deltazoo serve: note: tokens are required (DELTAZOO_AUTH, on by default with this database) and "
            "DELTAZOO_ADMIN_TOKEN is not set: only tokens already stored work. Set it to create the admin "
            "token, or DELTAZOO_AUTH=false for an open server",
            file=sys.stderr,
        )
    upgrade_database()
    from deltazoo.api.http_protocol import body_pieces_protocol

    uvicorn.run(
        "deltazoo.api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        http=body_pieces_protocol(),  # type: ignore[arg-type]
    )
    return EXIT_OK


def server_settings() -> Any:
    """The server's settings (``deltazoo.registry.settings``); a malformed ``DELTAZOO_*`` variable is a
    usage error naming it, not a traceback."""
    from pydantic import ValidationError

    from deltazoo.registry.settings import get_settings
    from deltazoo.settings import settings_problem

    try:
        return get_settings()
    except ValidationError as exc:
        raise UsageError(settings_problem(exc), code="invalid_setting") from None


def services_ready(command: str, settings: Any, *, broker: bool) -> bool:
    """Ask the database, broker and object store once; print one line per problem (with its fix)."""
    from deltazoo.registry.startup_checks import check_services

    problems = check_services(settings, broker=broker)
    for problem in problems:
        print(f"deltazoo {command}: {problem.line()}", file=sys.stderr)
    return not problems


def cmd_worker(args: argparse.Namespace) -> int:
    s = server_settings()
    if s.broker_url is None:
        raise UsageError(
            "`deltazoo worker` needs a broker: set DELTAZOO_BROKER_URL (Redis); "
            "the embedded `deltazoo serve` runs jobs itself"
        )
    try:
        from deltazoo.workers.celery_app import app
    except ImportError as exc:
        raise UsageError(
            f"`deltazoo worker` needs the server extra ({exc.name} is missing): "
            "pip install 'deltazoo[server]'"
        ) from exc
    import os
    import socket

    concurrency = s.worker_concurrency if args.concurrency is None else args.concurrency
    if concurrency < 1:
        raise UsageError("--concurrency must be at least 1", code="invalid_concurrency")
    # one node name per process, so two workers on one host never share `celery@host`
    name = args.name or f"deltazoo-{os.getpid()}@{socket.gethostname()}"
    if "@" not in name:
        name = f"{name}@{socket.gethostname()}"
    if not services_ready("worker", s, broker=True):
        return EXIT_SERVER
    print(
        f"deltazoo worker {name}: broker {s.broker_url.split('@')[-1]}, concurrency {concurrency}",
        file=sys.stderr,
    )
    app.worker_main(["worker", "--loglevel=INFO", f"--concurrency={concurrency}", "-n", name])
    return EXIT_OK


def cmd_admin_audit(args: argparse.Namespace) -> int:
    """Server side (the same DELTAZOO_* settings as `serve`): the database against the object store."""
    s = server_settings()
    if args.grace_hours is not None:
        s = s.model_copy(update={"orphan_grace_hours": args.grace_hours})
    if s.database_url is None and not (s.home / "registry.db").is_file():  # nothing is created here
        raise UsageError(
            f"no deltazoo server here: {s.home.resolve()} holds no registry.db. Run `deltazoo admin audit` "
            "in the folder `deltazoo serve` runs in, or set DELTAZOO_HOME (or DELTAZOO_DATABASE_URL and "
            "the object store's settings) to the server's",
            code="no_server_home",
        )
    if not services_ready("admin audit", s, broker=False):
        return EXIT_SERVER
    from deltazoo.registry.objectstore import object_store_from_settings
    from deltazoo.workers.orphan_sweep import sweep_once

    report = sweep_once(s, object_store_from_settings(s), repair=args.repair)
    unrepairable = report.missing_blobs or report.missing_staging
    leftovers = report.incomplete_uploads or report.orphan_staging or report.orphan_blobs
    code = EXIT_REFUSED if unrepairable or (leftovers and not args.repair) else EXIT_OK
    if args.json:
        print_json(report.as_dict())
        return code
    verb = "removed" if args.repair else "found"
    for title, items in (
        (f"incomplete uploads {verb}", report.incomplete_uploads),
        (f"staging objects no file names, {verb}", report.orphan_staging),
        (f"blob objects no blob row names, {verb}", report.orphan_blobs),
        ("blob rows whose object is missing (cannot be repaired)", report.missing_blobs),
        ("staging keys whose object is missing (delete their pending versions)", report.missing_staging),
    ):
        print(f"{title}: {len(items)}")
        for key in items[:20]:
            print(f"  {key}")
        if len(items) > 20:
            print(f"  ... and {len(items) - 20} more (--json lists all)")
    if leftovers and not args.repair:
        print(f"run again with --repair to remove them (only what is older than {s.orphan_grace_hours} h)")
    return code


def add_server_commands(commands: CommandTable) -> None:
    """``serve``, ``worker``, ``admin audit``."""
    add, common = commands.add, commands.common
    sp = add("serve", cmd_serve, "run the API server (embedded unless settings name real services)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument(
        "--insecure",
        action="store_true",
        help="allow serving without auth on a non-localhost address (trusted networks only)",
    )

    sp = add("worker", cmd_worker, "run a Celery worker (full stack)")
    sp.add_argument(
        "--name",
        help="Celery node name, NAME or NAME@HOST (default deltazoo-<pid>@<host>, unique per process)",
    )
    sp.add_argument(
        "--concurrency",
        type=int,
        help="jobs run at once by this worker (default DELTAZOO_WORKER_CONCURRENCY)",
    )

    sp = add("admin", cmd_admin_audit, "server-side maintenance: admin audit [--repair]")
    asub = sp.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    aa = asub.add_parser(
        "audit",
        help="compare the database with the object store (run where the server's settings are)",
        parents=[common],
    )
    aa.set_defaults(func=cmd_admin_audit)
    aa.add_argument("--repair", action="store_true", help="abort incomplete uploads, delete unnamed objects")
    aa.add_argument(
        "--grace-hours",
        type=float,
        help="only touch what is older than this (default DELTAZOO_ORPHAN_GRACE_HOURS, 6)",
    )
    aa.add_argument("--json", action="store_true", help="print the report as JSON")
