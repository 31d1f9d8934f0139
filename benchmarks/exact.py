"""Exact (lossless) coders side by side on a model zoo: ratio, compress and decompress MB/s per process.

    python benchmarks/exact.py ZOO_DIR [--out benchmarks/results/exact.md] [--repeat 3]

ZOO_DIR holds base/model.safetensors and one folder per fine-tune with its own model.safetensors. A
fine-tune's parent is base/, or the folder its parent.txt names (``build_zoo.py --dtype float32`` writes
them: a chain and an f32 fine-tune of a bf16 base); when any folder has a parent.txt, only those folders
are fine-tunes. For each fine-tune, in one run: zstd -3 on the file, ZipNN on the file, ZipNN on the XOR
with the parent file, BitX (XOR, high/low byte planes, zstd -3), and deltazoo's exact codec (delta against
the parent and plain, as written now, and with ``version=5``: F32 in format 4, as before format 6). A
parent tensor of a narrower float dtype is widened to the child's for the XOR peers (as they would).
Ratios are file bytes / coded bytes; MB/s are file bytes per second, wall clock and process CPU time
(best of --repeat runs, one process, one thread: the target is per core, and every peer runs one
thread). deltazoo's round trip is verified by
sha256 of the rebuilt file; ZipNN's is reported as it is found (it did not round-trip on the machine the
zoo's README was measured on).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deltazoo.compression.codecs import decode_tensor_into, encode_tensor  # noqa: E402

Tensors = dict[str, tuple[str, list[int], bytes]]


def read_safetensors(path: Path) -> tuple[bytes, bytes, Tensors]:
    """(whole file, header bytes, name -> (dtype, shape, raw bytes))."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    entries = sorted((v["data_offsets"], name, v) for name, v in header.items() if name != "__metadata__")
    tensors = {name: (v["dtype"], v["shape"], data[base + s : base + e]) for (s, e), name, v in entries}
    return data, data[: 8 + n], tensors


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """(best wall seconds, best CPU seconds of this process, the last result)."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, out


def xor_files(a: bytes, b: bytes) -> bytes:
    n = min(len(a), len(b))
    x = np.frombuffer(a[:n], np.uint8) ^ np.frombuffer(b[:n], np.uint8)
    return x.tobytes() + a[n:]


def unxor_in_place(buf: bytearray, base: np.ndarray) -> bytearray:
    """buf XOR base over their common length, written into buf (the rest of buf as is): xor_files undone."""
    x = np.frombuffer(buf, np.uint8)
    n = min(len(x), len(base))
    np.bitwise_xor(x[:n], base[:n], out=x[:n])
    return buf


def coders(base_file: bytes, base_t: Tensors, header: bytes, tensors: Tensors) -> dict[str, tuple]:
    """name -> (compress() -> payload, decompress(payload) -> bytes or None, verified?)."""
    # The base laid out like this file (tensor by tensor, in this file's order), so that XOR pairs
    # each element with its own parent element whatever order the two files store tensors in.
    base_file = header + b"".join(_parent_bytes(base_t.get(n), t) for n, t in tensors.items())
    base_np = np.frombuffer(base_file, np.uint8)
    z3 = zstandard.ZstdCompressor(level=3)
    dz = zstandard.ZstdDecompressor()

    def zipnn_pair(delta: bool) -> tuple:
        from zipnn import ZipNN

        zn = ZipNN(bytearray_dtype=_ZIPNN_DTYPES.get(dtype_of(tensors), "bfloat16"), threads=1)
        # ZipNN's decompress hands back the whole file in a bytearray of its own: no copy is charged
        # to it after that (no bytes(); the XOR with the base is undone in place, one pass), as
        # deltazoo's decode writes every tensor into one buffer of the file (no join after it).
        if delta:
            return (
                lambda f: zn.compress(xor_files(f, base_file)),  # a fresh buffer: ZipNN may write into it
                lambda p: unxor_in_place(zn.decompress(p), base_np),
            )
        # ZipNN's compress writes into the buffer it is given: hand it a copy, never the file itself.
        return (lambda f: zn.compress(bytearray(f)), lambda p: zn.decompress(p))

    def bitx_c(f: bytes) -> tuple[bytes, bytes]:
        x = np.frombuffer(xor_files(f, base_file)[: len(f) // 2 * 2], "<u2")
        return z3.compress((x >> 8).astype(np.uint8)), z3.compress((x & 0xFF).astype(np.uint8))

    def bitx_d(p: tuple[bytes, bytes]) -> bytes:
        x = np.frombuffer(dz.decompress(p[0]), np.uint8).astype("<u2") << 8
        x |= np.frombuffer(dz.decompress(p[1]), np.uint8)
        return xor_files(x.tobytes(), base_file)

    def deltazoo(use_parent: bool, version: int = 6) -> tuple:
        def enc(_f: bytes) -> list:
            out = [z3.compress(header)]
            for name, (dtype, shape, raw) in tensors.items():
                parent = base_t.get(name) if use_parent else None
                args = (parent[2], parent[0], parent[1]) if parent else (None, None, None)
                out.append(encode_tensor(raw, dtype, shape, *args, version=version))
            return out

        def dec(parts: list) -> np.ndarray:
            # Each tensor decoded into its own bytes of one buffer of the whole file (``decode_tensor_into``),
            # as ZipNN's decompress hands back one buffer: no bytes joined after the decode. The buffer is
            # not zeroed first (np.empty; bytearray(n) would write every byte once more).
            head = dz.decompress(parts[0])
            out = np.empty(len(head) + sum(len(raw) for _, _, raw in tensors.values()), np.uint8)
            view = memoryview(out)
            view[: len(head)] = head
            at = len(head)
            for (name, (dtype, shape, raw)), e in zip(tensors.items(), parts[1:], strict=True):
                parent = base_t.get(name) if use_parent else None
                args = (parent[2], parent[0], parent[1]) if parent else (None, None, None)
                decode_tensor_into(view[at : at + len(raw)], e.encoding, e.payload, dtype, shape, *args)
                at += len(raw)
            return out

        return enc, dec

    return {
        "zstd -3 on the file": (z3.compress, dz.decompress),
        "ZipNN on the file": zipnn_pair(False),
        "ZipNN on the XOR with base": zipnn_pair(True),
        "BitX (XOR, byte planes, zstd -3)": (bitx_c, bitx_d),
        "deltazoo plain (no parent)": deltazoo(False),
        "deltazoo delta vs parent": deltazoo(True),
        "deltazoo plain, version 5 (F32 in format 4)": deltazoo(False, version=5),
        "deltazoo delta, version 5 (F32 in format 4)": deltazoo(True, version=5),
    }


def _parent_bytes(parent: tuple[str, list[int], bytes] | None, child: tuple[str, list[int], bytes]) -> bytes:
    """The parent tensor's bytes in the child's dtype when they pair element for element, else zeros."""
    if parent is None or parent[1] != child[1]:
        return bytes(len(child[2]))
    if parent[0] == child[0]:
        return parent[2]
    if (parent[0], child[0]) == ("BF16", "F32"):
        return (np.frombuffer(parent[2], "<u2").astype("<u4") << 16).tobytes()
    if (parent[0], child[0]) == ("F16", "F32"):
        return np.frombuffer(parent[2], "<f2").astype("<f4").tobytes()
    return bytes(len(child[2]))


_ZIPNN_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def dtype_of(tensors: Tensors) -> str:
    """The file's most common dtype by bytes (what ZipNN is told the bytes are)."""
    weight: dict[str, int] = {}
    for dtype, _, raw in tensors.values():
        weight[dtype] = weight.get(dtype, 0) + len(raw)
    return max(weight, key=lambda d: weight[d]) if weight else "BF16"


