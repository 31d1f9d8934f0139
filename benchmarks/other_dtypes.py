"""Do the dtypes beside BF16/F16/F32 need a coder of their own? Format 4 (``compression.exact_any``, what
deltazoo writes for them) against zstd on the same bytes, plain and as a fine-tune's delta.

    python benchmarks/other_dtypes.py ZOO_DIR [--tensors 4] [--out benchmarks/results/other_dtypes.md]

ZOO_DIR is a bf16 zoo (``/work/shared/zoo``: base/ and coder/). From the base's and the coder's first
``--tensors`` linear weights it derives, per dtype, what real checkpoints carry: F64 (the weights
widened, each value moved by relative noise of 1e-3 drawn apart for the two models, so that every
mantissa bit is used: models trained in double), F8_E4M3 / F8_E5M2 (weights × 40 cast, as fp8 checkpoints
with a per-tensor scale are), I8 and U8 (symmetric / asymmetric per-row quantization of the weights), I64
(position ids and a few-valued buffer), BOOL (a pruning mask, 50 % dense). Ratios are sizes of the whole
set of tensors of that dtype; "delta" codes the coder-derived tensor against the base-derived one (zstd:
of the XOR of their bytes). A coder is worth adding for a dtype only where zstd beats format 4 clearly
(last column above 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import zstandard
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deltazoo.compression.codecs import encode_tensor  # noqa: E402

COLUMNS = ("raw", "f4 plain", "zstd3", "zstd9", "f4 delta", "zstd3 xor", "zstd9 xor")
TYPES = {"F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def derive(w: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Tensors of every studied dtype from one bf16 weight matrix (deterministic per ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    x = w.float()
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    out = {"F64": x.double() * (1 + noise * 1e-3)}  # every mantissa bit used
    out["F8_E4M3"] = (x * 40).to(torch.float8_e4m3fn)
    out["F8_E5M2"] = (x * 40).to(torch.float8_e5m2)
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
    out["I8"] = (x / scale).round().clamp(-127, 127).to(torch.int8)
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    out["U8"] = ((x - lo) / (hi - lo).clamp(min=1e-8) * 255).round().to(torch.uint8)
    out["I64"] = torch.cat([torch.arange(x.shape[1]), (x[0] > 0).long() * 3])
    out["BOOL"] = x.abs() > x.abs().median()
    return out


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def code(t: torch.Tensor) -> str:
    name = {torch.int8: "I8", torch.uint8: "U8", torch.int64: "I64", torch.bool: "BOOL"}.get(t.dtype)
    return name or {v: k for k, v in TYPES.items()}[t.dtype]


def run(zoo: Path, tensors: int) -> str:
    base = load_file(zoo / "base" / "model.safetensors")
    tuned = load_file(zoo / "coder" / "model.safetensors")
    names = [n for n, t in base.items() if t.dim() == 2 and "embed" not in n][:tensors]
    sizes: dict[str, dict[str, int]] = {}
    z3, z9 = zstandard.ZstdCompressor(level=3), zstandard.ZstdCompressor(level=9)
    for i, name in enumerate(names):
        parents, children = derive(base[name], i), derive(tuned[name], 10_000 + i)  # noise apart
        for dt, child in children.items():
            parent = parents[dt]
            c, p = raw(child), raw(parent)
            shape = list(child.shape)
            xor = (np.frombuffer(c, np.uint8) ^ np.frombuffer(p, np.uint8)).tobytes()
            row = sizes.setdefault(dt, dict.fromkeys(COLUMNS, 0))
            row["raw"] += len(c)
            row["f4 plain"] += len(encode_tensor(c, code(child), shape, narrowing=False).payload)
            delta = encode_tensor(c, code(child), shape, p, code(parent), shape, narrowing=False)
            row["f4 delta"] += len(delta.payload)
            row["zstd3"] += len(z3.compress(c))
            row["zstd9"] += len(z9.compress(c))
            row["zstd3 xor"] += len(z3.compress(xor))
            row["zstd9 xor"] += len(z9.compress(xor))
    lines = [
        "| dtype | MB | format 4 plain | zstd-3 | zstd-9 | format 4 delta | zstd-3 XOR | zstd-9 XOR"
        " | best zstd / format 4: plain, delta |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dt, r in sizes.items():
        f = {k: r["raw"] / v for k, v in r.items() if k != "raw"}
        plain_gap = max(f["zstd3"], f["zstd9"]) / f["f4 plain"]
        delta_gap = max(f["zstd3 xor"], f["zstd9 xor"]) / f["f4 delta"]
        lines.append(
            f"| {dt} | {r['raw'] / 1e6:.2f} | {f['f4 plain']:.3f} | {f['zstd3']:.3f} | {f['zstd9']:.3f} |"
            f" {f['f4 delta']:.3f} | {f['zstd3 xor']:.3f} | {f['zstd9 xor']:.3f} |"
            f" {plain_gap:.3f}, {delta_gap:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--tensors", type=int, default=4, help="linear weights to derive from (first N)")
    ap.add_argument("--out", type=Path, help="also write the table and the command to this markdown file")
    args = ap.parse_args()
    table = run(args.zoo, args.tensors)
    print(table)
    if args.out:
        args.out.write_text(f"`python benchmarks/other_dtypes.py {' '.join(sys.argv[1:])}`\n\n{table}\n")


if __name__ == "__main__":
    main()
