"""Pull speed side by side: cold and delta-only pulls of one pushed fine-tune from servers running
different trees of deltazoo (say main and a branch), alternated with ``zstd -d`` of the same files.

Each ``--side NAME=ROOT`` is a tree of the repository (``ROOT`` put first on ``PYTHONPATH``, with
``deltazoo/`` holding links to the server folders as the installed package maps them; empty: the
installed tree). Every side gets its own embedded ``deltazoo serve`` (SQLite + object directory); the
pair of ``benchmarks/throughput.py`` (base + full fine-tune, bf16) is pushed to each once. Then each
repetition runs, in turn, ``zstd -d`` of the fine-tune's files, a cold pull (empty cache) from every
side, and a delta-only pull (a cache holding the base) from every side, the order of the sides
alternating between repetitions. A pull is a child process running that side's SDK; it reports its
wall time and CPU seconds (all its threads, ``getrusage``) around ``Client.pull`` only, and the server's
CPU seconds are read from ``/proc`` around the child. Every pull is checked sha256-equal to the
original files. ``--stack`` gives each side a full stack instead (Postgres, Redis, a Celery worker,
``weed mini`` as the S3 store; the API's CPU is counted, not the S3 server's). The API's peak RSS
during the pulls is read from ``/proc`` (``VmHWM``, reset before the first pull) above its RSS before
them.

    python benchmarks/pull_speed.py --size-mib 256 --shards 4 --data /tmp/pull-data \\
        --side main=/tmp/main-tree --side branch= --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PULL = """
import json, resource, sys, time
from deltazoo import Client
url, cache, name, dest = sys.argv[1:5]
with Client(url, cache_dir=cache) as c:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    c.pull(name, dest or None, quiet=True)
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": t1 - t0, "cpu": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)}))
"""

PUSH = """
import sys
from deltazoo import Client
url, base, ft = sys.argv[1:4]
with Client(url) as c:
    c.push(base, "bench/base", quiet=True, wait=True)
    c.push(ft, "bench/ft", base="bench/base@1", quiet=True, wait=True)