def size_of(payload: object) -> int:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return len(payload)
    if isinstance(payload, tuple):
        return sum(size_of(p) for p in payload)
    return len(payload[0]) + sum(len(e.payload) for e in payload[1:])  # deltazoo: header + tensors


def fine_tunes(zoo: Path) -> list[tuple[Path, str]]:
    """(fine-tune folder, parent folder name)."""
    folders = sorted(p for p in zoo.iterdir() if p.is_dir() and (p / "model.safetensors").exists())
    if any((p / "parent.txt").exists() for p in folders):
        return [(p, (p / "parent.txt").read_text().strip()) for p in folders if (p / "parent.txt").exists()]
    return [(p, "base") for p in folders if p.name != "base"]


def run(zoo: Path, repeat: int) -> str:
    lines = [
        "| fine-tune | coder | ratio | compress MB/s (wall / CPU) | decompress MB/s (wall / CPU)"
        " | round trip |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for folder, parent in fine_tunes(zoo):
        base_file, _, base_t = read_safetensors(zoo / parent / "model.safetensors")
        data, header, tensors = read_safetensors(folder / "model.safetensors")
        digest = hashlib.sha256(data).hexdigest()
        for name, (enc, dec) in coders(base_file, base_t, header, tensors).items():
            tc, cc, payload = best_time(lambda enc=enc, data=data: enc(data), repeat)
            try:
                td, cd, out = best_time(lambda dec=dec, payload=payload: dec(payload), repeat)
                ok = hashlib.sha256(bytes(out)).hexdigest() == digest
                dspeed = f"{len(data) / td / 1e6:.0f} / {len(data) / cd / 1e6:.0f}"
            except Exception as exc:  # a peer's failure is a finding, not a crash of the benchmark
                ok, dspeed = False, f"failed: {type(exc).__name__}"
            ratio = len(data) / size_of(payload)
            check = "sha256 ok" if ok else "MISMATCH"
            lines.append(
                f"| {folder.name} (parent {parent}) | {name} | {ratio:.3f} | {len(data) / tc / 1e6:.0f} /"
                f" {len(data) / cc / 1e6:.0f} | {dspeed} | {check} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--out", type=Path, help="also write the table and the command to this markdown file")
    ap.add_argument("--repeat", type=int, default=3, help="timing runs per coder (best is kept)")
    args = ap.parse_args()
    table = run(args.zoo, args.repeat)
    print(table)
    if args.out:
        cmd = "python benchmarks/exact.py " + " ".join(sys.argv[1:])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "## Exact tensor coding\n\n"
            f"Command: `{cmd}`\n\n"
            "Ratio = file bytes / coded bytes; MB/s = file bytes per second, one process, best of "
            f"{args.repeat}: wall clock, and CPU time of the process (steadier on a shared machine).\n\n"
            f"Load average when it ran: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
