"""Two measurements behind benchmarks/results/memory.md.

1. The exact codec's working memory on one bf16 tensor (tracemalloc peak, in tensor sizes) for
   ``encode_tensor`` (plain and delta) and ``decode_tensor``.
2. What glibc keeps after 4 threads each encode and decode 3 tensors, twice, with and without
   registry/memory.py's malloc settings (each in a fresh process): VmHWM and VmRSS afterwards.

    python benchmarks/memory_codec.py [--rows 2048 --cols 4096]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deltazoo.compression.codecs import decode_tensor, encode_tensor  # noqa: E402

from benchmarks.memory import tensor_bf16  # noqa: E402


def codec_peaks(rows: int, cols: int) -> None:
    size = rows * cols * 2
    shape = [rows, cols]
    base = tensor_bf16(0, rows, cols, False)
    tuned = tensor_bf16(0, rows, cols, True)
    tracemalloc.start()
    for label, raw, parent in (("plain", base, None), ("delta", tuned, base)):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        pdtype, pshape = ("BF16", shape) if parent is not None else (None, None)
        enc = encode_tensor(raw, "BF16", shape, parent, pdtype, pshape)
        encode_peak = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        uses = enc.encoding != "plain"
        decode_tensor(
            enc.encoding, enc.payload, "BF16", shape,
            parent if uses else None, pdtype if uses else None, pshape if uses else None,
        )
        decode_peak = tracemalloc.get_traced_memory()[1] - before
        print(
            f"{label} tensor {size / 2**20:.0f} MiB -> {enc.encoding}: "
            f"payload {len(enc.payload) / size:.2f} x, "
            f"encode peak {encode_peak / size:.1f} x, decode peak {decode_peak / size:.1f} x the tensor"
        )
    tracemalloc.stop()


def arena_run(bounded: bool, rows: int, cols: int) -> None:
    if bounded:
        from deltazoo.registry.memory import bound_heap

        bound_heap()
    shape = [rows, cols]

    def work(i: int) -> None:
        for j in range(3):
            raw = tensor_bf16(i * 10 + j, rows, cols, True)
            base = tensor_bf16(i * 10 + j, rows, cols, False)
            enc = encode_tensor(raw, "BF16", shape, base, "BF16", shape)
            decode_tensor(enc.encoding, enc.payload, "BF16", shape, base, "BF16", shape)

    for rnd in range(2):
        threads = [threading.Thread(target=work, args=(k + 4 * rnd,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    label = "with malloc settings" if bounded else "glibc defaults"
    print(f"{label}: peak {status['VmHWM'].strip()}, held after the work {status['VmRSS'].strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--arena", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arena:
        arena_run(args.arena == "on", args.rows, args.cols)
        return 0
    codec_peaks(args.rows, args.cols)
    for mode in ("off", "on"):
        argv = [sys.executable, __file__, "--arena", mode, "--rows", str(args.rows), "--cols", str(args.cols)]
        subprocess.run(argv, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
