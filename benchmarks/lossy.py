"""Lossy serving profiles against DARE and Magnitude at equal bytes, scored by bits-per-byte.

    python benchmarks/lossy.py ZOO_DIR --finetune coder --text eval_code.txt [--max-bytes 40000]
        [--calibration stdlib | FILE] [--calibration-bytes 40000]

ZOO_DIR holds base/ and the fine-tune folder (model.safetensors + config.json), as made by
benchmarks/build_zoo.py. Only the linear weights of the decoder layers are made lossy (embeddings,
lm_head and norms stay exact), and "bytes" counts those linear deltas only:

* deltadq: the packed container's tensors (k-bit values, in-group indices, fp16 scales, row padding);
* DARE / Magnitude: the counting rule of compression/baselines.py (kept values + the keep mask at its
  entropy bound), with a keep fraction solved per tensor so that each tensor's bytes equal those of
  the reference deltadq profile (``--reference``), or at the reference's drop rate with bf16 values.

Calibrated profiles (``fit=refit|gptq|obs``, ``select=obs|search``, ``alloc=sensitivity``) use input
Hessians collected by running the BASE model on the calibration text (never the evaluation text): a
file, or ``stdlib``, the first N characters of the 41st–60th ``*.py`` files of the Python standard
library (sorted by name).

Prints a Markdown table and writes it to benchmarks/results/lossy.md (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deltazoo.compression.baselines import dare, kept_for_budget, magnitude, sparse_bytes  # noqa: E402
from deltazoo.compression.calibration import collect_hessians  # noqa: E402
from deltazoo.compression.deltadq import build_artifact, is_packable, parse_profile  # noqa: E402
from deltazoo.compression.quality import bits_per_byte, build_causal_lm, gain_kept  # noqa: E402

PAPER = [
    "deltadq:n=1,m=32,bits=4", "deltadq:n=2,m=32,bits=4", "deltadq:n=1,m=16,bits=4",
    "deltadq:n=4,m=16,bits=4", "deltadq:n=1,m=32,bits=8", "deltadq:n=1,m=32,bits=2",
]
BEYOND = [
    "deltadq:n=1,m=32,bits=4,scale=row",
    "deltadq:n=1,m=32,bits=4,rescale=sum",
    "deltadq:n=1,m=32,bits=4,select=magnitude,rescale=sum",
    "deltadq:n=1,m=32,bits=4,scale=row,fit=lsq",
]
CALIBRATED = [
    "deltadq:n=1,m=32,bits=4,fit=refit", "deltadq:n=1,m=32,bits=4,fit=gptq",
    "deltadq:n=1,m=32,bits=4,fit=obs", "deltadq:n=1,m=32,bits=4,select=obs,fit=obs",
    "deltadq:n=1,m=32,bits=4,scale=row,fit=obs", "deltadq:n=1,m=32,bits=4,fit=obs,anchor=100",
    "deltadq:n=1,m=32,bits=4,fit=obs,anchor=1000",
]
ALLOCATED = [
    "deltadq:n=1,m=32,bits=4,select=importance", "deltadq:n=1,m=32,bits=4,select=importance,mix=30",
    "deltadq:n=1,m=32,bits=4,alloc=sensitivity",
    "deltadq:n=1,m=32,bits=4,select=importance,alloc=sensitivity",
    "deltadq:n=1,m=32,bits=4,select=search",
]

State = dict[str, torch.Tensor]


def _load(folder: Path) -> tuple[dict, State]:
    config = json.loads((folder / "config.json").read_text())
    return config, load_file(str(folder / "model.safetensors"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--finetune", default="coder")
    ap.add_argument("--base", default="base")
    ap.add_argument("--text", default="eval_code.txt", help="a file, or a name inside ZOO_DIR")
    ap.add_argument("--max-bytes", type=int, default=0, help="evaluate on the first N characters only")
    ap.add_argument("--reference", default="deltadq:n=1,m=32,bits=4", help="byte budget for the baselines")
    ap.add_argument("--profiles", nargs="*", default=None, help="deltadq profiles (default: paper + beyond)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lossy.md")
    ap.add_argument("--no-baselines", action="store_true", help="deltadq profiles only (no DARE/Magnitude)")
    ap.add_argument("--calibration", default="stdlib", help="'stdlib' or a file (not the eval text)")
    ap.add_argument("--calibration-bytes", type=int, default=40000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    text_path = args.text if Path(args.text).exists() else args.zoo / args.text
    text = Path(text_path).read_text(encoding="utf-8")
    if args.max_bytes:
        text = text[: args.max_bytes]
    config, base = _load(args.zoo / args.base)
    _, ft = _load(args.zoo / args.finetune)
    reference = parse_profile(args.reference)
    linear = [k for k in ft if is_packable(k, ft[k], base.get(k), reference)]
    bf16_bytes = sum(ft[k].numel() * 2 for k in linear)

    def bpb(state: State) -> float:
        return bits_per_byte(build_causal_lm(config, state), None, text, device=args.device)

    t0 = time.time()
    bpb_base, bpb_ft = bpb(base), bpb(ft)
    print(f"bpb: base {bpb_base:.4f}, {args.finetune} {bpb_ft:.4f}", flush=True)
    rows: list[tuple[str, int, float]] = []

    def linear_only(approx: Callable[[str], torch.Tensor]) -> State:
        return {**ft, **{k: approx(k) for k in linear}}

    profiles = args.profiles if args.profiles is not None else PAPER + BEYOND + CALIBRATED + ALLOCATED
    hessians = None
    if any(parse_profile(p).needs_calibration for p in profiles):
        calib = _calibration_text(args.calibration, args.calibration_bytes)
        if calib in text or text in calib:
            raise SystemExit("the calibration text overlaps the evaluation text; calibrate on another text")
        hessians = collect_hessians(build_causal_lm(config, base), calib, max_tokens=args.calibration_bytes)
        print(f"calibration: {len(calib)} characters", flush=True)
    budgets: dict[str, int] = {}
    for profile in profiles:
        art = build_artifact(base, {k: ft[k] for k in linear}, profile, calibration=hessians)
        dense = art.apply_to(base)
        nbytes = sum(d.nbytes for d in art.packed.values())
        if parse_profile(profile) == reference:
            budgets = {k: d.nbytes for k, d in art.packed.items()}
        rows.append((art.profile, nbytes, bpb(linear_only(dense.__getitem__))))
        print(f"{rows[-1][0]}: {nbytes} B, bpb {rows[-1][2]:.4f}", flush=True)
    if not budgets:
        art = build_artifact(base, {k: ft[k] for k in linear}, reference)
        budgets = {k: d.nbytes for k, d in art.packed.items()}
    def equal_bytes(bits: int) -> Callable[[str], float]:
        return lambda k: kept_for_budget(ft[k].numel(), budgets[k], bits) / ft[k].numel()

    keep_rate = reference.kept_fraction
    baselines = (
        ("bf16 values, same drop rate", 16, lambda k: keep_rate),
        ("bf16 values, equal bytes", 16, equal_bytes(16)),
        ("4-bit values, equal bytes", 4, equal_bytes(4)),
    )
    for label, bits, keep_of in () if args.no_baselines else baselines:
        nbytes = sum(sparse_bytes(ft[k].numel(), round(keep_of(k) * ft[k].numel()), bits) for k in linear)
        for name, fn in (
            ("dare", lambda k, b=bits, f=keep_of: dare(ft[k], base[k], f(k), name=k, value_bits=b)),
            ("magnitude", lambda k, b=bits, f=keep_of: magnitude(ft[k], base[k], f(k), value_bits=b)),
        ):
            rows.append((f"{name} ({label})", nbytes, bpb(linear_only(fn))))
            print(f"{rows[-1][0]}: {nbytes} B, bpb {rows[-1][2]:.4f}", flush=True)

    table = _markdown(args, len(text.encode("utf-8")), bpb_base, bpb_ft, bf16_bytes, rows, time.time() - t0)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0


def _calibration_text(source: str, limit: int) -> str:
    if source == "stdlib":
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[40:60]
        return "".join(f.read_text(encoding="utf-8") for f in files)[:limit]
    return Path(source).read_text(encoding="utf-8")[:limit]


def _markdown(args, n_bytes, bpb_base, bpb_ft, bf16_bytes, rows, seconds) -> str:
    command = "python benchmarks/lossy.py " + " ".join(sys.argv[1:])
    lines = [
        "# Lossy profiles: bytes and bits-per-byte", "",
        f"Command: `{command}` ({seconds:.0f} s, device {args.device})", "",
        f"Calibration (calibrated profiles only; base model's layer inputs): `{args.calibration}`, "
        f"first {args.calibration_bytes} characters.", "",
        f"Fine-tune `{args.finetune}` over `{args.base}`, text `{args.text}` ({n_bytes} bytes). "
        f"bpb: base {bpb_base:.4f}, fine-tune {bpb_ft:.4f}. Linear-layer delta in bf16: {bf16_bytes} bytes.",
        "",
        "| method | bytes | × smaller than bf16 delta | bpb | gain kept |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, nbytes, value in rows:
        ratio = bf16_bytes / nbytes if nbytes else float("inf")
        kept = gain_kept(bpb_base, bpb_ft, value)
        lines.append(f"| `{label}` | {nbytes} | {ratio:.1f} | {value:.4f} | {100 * kept:.1f} % |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
