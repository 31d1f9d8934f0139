"""A bounded load on a loopback server: concurrent pushes and pulls, next to raw object-store I/O of the
same bytes, and the latency of the metadata endpoints.

Starts the API (embedded default, or ``--stack``: API + Celery worker on Postgres, Redis and a local
``weed mini`` S3 server), pushes one synthetic bf16 base, then ``--finetunes`` fine-tunes of it from
``--clients`` threads with the SDK (each push waits until the version is ready), pulls them all back
from as many threads (sha256-checked), writes and reads the same bytes straight to the object store
(the local object directory, or the same S3 server), and times ``--requests`` sequential requests to
each metadata endpoint. Writes benchmarks/results/load.md.

    python benchmarks/load.py                      # embedded
    python benchmarks/load.py --stack              # full stack
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """A safetensors file of bf16 tensors given as uint16 arrays."""
    header: dict[str, object] = {}
    offset = 0
    for name, t in tensors.items():
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t.tobytes() for t in tensors.values())


def bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def family(count: int, tensors: int, rows: int, cols: int) -> list[bytes]:
    """A base and ``count`` fine-tunes of it (small noise on every tensor but the last)."""
    rng = np.random.default_rng(0)
    shape = (rows, cols)
    base = {f"layers.{i}.weight": rng.standard_normal(shape, dtype=np.float32) * 0.02 for i in range(tensors)}
    out = [safetensors_bytes({k: bf16(v) for k, v in base.items()})]
    for j in range(count):
        noise = np.random.default_rng(1 + j)
        tuned = {
            k: bf16(v + noise.standard_normal(shape, dtype=np.float32) * 2e-4) if i < tensors - 1 else bf16(v)
            for i, (k, v) in enumerate(base.items())
        }
        out.append(safetensors_bytes(tuned))
    return out


@contextmanager
def server(stack: bool, root: Path) -> Iterator[tuple[str, str | None, object]]:
    """(url, token, object store) of a running server."""
    from deltazoo.registry.objectstore import LocalObjectStore, S3ObjectStore

    from tests.servers import own_stack, start_api_server

    if not stack:
        api = start_api_server(root / "home", {})
        try:
            yield api.url, None, LocalObjectStore(root / "raw-objects")
        finally:
            api.stop()
        return
    with own_stack(root, broker_db=15) as deployed:  # 15: no db the test suite uses
        s3 = deployed.s3
        raw = S3ObjectStore(s3.endpoint, s3.access_key, s3.secret_key, "raw-baseline")
        yield deployed.url, deployed.admin_token, raw


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--finetunes", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--requests", type=int, default=200, help="per metadata endpoint")
    parser.add_argument("--stack", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.md")
    args = parser.parse_args()

    from deltazoo.client import Client

    files = family(args.finetunes, args.tensors, args.rows, args.cols)
    size = len(files[0])
    with tempfile.TemporaryDirectory(prefix="deltazoo-load-") as tmp:
        root = Path(tmp)
        for i, data in enumerate(files):
            (root / f"ckpt{i}").mkdir()
            (root / f"ckpt{i}" / "model.safetensors").write_bytes(data)
        with server(args.stack, root / "srv") as (url, token, store):

            def client() -> Client:
                return Client(url, token=token, cache_dir=root / "cache" / os.urandom(4).hex())

            with client() as c:
                c.push(root / "ckpt0", "load/base", quiet=True)

            def push(i: int) -> None:
                with client() as c:
                    c.push(root / f"ckpt{i}", f"load/ft{i}", base="load/base@1", quiet=True)

            def pull(i: int) -> None:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                digest = hashlib.sha256()
                with httpx.stream(
                    "GET", f"{url}/v1/models/load/ft{i}/versions/1/files/model.safetensors",
                    headers=headers, timeout=120,
                ) as r:
                    r.raise_for_status()
                    for chunk in r.iter_bytes(1 << 20):
                        digest.update(chunk)
                if digest.hexdigest() != hashlib.sha256(files[i]).hexdigest():
                    raise SystemExit(f"pull of load/ft{i} is not bit-exact")

            def raw_put(i: int) -> None:
                store.put_bytes(f"raw/{i}", files[i])  # type: ignore[attr-defined]

            def raw_get(i: int) -> None:
                if store.get(f"raw/{i}") != files[i]:  # type: ignore[attr-defined]
                    raise SystemExit("raw object store read back other bytes")

            tunes = list(range(1, args.finetunes + 1))
            rates = {}
            for label, fn in (("push (upload + encode)", push), ("pull", pull), ("raw put", raw_put),
                              ("raw get", raw_get)):
                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    list(pool.map(fn, tunes))
                seconds = time.perf_counter() - t0
                rates[label] = (seconds, size * len(tunes) / seconds / 2**20)

            headers = {"Authorization": f"Bearer {token}"} if token else {}
            endpoints = ["/v1/models", "/v1/models/load/ft1/versions/1", "/v1/models/load/base/lineage",
                         "/v1/stats"]
            latency = {}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                for path in endpoints:
                    times = []
                    for _ in range(args.requests):
                        t0 = time.perf_counter()
                        http.get(path).raise_for_status()
                        times.append((time.perf_counter() - t0) * 1000)
                    latency[path] = times
                stats = http.get("/v1/stats").json()
    write(args, size, rates, latency, stats)
    return 0


def write(args, size, rates, latency, stats) -> None:  # type: ignore[no-untyped-def]
    mode = "full stack (API + Celery worker, Postgres, Redis, weed mini S3)" if args.stack else "embedded"
    raw = "the same S3 server (minio client)" if args.stack else "a local object directory (fsync + rename)"
    flags = f"--finetunes {args.finetunes} --clients {args.clients} --tensors {args.tensors} "
    flags += f"--rows {args.rows} --cols {args.cols} --requests {args.requests}"
    lines = [
        f"## Load, {mode}",
        "",
        f"Command: `python benchmarks/load.py{' --stack' if args.stack else ''} {flags}` "
        f"on {platform.machine()}, {os.cpu_count()} CPUs, loopback.",
        "",
        f"- {args.finetunes} bf16 fine-tunes of one base, {size / 2**20:.1f} MiB each, {args.clients} client "
        f"threads; raw = {raw}, same bytes, same threads",
        f"- stored {stats['stored_bytes'] / 2**20:.1f} MiB for "
        f"{stats['logical_bytes'] / 2**20:.1f} MiB logical",
        "",
        "| operation | wall (s) | MiB/s |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {s:.2f} | {r:.1f} |" for k, (s, r) in rates.items()]
    lines += ["", f"Metadata latency, {args.requests} sequential requests each:", "",
              "| endpoint | p50 (ms) | p99 (ms) | mean (ms) |", "| --- | --- | --- | --- |"]
    for path, times in latency.items():
        lines.append(
            f"| GET {path} | {percentile(times, 0.5):.1f} | {percentile(times, 0.99):.1f} | "
            f"{statistics.fmean(times):.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    marker = f"## Load, {mode}"
    old = args.out.read_text() if args.out.exists() else "# Load (benchmarks/load.py)\n"
    kept = old.split(marker)[0].rstrip() + "\n\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(kept + text)


if __name__ == "__main__":
    sys.exit(main())
