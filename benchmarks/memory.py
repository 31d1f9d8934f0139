"""Peak memory of the server while a large checkpoint family goes through it (push and pull).

Builds a synthetic bf16 base and fine-tune (``--tensors`` tensors of ``--rows`` x ``--cols`` each,
written tensor by tensor under a temporary directory and deleted afterwards), starts the API (and, with
``--stack``, a Celery worker on Postgres, Redis and a local ``weed mini`` S3 server), pushes base and
fine-tune with the SDK, pulls both back (sha256-checked), and reads each server process's peak
resident memory (``VmHWM`` in /proc/<pid>/status). Writes benchmarks/results/memory.md.

    python benchmarks/memory.py                    # embedded: API with in-process jobs
    python benchmarks/memory.py --stack            # API + Celery worker + Postgres + Redis + S3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tensor_bf16(index: int, rows: int, cols: int, finetune: bool) -> bytes:
    """Tensor ``index`` of the base (normal, std 0.02), or of the fine-tune (base + small noise)."""
    rng = np.random.default_rng(index)
    values = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
    values = _round_bf16(values)
    if finetune and index % 8 != 7:  # every 8th tensor is left unchanged (stored "same")
        noise = np.random.default_rng(10_000 + index).standard_normal((rows, cols), dtype=np.float32)
        values = _round_bf16(values + noise * 2e-4)
    return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def _round_bf16(x: np.ndarray) -> np.ndarray:
    bits = x.view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def write_checkpoint(directory: Path, tensors: int, rows: int, cols: int, finetune: bool) -> Path:
    """A safetensors file written tensor by tensor (memory: one tensor), plus a config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    nbytes = rows * cols * 2
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i in range(tensors):
        header[f"layers.{i}.weight"] = {
            "dtype": "BF16",
            "shape": [rows, cols],
            "data_offsets": [i * nbytes, (i + 1) * nbytes],
        }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with (directory / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for i in range(tensors):
            f.write(tensor_bf16(i, rows, cols, finetune))
    (directory / "config.json").write_text(json.dumps({"architectures": ["Synthetic"], "hidden_size": cols}))
    return directory


def file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(current VmRSS, peak VmHWM) of ``pid`` in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (the Celery worker runs its task in its own process with --pool solo)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            pids += process_tree(int(child))
    return pids


@contextmanager
def servers(stack: bool, root: Path, extra: dict[str, str]) -> Iterator[dict[str, object]]:
    from tests.servers import own_stack, start_api_server

    if not stack:
        api = start_api_server(root / "home", extra)
        try:
            processes = {"API (embedded, jobs in-process)": api.process.pid}
            yield {"url": api.url, "token": None, "processes": processes}
        finally:
            api.stop()
        return
    with own_stack(root, broker_db=15, extra_env=extra) as deployed:  # 15: no db the test suite uses
        yield {
            "url": deployed.url,
            "token": deployed.admin_token,
            "processes": {"API": deployed.api.process.pid, "Celery worker": deployed.worker.pid},
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--stack", action="store_true", help="full stack instead of the embedded server")
    parser.add_argument("--cache-mb", type=int, default=None, help="DELTAZOO_TENSOR_CACHE_MB of the servers")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.md")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()

    from deltazoo.client import Client

    root = Path(tempfile.mkdtemp(prefix="deltazoo-memory-", dir=args.workdir))
    tensor_mib = args.rows * args.cols * 2 / 2**20
    try:
        t0 = time.perf_counter()
        base = write_checkpoint(root / "base", args.tensors, args.rows, args.cols, finetune=False)
        tune = write_checkpoint(root / "ft", args.tensors, args.rows, args.cols, finetune=True)
        size_mib = (base / "model.safetensors").stat().st_size / 2**20
        print(f"wrote 2 checkpoints of {size_mib:.0f} MiB in {time.perf_counter() - t0:.0f} s", flush=True)
        extra = {} if args.cache_mb is None else {"DELTAZOO_TENSOR_CACHE_MB": str(args.cache_mb)}
        with servers(args.stack, root / "srv", extra) as handle:
            pids: dict[str, int] = handle["processes"]  # type: ignore[assignment]
            idle = {name: peak_rss_mib(pid)[0] for name, pid in pids.items()}
            timings = {}
            with Client(str(handle["url"]), token=handle["token"], cache_dir=root / "cache") as client:  # type: ignore[arg-type]
                for label, directory, push_base in (("base", base, None), ("ft", tune, "mem/base@1")):
                    t0 = time.perf_counter()
                    client.push(directory, f"mem/{label}", base=push_base, quiet=True)
                    timings[f"push {label}"] = time.perf_counter() - t0
                for label, directory in (("base", base), ("ft", tune)):
                    t0 = time.perf_counter()
                    pulled = client.pull(f"mem/{label}", root / "pulled" / label, quiet=True)
                    timings[f"pull {label}"] = time.perf_counter() - t0
                    same = file_sha(pulled / "model.safetensors") == file_sha(directory / "model.safetensors")
                    if not same:
                        raise SystemExit(f"pulled {label} is not bit-exact")
                    shutil.rmtree(root / "pulled" / label, ignore_errors=True)
                    shutil.rmtree(root / "cache", ignore_errors=True)
                stats = client.stats()
            peaks = {name: max(peak_rss_mib(p)[1] for p in process_tree(pid)) for name, pid in pids.items()}
        report(args, tensor_mib, size_mib, idle, peaks, timings, stats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(args, tensor_mib, size_mib, idle, peaks, timings, stats) -> None:  # type: ignore[no-untyped-def]
    mode = "full stack (API + Celery worker, Postgres, Redis, weed mini S3)" if args.stack else "embedded"
    cache = "default" if args.cache_mb is None else f"{args.cache_mb} MiB"
    mode += f", tensor cache {cache}"
    lines = [
        f"## Peak memory, {mode}",
        "",
        f"Command: `python benchmarks/memory.py{' --stack' if args.stack else ''}"
        f"{'' if args.cache_mb is None else f' --cache-mb {args.cache_mb}'} --tensors {args.tensors} "
        f"--rows {args.rows} --cols {args.cols}` on {platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        f"- checkpoints: bf16 base and fine-tune, {args.tensors} tensors each, largest tensor "
        f"{tensor_mib:.0f} MiB, file {size_mib:.0f} MiB each; every 8th tensor unchanged",
        f"- stored {stats.stored_bytes / 2**20:.0f} MiB for {stats.logical_bytes / 2**20:.0f} MiB logical",
        "- " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        "",
        "| process | RSS idle (MiB) | peak RSS VmHWM (MiB) | peak - idle (MiB) | in largest tensors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, peak in peaks.items():
        grow = peak - idle[name]
        lines.append(f"| {name} | {idle[name]:.0f} | {peak:.0f} | {grow:.0f} | {grow / tensor_mib:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = args.out.read_text() if args.out.exists() else "# Server memory (benchmarks/memory.py)\n"
    marker = f"## Peak memory, {mode}"
    kept = old.split(marker)[0].rstrip() + "\n\n" if marker in old else old.rstrip() + "\n\n"
    args.out.write_text(kept + text)


if __name__ == "__main__":
    sys.exit(main())
