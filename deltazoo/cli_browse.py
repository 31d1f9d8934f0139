"""Reading the registry: ``deltazoo ls``, ``info``, ``lineage``, ``stats`` and ``leaderboard``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from deltazoo.cli_args import EXIT_OK, CommandTable, open_client
from deltazoo.cli_output import LOSSY_NOTE, print_json, print_table, ratio_text, version_line
from deltazoo.refs import ref_order
from deltazoo.units import human_bytes


def cmd_ls(args: argparse.Namespace) -> int:
    if args.pending:
        return ls_pending(args)
    with open_client(args) as c:
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


def ls_pending(args: argparse.Namespace) -> int:
    with open_client(args) as c:
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
    with open_client(args) as c:
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
        label = version_line(node) if node else ref
        rel = f"[{relation}] " if relation else ""
        print("  " * depth + ("└─ " if depth else "") + rel + label)
        if ref in seen:
            return
        seen.add(ref)
        for child, rel_child in sorted(children.get(ref, []), key=lambda c: ref_order(c[0])):
            show(child, rel_child, depth + 1)

    for root in sorted((r for r in nodes if r not in child_refs), key=ref_order):
        show(root, None, 0)
    if lin.descendants_total:
        counts = ", ".join(f"{n} {rel}" for rel, n in lin.descendant_counts.items())
        print(f"{lin.descendants_total} descendant versions in other models: {counts}")
    if lin.next_cursor:
        left = lin.descendants_total - len(lin.descendants)
        print(f"({len(lin.descendants)} shown, {left} more; use --all to list every one)")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    with open_client(args) as c:
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
    with open_client(args) as c:
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
                gain_text(r),
                human_bytes(r.get("stored_bytes")),
                r.get("status_message") or r.get("status"),
            ]
            for i, r in enumerate(rows)
        ],
    )
    return EXIT_OK


def gain_text(r: dict[str, Any]) -> str:
    if r.get("gain_kept") is not None:
        return f"{100 * r['gain_kept']:.1f} %"
    if r.get("gain_note"):
        return f"{r['gain_note']} (bpb base {r['bpb_base']:.3f}, fine-tune {r['bpb_finetune']:.3f})"
    return "-"


def cmd_info(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        v = c.version_info(args.name)
    if args.json:
        print_json(v.raw)
        return EXIT_OK
    print(
        version_line(v) + (f"  relation {v.relation}" if v.relation else "") + ("  LOSSY" if v.lossy else "")
    )
    if v.status_message:
        print(f"status: {v.status_message}")
    if v.lossy:
        print(LOSSY_NOTE)
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


def add_browse_commands(commands: CommandTable) -> None:
    """``ls``, ``lineage``, ``stats``, ``leaderboard``, ``info``."""
    add = commands.add
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
