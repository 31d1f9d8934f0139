"""``deltazoo cache ls`` and ``deltazoo cache prune``: what the local cache holds, and freeing it."""

from __future__ import annotations

import argparse

from deltazoo.cache import Cache
from deltazoo.cache_scan import blob_bytes, cached_versions, prune
from deltazoo.cli_output import print_json, print_table
from deltazoo.errors import UsageError
from deltazoo.units import human_bytes


def _cache() -> Cache:
    from deltazoo.settings import get_settings

    return Cache(get_settings().cache)


def cmd_cache_ls(args: argparse.Namespace) -> int:
    cache = _cache()
    versions = cached_versions(cache)
    if args.json:
        print_json(
            {
                "root": str(cache.root),
                "blob_bytes": blob_bytes(cache),
                "versions": [
                    {
                        "ref": str(v.ref),
                        "files": len(v.files),
                        "held_bytes": v.held_bytes,
                        "total_bytes": v.total_bytes,
                        "complete": v.complete,
                        "latest": v.latest,
                    }
                    for v in versions
                ],
            }
        )
        return 0
    print_table(
        ["VERSION", "FILES", "SIZE", "HELD", "LATEST"],
        [
            [
                str(v.ref),
                len(v.files),
                human_bytes(v.total_bytes),
                "all" if v.complete else human_bytes(v.held_bytes),
                "latest" if v.latest else "",
            ]
            for v in versions
        ],
    )
    print(
        f"{len(versions)} versions in {cache.root}, {human_bytes(blob_bytes(cache))} on disk "
        "(blobs shared between versions counted once)"
    )
    return 0


def cmd_cache_prune(args: argparse.Namespace) -> int:
    if not args.names and not args.all and not args.orphans:
        raise UsageError(
            "say what to prune: `deltazoo cache prune ORG/NAME[@REV]...`, --orphans (partial downloads "
            "and blobs no cached version uses) or --all; `deltazoo cache ls` shows what is cached",
            code="nothing_to_prune",
        )
    cache = _cache()
    result = prune(cache, args.names, everything=args.all)
    if args.names and not result.versions:
        raise UsageError(
            f"the cache holds none of {', '.join(args.names)}; `deltazoo cache ls` shows what is cached",
            code="not_cached",
        )
    forgot = f"forgot {', '.join(map(str, result.versions))}; " if result.versions else ""
    print(f"{forgot}deleted {result.blobs} blobs, {human_bytes(result.freed_bytes)} freed")
    return 0


def add_cache_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    help_ = "the local download cache: cache ls | cache prune"
    sp = sub.add_parser("cache", help=help_, description=help_, parents=[common])
    csub = sp.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    ls = csub.add_parser("ls", help="cached versions, their sizes and the space used", parents=[common])
    ls.set_defaults(func=cmd_cache_ls)
    ls.add_argument("--json", action="store_true", help="print as JSON")
    pr = csub.add_parser(
        "prune", help="forget cached versions and delete the blobs nothing cached uses", parents=[common]
    )
    pr.set_defaults(func=cmd_cache_prune)
    pr.add_argument(
        "names", nargs="*", metavar="ORG/NAME[@REV]", help="versions to forget (all revisions without @REV)"
    )
    pr.add_argument("--all", action="store_true", help="empty the cache")
    pr.add_argument(
        "--orphans", action="store_true", help="only partial downloads and blobs no cached version uses"
    )
