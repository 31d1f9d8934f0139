"""ELF (format 7, ``--retain lossy``) against the exact F32 coder (format 6) on a float32 zoo: ratio, the
largest error, and the bits-per-byte change of each model on the held-out texts.

    python -P benchmarks/elf.py ZOO_DIR [--chars 40000] [--texts DIR] [--out benchmarks/results/elf.md]

ZOO_DIR is what ``benchmarks/build_zoo.py OUT --dtype float32`` writes (base/, coder/, writer/,
coder-chain/, f32-of-bf16/, base-bf16/, each with model.safetensors, config.json, a fine-tune's
parent.txt; eval_code.txt, eval_docs.txt). Per model (every tensor of model.safetensors through
``compression.codecs``): bytes of the file, of exact format 6 plain, of exact format 6 delta against its
parent (fine-tunes), of ELF; the largest |original − ELF| over its F32 weights (the bound is 2⁻²⁴); then
bpb of the model as pushed and as ELF serves it, on the first ``--chars`` characters of each text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deltazoo.compression import elf32  # noqa: E402
from deltazoo.compression.codecs import encode_tensor  # noqa: E402
from deltazoo.compression.quality import bits_per_byte, build_causal_lm  # noqa: E402

from benchmarks.exact import read_safetensors  # noqa: E402

Tensors = dict[str, tuple[str, list[int], bytes]]
TORCH = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}


def coded_bytes(tensors: Tensors, parents: Tensors | None, lossy: bool) -> int:
    total = 0
    for name, (dtype, shape, raw) in tensors.items():
        parent = parents.get(name) if parents else None
        args = (parent[2], parent[0], parent[1]) if parent else ()
        total += len(encode_tensor(raw, dtype, shape, *args, lossy=lossy).payload)
    return total


def served(tensors: Tensors) -> Tensors:
    return {n: (d, s, elf32.served(r) if d == "F32" else r) for n, (d, s, r) in tensors.items()}


def max_error(tensors: Tensors) -> float:
    worst = 0.0
    for dtype, _, raw in tensors.values():
        if dtype != "F32":
            continue
        a = np.frombuffer(raw, np.float32).astype(np.float64)
        b = np.frombuffer(elf32.served(raw), np.float32).astype(np.float64)
        finite = np.isfinite(a)
        worst = max(worst, float(np.abs(a[finite] - b[finite]).max(initial=0.0)))
    return worst


def state_dict(tensors: Tensors) -> dict[str, torch.Tensor]:
    return {
        n: torch.frombuffer(bytearray(r), dtype=TORCH[d]).reshape(s).float()
        for n, (d, s, r) in tensors.items()
    }


def run(zoo: Path, chars: int, text_dir: Path) -> str:
    found = sorted(text_dir.glob("eval_*.txt")) if chars else []  # --chars 0: ratios only
    texts = {p.stem: p.read_text(errors="replace")[:chars] for p in found}
    lines = [
        "| model (parent) | file MB | exact plain | exact delta | ELF | ELF vs exact plain"
        " | ELF vs exact delta | max error | " + " | ".join(f"bpb {t} exact → ELF (Δ)" for t in texts) + " |",
        "| --- " * (8 + len(texts)) + "|",
    ]
    folders = sorted(p for p in zoo.iterdir() if (p / "model.safetensors").exists())
    for folder in folders:
        data, _, tensors = read_safetensors(folder / "model.safetensors")
        if not any(d == "F32" for d, _, _ in tensors.values()):
            continue
        named = folder / "parent.txt"
        parent_name = named.read_text().strip() if named.exists() else None
        parents = read_safetensors(zoo / parent_name / "model.safetensors")[2] if parent_name else None
        plain = coded_bytes(tensors, None, lossy=False)
        delta = coded_bytes(tensors, parents, lossy=False) if parents else None
        elf = coded_bytes(tensors, None, lossy=True)
        config = json.loads((folder / "config.json").read_text())
        bpbs = []
        for text in texts.values():
            exact = bits_per_byte(build_causal_lm(config, state_dict(tensors)), None, text)
            lossy = bits_per_byte(build_causal_lm(config, state_dict(served(tensors))), None, text)
            bpbs.append(f"{exact:.5f} → {lossy:.5f} ({lossy - exact:+.1e})")
        mb = len(data) / 1e6
        lines.append(
            f"| {folder.name} ({parent_name or '-'}) | {mb:.2f} | {len(data) / plain:.3f} |"
            f" {f'{len(data) / delta:.3f}' if delta else '-'} | {len(data) / elf:.3f} | {plain / elf:.3f}× |"
            f" {f'{delta / elf:.3f}×' if delta else '-'} | {max_error(tensors):.2e} | "
            + " | ".join(bpbs)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--chars", type=int, default=40_000, help="characters of each text to score (0: no bpb)")
    ap.add_argument("--texts", type=Path, help="folder of the eval_*.txt texts (default: ZOO_DIR)")
    ap.add_argument("--out", type=Path, help="also write the table and the command to this markdown file")
    args = ap.parse_args()
    table = run(args.zoo, args.chars, args.texts or args.zoo)
    print(table)
    if args.out:
        command = " ".join(["python", "-P", "benchmarks/elf.py", *sys.argv[1:]])
        args.out.write_text(f"`{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()