"""


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


@dataclass
class Side:
    name: str
    env: dict[str, str]  # of its server processes and its SDK's (PYTHONPATH; DELTAZOO_TOKEN on a stack)
    url: str = ""
    api_pid: int = 0
    figures: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def side_env(root: str) -> dict[str, str]:
    return {"PYTHONPATH": root} if root else {}


def run_pull(
    env: dict[str, str], url: str, cache: Path, name: str, dest: Path | None
) -> subprocess.CompletedProcess[str]:
    """One pull by the SDK of the side whose environment is ``env`` (a child process)."""
    argv = [sys.executable, "-c", PULL, url, str(cache), name, str(dest or "")]
    # run outside the repository: `python -c` puts the working folder first on sys.path, which would
    # import the checkout's SDK instead of the side's
    return subprocess.run(argv, env=env, capture_output=True, text=True, cwd=cache.parent)


def children_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def main() -> int:
    from benchmarks.memory import peak_rss_mib
    from benchmarks.throughput import make_pair, tree_sha256
    from tests.servers import own_stack, start_api_server

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "deltazoo-throughput")
    parser.add_argument("--side", action="append", default=[], help="NAME=ROOT (ROOT empty: installed tree)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", default=["cold", "delta"], choices=["cold", "delta"])
    parser.add_argument(
        "--stack",
        action="store_true",
        help="each side a full stack (Postgres, Redis db 10 + its index after TEST_REDIS_DB_BASE, one "
        "Celery worker, weed mini as S3) instead of the embedded default",
    )
    args = parser.parse_args()
    sides = [Side(n, side_env(r)) for n, _, r in (s.partition("=") for s in args.side or ["this="])]
    pair = make_pair(args.data, args.size_mib, "bf16", args.shards, args.seed)
    ft_files = sorted((pair / "ft").glob("*.safetensors"))
    want = tree_sha256(pair / "ft")
    zstd_rows: list[dict[str, float]] = []
    loads: list[float] = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="pull-speed-") as tmp:
        work = Path(tmp)
        packed = [work / f"{i}.zst" for i in range(len(ft_files))]
        for src, dst in zip(ft_files, packed, strict=True):
            subprocess.run(["zstd", "-q", "-f", "-3", "-T2", str(src), "-o", str(dst)], check=True)
        with ExitStack() as servers:
            for index, side in enumerate(sides):
                settings = {"DELTAZOO_TENSOR_CACHE_MB": "64", **side.env}
                if args.stack:
                    stack = servers.enter_context(own_stack(work / side.name, 10 + index, settings))
                    side.url, side.api_pid = stack.url, stack.api.process.pid
                    side.env["DELTAZOO_TOKEN"] = stack.admin_token
                else:
                    api = start_api_server(work / f"{side.name}-home", settings)
                    servers.callback(api.stop)
                    side.url, side.api_pid = api.url, api.process.pid
                subprocess.run(
                    [sys.executable, "-c", PUSH, side.url, str(pair / "base"), str(pair / "ft")],
                    env={**os.environ, **side.env},
                    check=True,
                    cwd=work,
                )
            idle = {s.name: peak_rss_mib(s.api_pid)[0] for s in sides}
            for s in sides:
                reset_peak_rss(s.api_pid)
            for rep in range(args.reps):
                before = children_cpu()
                start = time.perf_counter()
                for i, src in enumerate(packed):
                    subprocess.run(
                        ["zstd", "-q", "-f", "-d", str(src), "-o", str(work / f"{i}.raw")], check=True
                    )
                zstd_rows.append({"wall": time.perf_counter() - start, "cpu": children_cpu() - before})
                for p in work.glob("*.raw"):
                    p.unlink()
                order = sides if rep % 2 == 0 else sides[::-1]
                for kind in args.kinds:
                    for side in order:
                        pid = side.api_pid
                        cache, dest = work / f"cache-{side.name}-{rep}", work / f"out-{side.name}-{rep}"
                        env = {**os.environ, **side.env}
                        url = side.url

                        if kind == "delta":  # the base into the cache first, not timed
                            run_pull(env, url, cache, "bench/base@1", None).check_returncode()
                        server_before = process_cpu(pid)
                        proc = run_pull(env, url, cache, "bench/ft@1", dest)
                        server_cpu = process_cpu(pid) - server_before
                        if proc.returncode != 0:
                            raise RuntimeError(f"{side.name} {kind} pull failed:\n{proc.stderr[-3000:]}")
                        row = json.loads(proc.stdout.strip().splitlines()[-1])
                        row["server cpu"] = server_cpu
                        row["ratio"] = row["wall"] / zstd_rows[-1]["wall"]
                        if tree_sha256(dest) != {k: v for k, v in want.items()}:
                            raise RuntimeError(f"{side.name} {kind} pull differs from the original files")
                        side.figures.setdefault(kind, []).append(row)
                        shutil.rmtree(cache, ignore_errors=True)
                        shutil.rmtree(dest, ignore_errors=True)
                        print(json.dumps({"rep": rep, "side": side.name, "kind": kind, **row}), flush=True)
                loads.append(os.getloadavg()[0])
            peaks = {s.name: peak_rss_mib(s.api_pid)[1] for s in sides}

    def med(rows: list[dict[str, float]], key: str) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    mib = sum(p.stat().st_size for p in ft_files) / (1 << 20)
    lines = [
        f"{mib:.0f} MiB bf16 fine-tune in {len(ft_files)} files, {args.reps} repetitions, 1-minute load "
        f"average {min(loads):.1f}–{max(loads):.1f}; seconds, median (range):",
        "",
        "| what | wall | × `zstd -d` (same repetition) | client CPU | server CPU "
        "| server peak RSS above idle |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| `zstd -d` | {med(zstd_rows, 'wall')} | – | {med(zstd_rows, 'cpu')} | – | – |",
    ]
    for kind in args.kinds:
        for side in sides:
            rows = side.figures[kind]
            lines.append(
                f"| {kind} pull, {side.name} | {med(rows, 'wall')} | {med(rows, 'ratio')} | "
                f"{med(rows, 'cpu')} | {med(rows, 'server cpu')} | "
                f"+{peaks[side.name] - idle[side.name]:.0f} MiB |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
