"""How a lossy profile's linear deltas relate to the exact delta, in weight space and on layer inputs.

    python benchmarks/lossy_projection.py ZOO_DIR --finetune writer --calibration FILE
        [--inputs FILE] --profiles deltadq:... [deltadq:...]

For each profile, summed over the decoder's linear layers (Δ exact delta, Δ̂ the profile's):

* weight space: projection ⟨Δ̂, Δ⟩ / ‖Δ‖² (1 = no net amplification along Δ) and error ‖Δ̂ − Δ‖² / ‖Δ‖²;
* on inputs (H = XᵀX / N of the base model's layer inputs on ``--inputs``, default the calibration
  text): projection tr(Δ̂ H Δᵀ) / tr(Δ H Δᵀ) and output error tr(E H Eᵀ) / tr(Δ H Δᵀ), E = Δ̂ − Δ.

Calibrated profiles are built from the ``--calibration`` text; ``--inputs`` may name another text
(e.g. the evaluation text) to see how the result carries over, as a diagnostic only.

``--alphas A [A ...] --text FILE [--max-bytes N]``: also the gain kept (bits-per-byte on the text,
as in benchmarks/lossy.py) of base + α·Δ on the linear layers, the exact delta scaled: how much a
fine-tune gains on that text from a delta amplified or shrunk along itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deltazoo.compression.calibration import collect_hessians  # noqa: E402
from deltazoo.compression.deltadq import build_artifact, is_packable, parse_profile  # noqa: E402
from deltazoo.compression.quality import bits_per_byte, build_causal_lm, gain_kept  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--finetune", default="writer")
    ap.add_argument("--base", default="base")
    ap.add_argument("--calibration", type=Path, required=True)
    ap.add_argument("--inputs", type=Path, default=None)
    ap.add_argument("--chars", type=int, default=40000, help="characters of each text used")
    ap.add_argument("--profiles", nargs="*", default=[])
    ap.add_argument("--alphas", nargs="*", type=float, default=[])
    ap.add_argument("--text", type=Path, default=None, help="text scored for --alphas")
    ap.add_argument("--max-bytes", type=int, default=0)
    args = ap.parse_args(argv)
    if args.alphas and args.text is None:
        ap.error("--alphas needs --text")

    config = json.loads((args.zoo / args.base / "config.json").read_text())
    base = load_file(str(args.zoo / args.base / "model.safetensors"))
    ft = load_file(str(args.zoo / args.finetune / "model.safetensors"))
    reference = parse_profile("deltadq:n=1,m=32,bits=4")
    linear = {k: ft[k] for k in ft if is_packable(k, ft[k], base.get(k), reference)}

    def hessians(path: Path) -> dict[str, torch.Tensor]:
        text = path.read_text(encoding="utf-8")[: args.chars]
        return collect_hessians(build_causal_lm(config, base), text, max_tokens=args.chars)

    calib = hessians(args.calibration) if args.profiles else {}
    inputs = hessians(args.inputs) if args.inputs and args.profiles else calib
    if args.profiles:
        print(f"inputs: {args.inputs or args.calibration}, first {args.chars} characters")
        print("| profile | weight projection | weight error | input projection | output error |")
        print("| --- | ---: | ---: | ---: | ---: |")
    for profile in args.profiles:
        art = build_artifact(base, linear, profile, calibration=calib)
        sums = torch.zeros(6, dtype=torch.float64)
        for k in linear:
            d = (ft[k].float() - base[k].float()).double()
            e = art.packed[k].to_dense(torch.float32).double() - d
            h = inputs[k].double()
            dh = d @ h
            sums += torch.tensor([
                float(((e + d) * d).sum()), float((d * d).sum()), float((e * e).sum()),
                float(((e + d) * dh).sum()), float((d * dh).sum()), float(((e @ h) * e).sum()),
            ], dtype=torch.float64)
        w_proj, w_err = sums[0] / sums[1], sums[2] / sums[1]
        i_proj, o_err = sums[3] / sums[4], sums[5] / sums[4]
        print(f"| `{art.profile}` | {w_proj:.3f} | {w_err:.2f} | {i_proj:.3f} | {o_err:.2f} |", flush=True)
    if args.alphas:
        text = args.text.read_text(encoding="utf-8")
        text = text[: args.max_bytes] if args.max_bytes else text

        def bpb(state: dict[str, torch.Tensor]) -> float:
            return bits_per_byte(build_causal_lm(config, state), None, text)

        bpb_base, bpb_ft = bpb(base), bpb(ft)
        print(f"\n{args.text}, {len(text.encode())} bytes: bpb base {bpb_base:.4f}, fine-tune {bpb_ft:.4f}")
        print("| α | bpb | gain kept |\n| ---: | ---: | ---: |")
        for a in args.alphas:
            scaled = {k: scale_delta(base[k], w, a) for k, w in linear.items()}
            value = bpb({**ft, **scaled})
            print(f"| {a:g} | {value:.4f} | {100 * gain_kept(bpb_base, bpb_ft, value):.1f} % |", flush=True)
    return 0


def scale_delta(base: torch.Tensor, finetune: torch.Tensor, alpha: float) -> torch.Tensor:
    """base + α·(finetune − base), in the fine-tune's dtype."""
    b = base.float()
    return (b + alpha * (finetune.float() - b)).to(finetune.dtype)


if __name__ == "__main__":
    raise SystemExit(main())
