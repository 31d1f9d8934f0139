"""Named things on the server: ``deltazoo edit`` (a model's settings), ``deltazoo tag``, ``deltazoo token``
(admin) and ``deltazoo text``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deltazoo.cli_args import EXIT_OK, CommandTable, open_client
from deltazoo.cli_output import print_json, print_table
from deltazoo.errors import UsageError
from deltazoo.units import human_bytes


def cmd_token_create(args: argparse.Namespace) -> int:
    scopes = [x.strip() for x in args.scopes.split(",") if x.strip()]
    with open_client(args) as c:
        t = c.create_token(args.token_name, namespace=args.namespace, scopes=scopes, admin=args.admin)
    if args.json:
        print_json(t.raw)
        return EXIT_OK
    where = "every namespace" if t.namespace is None else f"namespace {t.namespace}"
    print(f"token {t.id} ({t.name}): {','.join(t.scopes)} on {where}{' (admin)' if t.admin else ''}")
    print(t.token)
    print("keep it now: the server stores only its hash and will not show it again", file=sys.stderr)
    return EXIT_OK


def cmd_token_ls(args: argparse.Namespace) -> int:
    with open_client(args) as c:
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
    with open_client(args) as c:
        c.delete_token(args.id)
    print(f"token {args.id} deleted")
    return EXIT_OK


def cmd_edit(args: argparse.Namespace) -> int:
    if args.private is None and args.description is None:
        raise UsageError("nothing to change: pass --private, --public or --description TEXT")
    with open_client(args) as c:
        m = c.update_model(args.name, description=args.description, private=args.private)
    if args.json:
        print_json(m.raw)
        return EXIT_OK
    print(f"{m.name}: {'private' if m.private else 'public'}; description: {m.description or '(none)'}")
    return EXIT_OK


def cmd_tag_set(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        t = c.tag(args.ref, args.tag)
    if args.json:
        print_json(t.raw)
        return EXIT_OK
    print(f"{t.ref} -> {t.version} (commit {t.commit_id})")
    return EXIT_OK


def cmd_tag_ls(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        tags = c.tags(args.name)
    if args.json:
        print_json({"items": [t.raw for t in tags]})
        return EXIT_OK
    print_table(["TAG", "VERSION", "COMMIT"], [[t.name, t.version, t.commit_id] for t in tags])
    return EXIT_OK


def cmd_tag_rm(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        c.delete_tag(args.name, args.tag)
    print(f"tag {args.tag} removed from {args.name} (its version stays)")
    return EXIT_OK


def cmd_text_add(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        t = c.add_text(args.text_name, Path(args.file), description=args.description)
    if args.json:
        print_json(t)
        return EXIT_OK
    print(f"text {t['name']}: {human_bytes(t['bytes'])}, sha256 {t['sha256'][:12]}; evaluation queued")
    return EXIT_OK


def cmd_text_rm(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        c.delete_text(args.text_name)
    print(f"text {args.text_name} deleted, with its evaluations")
    return EXIT_OK


def cmd_text_ls(args: argparse.Namespace) -> int:
    with open_client(args) as c:
        texts = c.texts()
    if args.json:
        print_json(texts)
        return EXIT_OK
    print_table(
        ["NAME", "BYTES", "DESCRIPTION", "CREATED"],
        [[t["name"], human_bytes(t["bytes"]), t["description"], t["created_at"]] for t in texts],
    )
    return EXIT_OK


def add_manage_commands(commands: CommandTable) -> None:
    """``edit``, ``token``, ``tag``, ``text``."""
    add, common = commands.add, commands.common
    sp = add(
        "edit",
        cmd_edit,
        "change a model's settings: edit ORG/NAME --private | --public | --description",
        json_flag=True,
    )
    sp.add_argument("name", help="ORG/NAME")
    who = sp.add_mutually_exclusive_group()
    who.add_argument(
        "--private",
        dest="private",
        action="store_const",
        const=True,
        help="only tokens of its namespace may read it (refused while public models build on it)",
    )
    who.add_argument("--public", dest="private", action="store_const", const=False, help="anyone may read it")
    sp.add_argument("--description", help="the model's new description")
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

    sp = add("text", cmd_text_ls, "held-out evaluation texts: text add NAME FILE | text ls | text rm NAME")
    xsub = sp.add_subparsers(dest="text_command", required=True, metavar="ACTION")
    xa = xsub.add_parser(
        "add", help="register a UTF-8 text file (bits-per-byte evaluation, calibration)", parents=[common]
    )
    xa.set_defaults(func=cmd_text_add)
    xa.add_argument("text_name", metavar="NAME", help="1-100 letters, digits, '.', '_' or '-'")
    xa.add_argument("file", help="a UTF-8 text file, held out from every fine-tune's training data")
    xa.add_argument("--description", default="", help="what the text is")
    xa.add_argument("--json", action="store_true", help="print the REST answer as JSON")
    xr = xsub.add_parser("rm", help="forget a text and its evaluations (admin)", parents=[common])
    xr.set_defaults(func=cmd_text_rm)
    xr.add_argument("text_name", metavar="NAME", help="the text's name (from text ls)")
    xl = xsub.add_parser("ls", help="list the registered texts", parents=[common])
    xl.set_defaults(func=cmd_text_ls)
    xl.add_argument("--json", action="store_true", help="print the REST answer as JSON")
