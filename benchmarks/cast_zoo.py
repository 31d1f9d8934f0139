"""A zoo's checkpoints saved in another float dtype (what many published checkpoints are: bf16 weights
stored as f16 or f32), to measure the exact coders on it.

    python benchmarks/cast_zoo.py ZOO_DIR OUT_DIR --dtype float32
    python benchmarks/exact.py OUT_DIR --repeat 5

Copies every model folder of ZOO_DIR (base and fine-tunes) with each model.safetensors cast to
``--dtype`` (torch casts, round to nearest even; config files copied as they are). ``--jitter S``
multiplies every weight by 1 + N(0, S²) first, drawn anew for each model (seeded by model and tensor
name), so that f32 copies fill their low mantissa bits like weights trained in f32 would, and every
weight of a fine-tune differs from its base by about S relative (as after a full f32 fine-tune).
"""

from __future__ import annotations

import argparse
import shutil
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "float64", "bfloat16"])
    ap.add_argument("--jitter", type=float, default=0.0, help="relative N(0, S^2) factor on every weight")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    for folder in sorted(p for p in args.zoo.iterdir() if (p / "model.safetensors").exists()):
        dest = args.out / folder.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            if f.is_file() and f.name != "model.safetensors":
                shutil.copyfile(f, dest / f.name)
        state = load_file(folder / "model.safetensors")
        out = {}
        for name, value in state.items():
            if args.jitter:
                g = torch.Generator().manual_seed(zlib.crc32(f"{folder.name}/{name}".encode()))
                factor = 1 + torch.randn(value.shape, generator=g, dtype=torch.float64) * args.jitter
                value = value.double() * factor
            out[name] = value.to(dtype).contiguous()
        save_file(out, dest / "model.safetensors")
        print(f"{dest / 'model.safetensors'}: {args.dtype}")


if __name__ == "__main__":
    main()
