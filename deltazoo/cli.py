"""The ``deltazoo`` command (see ``deltazoo --help``).

Exit codes: 0 ok, 1 the server said no (4xx, a failed job), 2 usage error, 3 server or connection
error. Errors are one line on stderr, ``error: <what is wrong and what to do>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deltazoo.cli_cache import add_cache_parser
from deltazoo.cli_hints import cli_message
from deltazoo.cli_output import print_json, print_table, ratio_text
from deltazoo.errors import (
    ClientError,
    DeltazooConnectionError,
    DeltazooError,
    IntegrityError,
    JobFailedError,
    ServerError,
    UsageError,
)
from deltazoo.units import human_bytes

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3


# --- commands ------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    from deltazoo.client import Client

    return Client(url=args.url, token=args.token, offline=True if args.offline else None)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from deltazoo.registry.db import upgrade_database
    except ImportError as exc:
        raise UsageError(
            f"`deltazoo serve` needs the server extra ({exc.name} is missing): pip install 'deltazoo[server]'"
        ) from exc
    from deltazoo.registry.settings import get_settings

    s = get_settings()
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
    if not _services_ready("serve", s, broker=not s.embedded):
        return EXIT_SERVER
    if s.auth and not s.admin_token:
        print(
            "deltazoo serve: note: tokens are required (DELTAZOO_AUTH, on by default with this database) and "
            "DELTAZOO_ADMIN_TOKEN is not set: only tokens already stored work. Set it to create the admin "
            "token, or DELTAZOO_AUTH=false for an open server",
            file=sys.stderr,
        )
    upgrade_database()
    uvicorn.run("deltazoo.api.app:create_app", factory=True, host=args.host, port=args.port)
    return EXIT_OK


def _services_ready(command: str, settings: Any, *, broker: bool) -> bool:
    """Ask the database, broker and object store once; print one line per problem (with its fix)."""
    from deltazoo.registry.startup_checks import check_services

    problems = check_services(settings, broker=broker)
    for problem in problems:
        print(f"deltazoo {command}: {problem.line()}", file=sys.stderr)
    return not problems


def cmd_worker(args: argparse.Namespace) -> int:
    from deltazoo.registry.settings import get_settings

    s = get_settings()
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
    if not _services_ready("worker", s, broker=True):
        return EXIT_SERVER
    print(
        f"deltazoo worker {name}: broker {s.broker_url.split('@')[-1]}, concurrency {concurrency}",
        file=sys.stderr,
    )
    app.worker_main(["worker", "--loglevel=INFO", f"--concurrency={concurrency}", "-n", name])
    return EXIT_OK


def _ratio_or_dedup(v: Any) -> str:
    if v.status == "ready" and v.stored_bytes == 0 and v.logical_bytes > 0:
        return "- (every byte already stored: deduplicated)"
    return ratio_text(v.ratio)


def _version_line(v: Any) -> str:
    parent = f" <- {v.parent}" if v.parent else ""
    return (
        f"{v.ref}{parent}  {v.status}  logical {human_bytes(v.logical_bytes)}  "
        f"stored {human_bytes(v.stored_bytes)}  ratio {_ratio_or_dedup(v)}"
    )


def cmd_push(args: argparse.Namespace) -> int:
    with _client(args) as c:
        v = c.push(
            args.dir,
            args.name,
            base=args.base,
            relation=args.relation,
            profiles=args.profile,
            description=args.description,
            private=args.private,
            include=args.include,
            exclude=args.exclude,
            allow_no_weights=args.allow_no_weights,
            restart=args.restart,
            wait=args.wait,
            quiet=args.quiet,
        )
        if c.last_push_resumed:
            print(
                f"resumed {v.ref}: sent {c.bytes_uploaded} bytes, the server held the rest", file=sys.stderr
            )
    if args.json:
        print_json(v.raw)
        return EXIT_OK
    print(_version_line(v))
    if v.status_message:
        print(f"note: {v.status_message}")
    if v.parent_similarity is not None:
        print(f"base detected: {v.parent} (similarity {v.parent_similarity:.3f})")
    carried = [a.profile for a in v.artifacts if a.profile not in (args.profile or ())]
    if args.profile is None and carried:
        print(
            f"profiles carried over from the previous revision: {', '.join(carried)} "
            "(push with --profile to choose others)"
        )
    if v.suggested_base and not v.parent:
        print(
            f"note: this looks derived from {v.suggested_base}; push with --base {v.suggested_base} "
            "to store it as a delta",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_profile_add(args: argparse.Namespace) -> int:
    with _client(args) as c:
        artifact, job = c.request_profile(args.name, args.profile)
        if args.wait:
            c.wait(job, quiet=args.quiet)
            v = c.version_info(args.name)
            built = v.artifact(args.profile)
            if built is not None and built.status == "failed":
                raise JobFailedError(f"{v.ref}: profile {args.profile} failed to build")
            print(f"{v.ref}  {args.profile}  ready  {human_bytes(built.bytes if built else None)}")
            return EXIT_OK
    print(
        f"{args.name}  {artifact.profile}  {artifact.status} (job {job.id}); "
        f"`deltazoo info {args.name}` shows when it is ready"
    )
    return EXIT_OK


def cmd_token_create(args: argparse.Namespace) -> int:
    scopes = [x.strip() for x in args.scopes.split(",") if x.strip()]
    with _client(args) as c:
        t = c.create_token(args.token_name, namespace=args.namespace, scopes=scopes, admin=args.admin)
    if args.json:
        print_json(t.raw)
        return EXIT_OK
    where = "every namespace" if t.namespace is None else f"namespace {t.namespace}"
    print(f"token {t.id} ({t.name}): {','.join(t.scopes)} on {where}{' (admin)' if t.admin else ''}")
    print(t.token)
    print("keep it now: the server stores only its hash and will not show it again", file=sys.stderr)
    return EXIT_OK


def cmd_admin_audit(args: argparse.Namespace) -> int:
    """Server side (the same DELTAZOO_* settings as `serve`): the database against the object store."""
    from deltazoo.registry.settings import get_settings

    s = get_settings()
    if args.grace_hours is not None:
        s = s.model_copy(update={"orphan_grace_hours": args.grace_hours})
    if not _services_ready("admin audit", s, broker=False):
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


def cmd_token_ls(args: argparse.Namespace) -> int:
    with _client(args) as c:
        tokens = c.tokens()
    if args.json:
        print_json([t.raw for t in tokens])
        return EXIT_OK
    print_table(
        ["ID", "NAME", "NAMESPACE", "SCOPES", "ADMIN", "LAST USED"],
        [
            [
                t.id,
                t.name,
                t.namespace or "*",
                ",".join(t.scopes),
                "yes" if t.admin else "",
                t.raw.get("last_used_at") or "",
            ]
            for t in tokens
        ],
    )
    return EXIT_OK


def cmd_token_rm(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.delete_token(args.id)
    print(f"token {args.id} deleted")
    return EXIT_OK


def cmd_tag_set(args: argparse.Namespace) -> int:
    with _client(args) as c:
        t = c.tag(args.ref, args.tag)
    if args.json:
        print_json(t.raw)
        return EXIT_OK
    print(f"{t.ref} -> {t.version} (commit {t.commit_id})")
    return EXIT_OK


def cmd_tag_ls(args: argparse.Namespace) -> int:
    with _client(args) as c:
        tags = c.tags(args.name)
    if args.json:
        print_json({"items": [t.raw for t in tags]})
        return EXIT_OK
    print_table(["TAG", "VERSION", "COMMIT"], [[t.name, t.version, t.commit_id] for t in tags])
    return EXIT_OK


def cmd_tag_rm(args: argparse.Namespace) -> int:
    with _client(args) as c:
        c.delete_tag(args.name, args.tag)
    print(f"tag {args.tag} removed from {args.name} (its version stays)")
    return EXIT_OK


def cmd_text_add(args: argparse.Namespace) -> int:
    with _client(args) as c:
        t = c.add_text(args.text_name, Path(args.file), description=args.description)
    if args.json:
        print_json(t)
        return EXIT_OK
    print(f"text {t['name']}: {human_bytes(t['bytes'])}, sha256 {t['sha256'][:12]}; evaluation queued")
    return EXIT_OK


def cmd_text_ls(args: argparse.Namespace) -> int:
    with _client(args) as c:
        texts = c.texts()
    if args.json:
        print_json(texts)
        return EXIT_OK
    print_table(
        ["NAME", "BYTES", "DESCRIPTION", "CREATED"],
        [[t["name"], human_bytes(t["bytes"]), t["description"], t["created_at"]] for t in texts],
    )
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    with _client(args) as c:
        out = c.pull(
            args.name, args.dest, include=args.include, exclude=args.exclude, copy=args.copy, quiet=args.quiet
        )
        got = c.bytes_downloaded
        methods = c.last_pull_methods
    how = ", ".join(f"{n} {'copied' if m == 'copy' else m + 'ed'}" for m, n in sorted(methods.items()))
    print(f"{out}  ({human_bytes(got)} downloaded{'; ' + how if how else ''})")
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        out = c.get_file(args.name, args.path, args.dest, copy=args.copy, quiet=args.quiet)
        got = c.bytes_downloaded
    print(f"{out}  ({human_bytes(got)} downloaded)")
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    from deltazoo.models import Ref

    ref = Ref.parse(args.name)
    whole = "@" not in args.name
    what = f"model {ref.model} and all its versions" if whole else f"version {ref}"
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"deleting {what} cannot be undone: pass --yes to confirm", code="confirm")
        answer = input(f"delete {what}? This cannot be undone [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return EXIT_OK
    with _client(args) as c:
        if whole:
            c.delete_model(ref.model)
        else:
            c.delete_version(str(ref))
    print(f"deleted {what}")
    return EXIT_OK


def cmd_pull_delta(args: argparse.Namespace) -> int:
    from deltazoo.linking import place

    with _client(args) as c:
        src = c.fetch_delta_file(args.name, args.profile, quiet=args.quiet)
    target = Path(args.dest) / src.name
    how = place(src, target)  # a link to the cache's read-only copy where the filesystem allows
    print(f"{target}  ({human_bytes(target.stat().st_size)}, {'copied' if how == 'copy' else how + 'ed'})")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    if args.pending:
        return _ls_pending(args)
    with _client(args) as c:
        models = c.list_models(args.search, limit=args.limit)
    if args.json:
        print_json(models.raw)
        return EXIT_OK
    print_table(
        ["NAME", "VERSIONS", "LATEST", "LOGICAL", "STORED", "RATIO"],
        [
            [
                m.name,
                m.version_count,
                m.latest_revision,
                human_bytes(m.logical_bytes),
                human_bytes(m.stored_bytes),
                ratio_text(m.ratio),
            ]
            for m in models.items
        ],
    )
    if models.total > len(models.items):
        print(f"({len(models.items)} of {models.total}; use --limit)")
    return EXIT_OK


def _ls_pending(args: argparse.Namespace) -> int:
    with _client(args) as c:
        items = c.pending()
    if args.json:
        print_json({"items": items})
        return EXIT_OK
    print_table(
        ["VERSION", "FILES", "HELD", "CREATED", "EXPIRES"],
        [
            [
                p["ref"],
                f"{p['files_uploaded']}/{p['files']}",
                f"{human_bytes(p['held_bytes'])} of {human_bytes(p['declared_bytes'])}",
                str(p["created_at"])[:19],
                str(p["expires_at"])[:19],
            ]
            for p in items
        ],
    )
    if items:
        print("push the same folder again to finish one, or delete it with `deltazoo rm ORG/NAME@REV`")
    return EXIT_OK


LINEAGE_SHOWN = 100  # descendants printed without --all


def cmd_lineage(args: argparse.Namespace) -> int:
    with _client(args) as c:
        lin = c.lineage(args.name, limit=None if args.all else LINEAGE_SHOWN)
    if args.json:
        print_json(lin.raw)
        return EXIT_OK
    nodes = {n.ref: n for n in lin.nodes}
    children: dict[str, list[tuple[str, str | None]]] = {}
    for e in lin.edges:
        children.setdefault(e.parent, []).append((e.child, e.relation))
    child_refs = {e.child for e in lin.edges}
    seen: set[str] = set()

    def show(ref: str, relation: str | None, depth: int) -> None:
        node = nodes.get(ref)
        label = _version_line(node) if node else ref
        rel = f"[{relation}] " if relation else ""
        print("  " * depth + ("└─ " if depth else "") + rel + label)
        if ref in seen:
            return
        seen.add(ref)
        for child, rel_child in sorted(children.get(ref, [])):
            show(child, rel_child, depth + 1)

    for root in sorted(r for r in nodes if r not in child_refs):
        show(root, None, 0)
    if lin.descendants_total:
        counts = ", ".join(f"{n} {rel}" for rel, n in lin.descendant_counts.items())
        print(f"{lin.descendants_total} descendant versions in other models: {counts}")
    if lin.next_cursor:
        left = lin.descendants_total - len(lin.descendants)
        print(f"({len(lin.descendants)} shown, {left} more; use --all to list every one)")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as c:
        s = c.stats()
    if args.json:
        print_json(s.raw)
        return EXIT_OK
    print_table(
        ["", ""],
        [
            ["models", s.models],
            ["versions", s.versions],
            ["files", s.files],
            ["tensors", s.tensors],
            ["blobs", s.blobs],
            ["logical", human_bytes(s.logical_bytes)],
            ["stored", human_bytes(s.stored_bytes)],
            ["ratio", ratio_text(s.ratio)],
            *[[f"encoding {k}", v] for k, v in sorted(s.encodings.items())],
        ],
    )
    return EXIT_OK


def cmd_leaderboard(args: argparse.Namespace) -> int:
    with _client(args) as c:
        board = c.leaderboard(args.text)
    if args.json:
        print_json(board)
        return EXIT_OK
    rows = board.get("items") or []
    if not rows:
        print(f"no evaluations on text set {args.text!r} yet")
        return EXIT_OK

    def num(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    print_table(
        ["#", "VERSION", "PROFILE", "8/BPB", "BPB", "GAIN KEPT", "STORED", "STATUS"],
        [
            [
                i + 1,
                r.get("ref"),
                r.get("profile") or "dense (exact)",
                num(r.get("ratio"), 3),
                num(r.get("bpb"), 3),
                _gain_text(r),
                human_bytes(r.get("stored_bytes")),
                r.get("status_message") or r.get("status"),
            ]
            for i, r in enumerate(rows)
        ],
    )
    return EXIT_OK


def _gain_text(r: dict[str, Any]) -> str:
    if r.get("gain_kept") is not None:
        return f"{100 * r['gain_kept']:.1f} %"
    if r.get("gain_note"):
        return f"{r['gain_note']} (bpb base {r['bpb_base']:.3f}, fine-tune {r['bpb_finetune']:.3f})"
    return "-"


def cmd_info(args: argparse.Namespace) -> int:
    with _client(args) as c:
        v = c.version_info(args.name)
    if args.json:
        print_json(v.raw)
        return EXIT_OK
    print(
        _version_line(v) + (f"  relation {v.relation}" if v.relation else "") + ("  LOSSY" if v.lossy else "")
    )
    if v.status_message:
        print(f"status: {v.status_message}")
    if v.commit_id:
        print(f"commit: {v.commit_id}" + (f"  tags: {', '.join(v.tags)}" if v.tags else ""))
    if v.chain:
        print("chain: " + " <- ".join(v.chain))
    print()
    print_table(
        ["FILE", "KIND", "SIZE", "SHA256"],
        [[f.path, f.kind, human_bytes(f.size), f.sha256[:16]] for f in v.files],
    )
    if v.tensors:
        print()
        print_table(
            ["TENSOR", "DTYPE", "SHAPE", "ENCODING", "LOGICAL", "STORED", "RATIO"],
            [
                [
                    t.name,
                    t.dtype,
                    "x".join(map(str, t.shape)),
                    t.encoding,
                    human_bytes(t.logical_bytes),
                    human_bytes(t.stored_bytes),
                    ratio_text(t.logical_bytes / t.stored_bytes if t.stored_bytes else None),
                ]
                for t in v.tensors
            ],
        )
    if v.artifacts:
        print()
        print_table(
            ["PROFILE", "STATUS", "BYTES", "QUALITY"],
            [
                [a.profile, a.status, human_bytes(a.bytes), json.dumps(a.quality) if a.quality else "-"]
                for a in v.artifacts
            ],
        )
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------------


def _global_options(p: argparse.ArgumentParser, *, after: bool = False) -> None:
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if after else {}
    p.add_argument("--url", help="server URL (default: DELTAZOO_URL, http://127.0.0.1:8000)", **kw)
    p.add_argument("--token", help="API token (default: DELTAZOO_TOKEN)", **kw)
    p.add_argument(
        "--offline",
        action="store_true",
        help="answer pulls from the local cache only, no request (default: DELTAZOO_OFFLINE)",
        **kw,
    )


def _pattern_options(sp: argparse.ArgumentParser, verb: str) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    from deltazoo import __version__

    p = argparse.ArgumentParser(prog="deltazoo", description="Storage for families of fine-tuned models.")
    p.add_argument("--version", action="version", version=f"deltazoo {__version__}")
    _global_options(p)
    # the same options after the command (`deltazoo ls --url ...`): set only when given there
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, after=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help_: str, *, json_flag: bool = False, quiet: bool = False) -> Any:
        sp = sub.add_parser(name, help=help_, description=help_, parents=[common])
        sp.set_defaults(func=func)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print the REST answer as JSON")
        if quiet:
            sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        return sp

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

    sp = add("push", cmd_push, "upload a checkpoint folder as a new version", json_flag=True, quiet=True)
    sp.add_argument("dir", help="checkpoint folder (config.json, *.safetensors, tokenizer files)")
    sp.add_argument("--name", required=True, help="ORG/NAME")
    sp.add_argument(
        "--base",
        help="ORG/NAME[@REV] this is derived from, or 'auto' (the server picks the stored version "
        "the weights are closest to)",
    )
    sp.add_argument(
        "--relation",
        default="finetune",
        help="finetune, adapter, merge, quantized, continued-pretrain (default finetune)",
    )
    sp.add_argument(
        "--profile",
        action="append",
        metavar="P",
        help="serving profile to build, e.g. deltadq:n=1,m=32,bits=4 (repeatable; default: the "
        "profiles of the model's latest version, when pushed with --base)",
    )
    sp.add_argument(
        "--wait", action="store_true", help="wait until the version is ready (non-zero if it fails)"
    )

    sp.add_argument("--private", action="store_true", help="create the model private (new models only)")
    sp.add_argument(
        "--restart",
        action="store_true",
        help="start a new version even if an earlier push of these files left one pending (default: resume)",
    )
    sp.add_argument("--description", default="", help="the model's description (new models only)")
    _pattern_options(sp, "push")
    sp.add_argument(
        "--allow-no-weights",
        action="store_true",
        help="store a folder without *.safetensors weights as opaque files (never unpickled; "
        "nothing deduplicated or evaluated)",
    )

    sp = add("profile", cmd_profile_add, "serving profiles of a version: profile add NAME@REV PROFILE")
    psub = sp.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    pa = psub.add_parser("add", help="build a lossy serving profile for a stored version", parents=[common])
    pa.set_defaults(func=cmd_profile_add)
    pa.add_argument("name", help="ORG/NAME[@REV] (a version pushed with --base)")
    pa.add_argument("profile", help="e.g. deltadq:n=1,m=32,bits=4")
    pa.add_argument("--wait", action="store_true", help="wait until it is built (non-zero if it fails)")
    pa.add_argument("--quiet", "-q", action="store_true", help="no progress bars")

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

    sp = add("token", cmd_token_ls, "manage API tokens (admin): token create | token ls | token rm")
    tsub = sp.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    tc = tsub.add_parser("create", help="create a token (its secret is printed once)", parents=[common])
    tc.set_defaults(func=cmd_token_create)
    tc.add_argument("--name", dest="token_name", default="cli token", help="a label for the token")
    tc.add_argument("--namespace", help="limit the token to this namespace (default: every namespace)")
    tc.add_argument("--scopes", default="read", help="comma-separated: read, write (default read)")
    tc.add_argument("--admin", action="store_true", help="an admin token (every namespace, manages tokens)")
    tc.add_argument("--json", action="store_true", help="print the REST answer as JSON")
    tl = tsub.add_parser("ls", help="list tokens (no secrets)", parents=[common])
    tl.set_defaults(func=cmd_token_ls)
    tl.add_argument("--json", action="store_true", help="print the REST answer as JSON")
    tr = tsub.add_parser("rm", help="delete a token", parents=[common])
    tr.set_defaults(func=cmd_token_rm)
    tr.add_argument("id", type=int, help="token id (from token ls)")

    sp = add("tag", cmd_tag_ls, "named revisions: tag set ORG/NAME@REV TAG | tag ls ORG/NAME | tag rm")
    gsub = sp.add_subparsers(dest="tag_command", required=True, metavar="ACTION")
    gs = gsub.add_parser(
        "set", help="point TAG at a version (create or move it); then use ORG/NAME@TAG", parents=[common]
    )
    gs.set_defaults(func=cmd_tag_set)
    gs.add_argument("ref", help="ORG/NAME@REV: a revision number, main, a commit id or another tag")
    gs.add_argument("tag", help="the tag, e.g. prod or v1.2")
    gs.add_argument("--json", action="store_true", help="print the REST answer as JSON")
    gl = gsub.add_parser("ls", help="list a model's tags", parents=[common])
    gl.set_defaults(func=cmd_tag_ls)
    gl.add_argument("name", help="ORG/NAME")
    gl.add_argument("--json", action="store_true", help="print the REST answer as JSON")
    gr = gsub.add_parser("rm", help="delete a tag (the version stays)", parents=[common])
    gr.set_defaults(func=cmd_tag_rm)
    gr.add_argument("name", help="ORG/NAME")
    gr.add_argument("tag", help="the tag to delete")

    sp = add("text", cmd_text_ls, "held-out evaluation texts: text add NAME FILE | text ls")
    xsub = sp.add_subparsers(dest="text_command", required=True, metavar="ACTION")
    xa = xsub.add_parser(
        "add", help="register a UTF-8 text file (bits-per-byte evaluation, calibration)", parents=[common]
    )
    xa.set_defaults(func=cmd_text_add)
    xa.add_argument("text_name", metavar="NAME", help="1-100 letters, digits, '.', '_' or '-'")
    xa.add_argument("file", help="a UTF-8 text file, held out from every fine-tune's training data")
    xa.add_argument("--description", default="", help="what the text is")
    xa.add_argument("--json", action="store_true", help="print the REST answer as JSON")
    xl = xsub.add_parser("ls", help="list the registered texts", parents=[common])
    xl.set_defaults(func=cmd_text_ls)
    xl.add_argument("--json", action="store_true", help="print the REST answer as JSON")

    sp = add("pull", cmd_pull, "download a version's files, bit-exact", quiet=True)
    sp.add_argument("name", help="ORG/NAME[@REV]")
    sp.add_argument("dest", help="destination folder")
    _pattern_options(sp, "pull")
    sp.add_argument(
        "--copy",
        action="store_true",
        help="write independent, writable copies (default: link to the cache where the filesystem allows)",
    )

    sp = add("get", cmd_get, "download one file of a version, bit-exact", quiet=True)
    sp.add_argument("name", help="ORG/NAME[@REV]")
    sp.add_argument("path", help="the file's path inside the model, e.g. config.json")
    sp.add_argument("--dest", "-o", default=".", help="a folder (default .) or a file path to write it to")
    sp.add_argument("--copy", action="store_true", help="an independent, writable copy (default: a link)")

    sp = add("rm", cmd_rm, "delete a model (ORG/NAME, every version) or one version (ORG/NAME@REV)")
    sp.add_argument("name", help="ORG/NAME or ORG/NAME@REV")
    sp.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    add_cache_parser(sub, common)

    sp = add("pull-delta", cmd_pull_delta, "download a serving profile's packed delta container", quiet=True)
    sp.add_argument("name", help="ORG/NAME[@REV]")
    sp.add_argument("dest", help="destination folder")
    sp.add_argument("--profile", required=True, help="e.g. deltadq:n=1,m=32,bits=4")

    sp = add("ls", cmd_ls, "list models with logical and stored bytes", json_flag=True)
    sp.add_argument("--search", help="only names containing this")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument(
        "--pending", action="store_true", help="list versions created but not committed (unfinished pushes)"
    )

    sp = add("lineage", cmd_lineage, "ancestors and descendants of a model", json_flag=True)
    sp.add_argument("name", help="ORG/NAME")
    sp.add_argument(
        "--all", action="store_true", help=f"every descendant (default: {LINEAGE_SHOWN} and the counts)"
    )

    add("stats", cmd_stats, "whole zoo: logical bytes, stored bytes, ratio", json_flag=True)

    sp = add("leaderboard", cmd_leaderboard, "versions and profiles ranked by 8 / bpb", json_flag=True)
    sp.add_argument("--text", required=True, help="evaluation text set name")

    sp = add("info", cmd_info, "version detail with per-tensor encodings", json_flag=True)
    sp.add_argument("name", help="ORG/NAME[@REV]")

    from deltazoo.host.cli import add_host_command

    add_host_command(sub)
    return p


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, ClientError | JobFailedError):
        return EXIT_REFUSED
    if isinstance(exc, ServerError | DeltazooConnectionError | IntegrityError | TimeoutError):
        return EXIT_SERVER
    return EXIT_SERVER


def _has_token(args: argparse.Namespace) -> bool:
    if getattr(args, "token", None):
        return True
    from deltazoo.settings import get_settings

    return bool(get_settings().token)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DeltazooError as exc:
        print(f"error: {cli_message(exc, has_token=_has_token(args))}", file=sys.stderr)
        return exit_code(exc)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:  # a local file problem (permissions, disk full, a path in the way)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`deltazoo info x | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
