"""Bytes on the wire of SDK pulls: dense, delta-only (base already cached), and a repeated pull.

Starts an embedded server on a temporary home, pushes ZOO/base and each fine-tune (with base as parent),
then with the SDK and a fresh cache: pulls the base (dense), pulls each fine-tune with the base cached
(only its encoded delta travels), pulls it again (nothing travels), and, with another fresh cache, pulls
the fine-tune alone (dense). Every pulled file is compared to the original by sha256. Writes
benchmarks/results/pull.md.

    python benchmarks/pull.py ZOO_DIR [--finetunes coder writer]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tree_sha256(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def measured_pull(client, name: str, dest: Path) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    before, start = client.bytes_downloaded, time.perf_counter()
    client.pull(name, dest, quiet=True)
    return client.bytes_downloaded - before, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("zoo", type=Path)
    parser.add_argument("--finetunes", nargs="+", default=["coder", "writer"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pull.md")
    args = parser.parse_args()

    from deltazoo import Client
    from tests.servers import start_api_server

    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        api = start_api_server(root / "home", {})
        try:
            with Client(api.url, cache_dir=root / "push-cache") as pusher:
                pusher.push(args.zoo / "base", "bench/base", quiet=True)
                stored = {}
                for ft in args.finetunes:
                    v = pusher.push(args.zoo / ft, f"bench/{ft}", base="bench/base", quiet=True)
                    stored[ft] = v.stored_bytes
            with Client(api.url, cache_dir=root / "cache-a") as client:
                n, s = measured_pull(client, "bench/base", root / "out" / "base")
                assert tree_sha256(root / "out" / "base") == tree_sha256(args.zoo / "base"), "base differs"
                rows.append(["base", "dense (empty cache)", f"{n:,}", "-", f"{s:.2f}"])
                for ft in args.finetunes:
                    dest = root / "out" / ft
                    n, s = measured_pull(client, f"bench/{ft}", dest)
                    assert tree_sha256(dest) == tree_sha256(args.zoo / ft), f"{ft} differs"
                    rows.append([ft, "delta-only (base cached)", f"{n:,}", f"{stored[ft]:,}", f"{s:.2f}"])
                    n, s = measured_pull(client, f"bench/{ft}", root / "out" / f"{ft}-again")
                    rows.append([ft, "second pull", f"{n:,}", "-", f"{s:.2f}"])
            for ft in args.finetunes:
                with Client(api.url, cache_dir=root / f"cache-{ft}") as client:
                    n, s = measured_pull(client, f"bench/{ft}", root / "dense" / ft)
                    assert tree_sha256(root / "dense" / ft) == tree_sha256(args.zoo / ft), f"{ft} differs"
                    rows.append([ft, "dense (empty cache)", f"{n:,}", "-", f"{s:.2f}"])
        finally:
            api.stop()

    header = ["checkpoint", "pull", "bytes downloaded", "stored bytes of the version", "seconds"]
    lines = [
        "## Pulls: bytes on the wire",
        "",
        f"Command: `python benchmarks/pull.py {args.zoo} --finetunes {' '.join(args.finetunes)}`",
        "",
        "Embedded server on loopback; SDK `Client.pull` with the cache named; every pulled file sha256-equal",
        "to the original. Bytes downloaded count file and blob bodies (not JSON metadata).",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
