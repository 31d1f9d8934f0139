"""Moving versions: ``deltazoo push``, ``pull``, ``get``, ``pull-delta``, ``profile add`` and ``rm``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deltazoo.cli_args import EXIT_OK, CommandTable, open_client, pattern_options
from deltazoo.cli_output import LOSSY_NOTE, print_json, version_line
from deltazoo.errors import JobFailedError, UsageError
from deltazoo.units import human_bytes


def cmd_push(args: argparse.Namespace) -> int:
    with open_client(args) as c:
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
            retain=args.retain,
        )
        if c.last_push_resumed:
            print(
                f"resumed {v.ref}: sent {c.bytes_uploaded} bytes, the server held the rest", file=sys.stderr
            )
    if args.json:
        print_json(v.raw)
        return EXIT_OK
    print(version_line(v))
    if v.status_message:
        print(f"note: {v.status_message}")
    if v.lossy:
        print(LOSSY_NOTE)
    if v.parent_similarity is not None:
        print(f"base detected: {v.parent} (similarity {v.parent_similarity:.3f})")
    if not args.wait and v.status == "processing":
        print(f"encoding in the background; `deltazoo info {v.ref}` shows when it is ready")
    artifacts = getattr(v, "artifacts", ())  # known once the version is ready (``--wait``)
    carried = [a.profile for a in artifacts if a.profile not in (args.profile or ())]
    if args.profile is None and carried:
        print(
            f"profiles carried over from the previous revision: {', '.join(carried)} "
            "(push with --profile to choose others)"
        )
    if v.suggested_base and not v.parent and v.stored_bytes:  # nothing to save when all was deduplicated
        print(
            f"note: this looks derived from {v.suggested_base.ref}; push with --base {v.suggested_base.ref} "
            "to store it as a delta",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_profile_add(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        artifact, job = c.request_profile(args.name, args.profile)
        if args.wait:
            c.wait(job, quiet=args.quiet)
            v = c.version_info(args.name)
            built = v.artifact(artifact.profile)  # the server's spelling of it
            if built is not None and built.status == "failed":
                why = f": {built.status_message}" if built.status_message else ""
                raise JobFailedError(f"{v.ref}: profile {artifact.profile} failed to build{why}")
            if args.json:
                print_json({"ref": v.ref, **(built.raw if built else artifact.raw)})
                return EXIT_OK
            print(f"{v.ref}  {artifact.profile}  ready  {human_bytes(built.bytes if built else None)}")
            return EXIT_OK
    if args.json:
        print_json({**artifact.raw, "job": job.raw})
        return EXIT_OK
    print(
        f"{args.name}  {artifact.profile}  {artifact.status} (job {job.id}); "
        f"`deltazoo info {args.name}` shows when it is ready"
    )
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        out = c.pull(
            args.name, args.dest, include=args.include, exclude=args.exclude, copy=args.copy, quiet=args.quiet
        )
        got = c.bytes_downloaded
        methods = c.last_pull_methods
        lossy = not c.offline and c.version_info(args.name).lossy  # offline: nothing is asked
    if args.json:
        print_json({"path": str(out), "downloaded_bytes": got, "placed": methods, "lossy": lossy})
        return EXIT_OK
    how = ", ".join(f"{n} {'copied' if m == 'copy' else m + 'ed'}" for m, n in sorted(methods.items()))
    print(f"{out}  ({human_bytes(got)} downloaded{'; ' + how if how else ''})")
    if lossy:
        print(f"note: {LOSSY_NOTE}", file=sys.stderr)
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        out = c.get_file(args.name, args.path, args.dest, copy=args.copy, quiet=args.quiet)
        got = c.bytes_downloaded
    if args.json:
        print_json({"path": str(out), "downloaded_bytes": got})
        return EXIT_OK
    print(f"{out}  ({human_bytes(got)} downloaded)")
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    from deltazoo.refs import Ref

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
    with open_client(args) as c:
        if whole:
            c.delete_model(ref.model)
        else:
            c.delete_version(str(ref))
    if args.json:
        print_json({"deleted": str(ref.model if whole else ref), "kind": "model" if whole else "version"})
        return EXIT_OK
    print(f"deleted {what}")
    return EXIT_OK


def cmd_pull_delta(args: argparse.Namespace) -> int:
    from deltazoo.linking import place

    with open_client(args) as c:
        src = c.fetch_delta_file(args.name, args.profile, quiet=args.quiet)
    target = Path(args.dest) / src.name
    how = place(src, target)  # a link to the cache's read-only copy where the filesystem allows
    if args.json:
        print_json({"path": str(target), "bytes": target.stat().st_size, "placed": how})
        return EXIT_OK
    print(f"{target}  ({human_bytes(target.stat().st_size)}, {'copied' if how == 'copy' else how + 'ed'})")
    return EXIT_OK


def add_transfer_commands(commands: CommandTable) -> None:
    """``push``, ``profile add``, ``pull``, ``get``, ``rm``, ``pull-delta``."""
    add, common = commands.add, commands.common
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

    sp.add_argument(
        "--retain",
        choices=("exact", "lossy"),
        default="exact",
        help="exact (default: every byte kept) or lossy: archive a float32 checkpoint with ELF, every "
        "weight within 2^-24, the exact bytes NOT kept (pulls return the ELF weights)",
    )
    sp.add_argument("--private", action="store_true", help="create the model private (new models only)")
    sp.add_argument(
        "--restart",
        action="store_true",
        help="start a new version even if an earlier push of these files left one pending (default: resume)",
    )
    sp.add_argument("--description", default="", help="the model's description (new models only)")
    pattern_options(sp, "push")
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
    pa.add_argument("--json", action="store_true", help="print the REST answer as JSON")

    sp = add("pull", cmd_pull, "download a version's files, bit-exact", json_flag=True, quiet=True)
    sp.add_argument("name", help="ORG/NAME[@REV]")
    sp.add_argument("dest", help="destination folder")
    pattern_options(sp, "pull")
    sp.add_argument(
        "--copy",
        action="store_true",
        help="write independent, writable copies (default: link to the cache where the filesystem allows)",
    )

    sp = add("get", cmd_get, "download one file of a version, bit-exact", json_flag=True, quiet=True)
    sp.add_argument("name", help="ORG/NAME[@REV]")
    sp.add_argument("path", help="the file's path inside the model, e.g. config.json")
    sp.add_argument("--dest", "-o", default=".", help="a folder (default .) or a file path to write it to")
    sp.add_argument("--copy", action="store_true", help="an independent, writable copy (default: a link)")

    sp = add(
        "rm", cmd_rm, "delete a model (ORG/NAME, every version) or one version (ORG/NAME@REV)", json_flag=True
    )
    sp.add_argument("name", help="ORG/NAME or ORG/NAME@REV")
    sp.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    sp = add(
        "pull-delta",
        cmd_pull_delta,
        "download a serving profile's packed delta container",
        json_flag=True,
        quiet=True,
    )
    sp.add_argument("name", help="ORG/NAME[@REV]")
    sp.add_argument("dest", help="destination folder")
    sp.add_argument("--profile", required=True, help="e.g. deltadq:n=1,m=32,bits=4")
