"""Server memory of a small Range read from one very large tensor (and of encoding it).

Writes a bf16 base and fine-tune (delta of the base) made of one ``--rows`` x ``--cols`` tensor each
(2 GiB by default, generated block by block so this script never holds it), starts the embedded server
(``DELTAZOO_TENSOR_CHUNK_MB`` = ``--chunk-mb``), pushes both with the SDK and reads the API process's
memory from /proc: the peak while pushing and encoding (``VmHWM``), then, after resetting the peak
(``/proc/<pid>/clear_refs``), the growth caused by one 16-byte Range read at the end of the fine-tune's
file, by three such reads in parallel, and by a whole streamed download (sha256-checked).

    python benchmarks/range_memory.py                       # 2 GiB tensor, chunks of 8 MiB
    python benchmarks/range_memory.py --rows 8192 --cols 16384 --chunk-mb 4096   # stored whole
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import peak_rss_mib  # noqa: E402

BLOCK_ROWS = 512


def _bf16(x: np.ndarray) -> np.ndarray:
    bits = x.view(np.uint32)
    return (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF).astype(np.uint16)


def write_checkpoint(path: Path, rows: int, cols: int, finetune: bool) -> str:
    """One-tensor bf16 safetensors file, block by block; returns its sha256."""
    header = {"w": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [0, rows * cols * 2]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        head = struct.pack("<Q", len(text)) + text
        f.write(head)
        digest.update(head)
        for block in range(0, rows, BLOCK_ROWS):
            n = min(BLOCK_ROWS, rows - block)
            values = np.random.default_rng(block).standard_normal((n, cols), dtype=np.float32) * 0.02
            if finetune:
                noise = np.random.default_rng(10**6 + block).standard_normal((n, cols), dtype=np.float32)
                values = values + noise * 2e-4
            data = _bf16(values).tobytes()
            f.write(data)
            digest.update(data)
    (path.parent / "config.json").write_text(json.dumps({"architectures": ["Synthetic"]}))
    return digest.hexdigest()


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=32768)
    parser.add_argument("--cols", type=int, default=32768)
    parser.add_argument("--chunk-mb", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "range_memory.md")
    args = parser.parse_args()

    from deltazoo.client import Client
    from tests.servers import start_api_server

    root = Path(tempfile.mkdtemp(prefix="deltazoo-range-", dir=args.workdir))
    tensor_mib = args.rows * args.cols * 2 / 2**20
    rows: list[str] = []
    try:
        t0 = time.perf_counter()
        write_checkpoint(root / "base" / "model.safetensors", args.rows, args.cols, finetune=False)
        ft_sha = write_checkpoint(root / "ft" / "model.safetensors", args.rows, args.cols, finetune=True)
        size = (root / "ft" / "model.safetensors").stat().st_size
        print(f"wrote 2 files of {size / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s", flush=True)
        env = {"DELTAZOO_TENSOR_CHUNK_MB": str(args.chunk_mb)}
        api = start_api_server(root / "home", env)
        try:
            pid = api.process.pid
            idle = peak_rss_mib(pid)[0]
            with Client(api.url, cache_dir=root / "cache") as client:
                t0 = time.perf_counter()
                client.push(root / "base", "mem/base", quiet=True)
                client.push(root / "ft", "mem/ft", base="mem/base@1", quiet=True)
                push_s = time.perf_counter() - t0
            now, peak = peak_rss_mib(pid)
            rows.append(f"| push + encode base and fine-tune | {idle:.0f} | {peak:.0f} | {peak - idle:.0f} |")
            print(rows[-1], f"({push_s:.0f} s)", flush=True)
            url = f"{api.url}/v1/models/mem/ft/versions/1/files/model.safetensors"
            with httpx.Client(timeout=3600) as http:
                reads = (
                    ("one 16-byte Range read at the end", [size - 16]),
                    ("three at other places, in parallel", [size // 4, size // 2, 3 * size // 4]),
                )
                for label, starts in reads:
                    before = peak_rss_mib(pid)[0]
                    reset_peak(pid)
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(len(starts)) as pool:
                        answers = list(
                            pool.map(
                                lambda a: http.get(url, headers={"Range": f"bytes={a}-{a + 15}"}), starts
                            )
                        )
                    took = time.perf_counter() - t0
                    assert all(r.status_code == 206 and len(r.content) == 16 for r in answers)
                    peak = peak_rss_mib(pid)[1]
                    rows.append(
                        f"| {label} ({took:.2f} s) | {before:.0f} | {peak:.0f} | {peak - before:.0f} |"
                    )
                    print(rows[-1], flush=True)
                before = peak_rss_mib(pid)[0]
                reset_peak(pid)
                digest = hashlib.sha256()
                with http.stream("GET", url) as r:
                    for piece in r.iter_bytes(1 << 20):
                        digest.update(piece)
                if digest.hexdigest() != ft_sha:
                    raise SystemExit("the streamed fine-tune is not bit-exact")
                peak = peak_rss_mib(pid)[1]
                rows.append(
                    f"| whole file streamed (sha256 exact) | {before:.0f} | {peak:.0f} "
                    f"| {peak - before:.0f} |"
                )
                print(rows[-1], flush=True)
        finally:
            api.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        f"## One {tensor_mib:.0f} MiB bf16 tensor, chunks of {args.chunk_mb} MiB, embedded server",
        "",
        f"Command: `python benchmarks/range_memory.py --rows {args.rows} --cols {args.cols} "
        f"--chunk-mb {args.chunk_mb}` on {platform.machine()}, {os.cpu_count()} CPUs "
        "(API process; VmHWM reset before each read).",
        "",
        "| step | RSS before (MiB) | peak RSS (MiB) | added (MiB) |",
        "| --- | --- | --- | --- |",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = args.out.read_text() if args.out.exists() else "# Range-read memory (benchmarks/range_memory.py)\n"
    args.out.write_text(old.rstrip() + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
