"""Serving benchmark: K fine-tunes in one batch vs the base alone vs swapping dense models, with the
quality every row keeps beside it.

Quality: bits per byte of each fine-tune on its own held-out text (coder: ``eval_code.txt``,
writer: ``eval_docs.txt``), for the exact fine-tune, its profile alone (``patch_model`` with one
artifact), both fine-tunes' rows interleaved in one batch with per-row exact tensors (the default,
``on_dense_mismatch="per-row"``) and the same mixed batch with ``keep-base``. "Gain kept" =
(bpb_base − bpb) / (bpb_base − bpb_finetune).

Speed: greedy ``generate`` (KV cache) of ``--new`` tokens after ``--prompt`` tokens of eval text, for
``--batch`` rows:

* ``base``       the base model alone, every row;
* ``mixed K``    one patched base, rows spread over K fine-tunes (+ base rows), one batch;
* ``swap dense`` the dense fine-tunes, one batch per fine-tune, swapping each one's full state dict
                 into one resident model before its batch (the swap is timed);
* ``batch 1``    one row with one fine-tune (patched) vs the base at batch 1.

Times are medians of ``--reps`` runs, given as tokens/s and as ratios to ``base`` measured in the
same run (the machine is shared; compare ratios, not seconds). CPU: the torch reference path.

    python benchmarks/serving.py /work/shared/zoo                    # writes benchmarks/results/serving.md
    python benchmarks/serving.py /work/shared/zoo --max-bytes 20000  # quicker quality figures
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Run as a script, this folder leads sys.path and benchmarks/kernels.py would shadow the `kernels`
# package that transformers imports; the repository root takes its place.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402
from deltazoo.compression.deltadq import build_artifact  # noqa: E402
from deltazoo.compression.packed import PackedArtifact  # noqa: E402
from deltazoo.compression.quality import bits_per_byte, build_causal_lm, gain_kept  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from deltazoo.kernels import patch_model, set_active_deltas  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serving.md"
FINETUNES = (("coder", "eval_code.txt"), ("writer", "eval_docs.txt"))
State = dict[str, torch.Tensor]


def _load(folder: Path) -> tuple[dict, State]:
    return json.loads((folder / "config.json").read_text()), load_file(str(folder / "model.safetensors"))


def _windows(text: str, window: int, bos: int) -> list[list[int]]:
    ids = list(text.encode("utf-8"))
    span = window - 1
    return [[bos, *ids[i : i + span]] for i in range(0, len(ids), span)]


@torch.no_grad()
def mixed_bits_per_byte(model: torch.nn.Module, texts: Sequence[tuple[int, str]], window: int,
                        batch_size: int = 8) -> list[float]:
    """bpb of each ``(delta id, text)``, its windows interleaved with the others' in shared batches
    (one row = one window of one text, run with its own delta id; byte-level model, BOS = 1)."""
    jobs = []  # (text index, window)
    per_text = [_windows(text, window, 1) for _, text in texts]
    for i in range(max(len(w) for w in per_text)):
        jobs += [(t, w[i]) for t, w in enumerate(per_text) if i < len(w)]
    bits = [0.0] * len(texts)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        width = max(len(w) for _, w in chunk)
        batch = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for row, (_, w) in enumerate(chunk):
            batch[row, : len(w)] = torch.tensor(w)
            mask[row, : len(w)] = 1
        set_active_deltas(model, [texts[t][0] for t, _ in chunk])
        logits = model(input_ids=batch, attention_mask=mask).logits.float()
        nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, batch[:, 1:, None]).squeeze(-1)
        for row, (t, w) in enumerate(chunk):
            bits[t] += float(nll[row, : len(w) - 1].sum()) / math.log(2)
    set_active_deltas(model, None)
    return [b / len(text.encode("utf-8")) for b, (_, text) in zip(bits, texts, strict=True)]


def quality(args: argparse.Namespace, config: dict, base: State, fts: dict[str, State],
            arts: dict[str, PackedArtifact]) -> list[dict[str, object]]:
    texts = {name: (args.zoo / text).read_text(encoding="utf-8") for name, text in FINETUNES}
    if args.max_bytes:
        texts = {k: v[: args.max_bytes] for k, v in texts.items()}
    window = args.window

    def bpb(state: State, name: str) -> float:
        return bits_per_byte(build_causal_lm(config, state), None, texts[name], window=window)

    names = [name for name, _ in FINETUNES]
    rows = []
    mixed_ids = list(enumerate(names))
    per_row = patch_model(build_causal_lm(config, base), [arts[n] for n in names])
    keep = patch_model(build_causal_lm(config, base), [arts[n] for n in names], on_dense_mismatch="keep-base")
    mixed = mixed_bits_per_byte(per_row, [(i, texts[n]) for i, n in mixed_ids], window)
    mixed_keep = mixed_bits_per_byte(keep, [(i, texts[n]) for i, n in mixed_ids], window)
    for i, name in mixed_ids:
        b, f = bpb(base, name), bpb(fts[name], name)
        alone_model = patch_model(build_causal_lm(config, base), arts[name])
        alone = bits_per_byte(alone_model, None, texts[name], window=window)
        rows.append(dict(name=name, bytes=len(texts[name].encode()), base=b, finetune=f, alone=alone,
                         mixed=mixed[i], keep=mixed_keep[i]))
        print(f"{name}: base {b:.4f} ft {f:.4f} alone {alone:.4f} mixed {mixed[i]:.4f} "
              f"keep-base {mixed_keep[i]:.4f}", flush=True)
    return rows


def _median_seconds(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    print(f"  timed: median {statistics.median(times) * 1000:.0f} ms of {reps}", flush=True)
    return statistics.median(times)


@torch.no_grad()
def speed(args: argparse.Namespace, config: dict, base: State, fts: dict[str, State],
          arts: dict[str, PackedArtifact]) -> list[tuple[str, int, float]]:
    """``(label, tokens generated, median seconds)`` per configuration."""
    text = (args.zoo / "eval_code.txt").read_text(encoding="utf-8").encode()
    prompts = torch.tensor([[1, *text[i * 997 : i * 997 + args.prompt - 1]] for i in range(args.batch)])
    mask = torch.ones_like(prompts)
    names = [n for n, _ in FINETUNES]
    gen = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=0)

    def run(model: torch.nn.Module, ids: torch.Tensor, m: torch.Tensor) -> object:
        out = model.generate(ids, attention_mask=m, **gen)  # type: ignore[operator]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    prompts, mask = prompts.to(device), mask.to(device)

    def build(arts_: PackedArtifact | list[PackedArtifact] | None = None) -> torch.nn.Module:
        model = build_causal_lm(config, base, dtype=dtype)
        return (model if arts_ is None else patch_model(model, arts_, fused=args.fused)).to(device)

    base_model = build()
    one = build(arts[names[0]])
    swap_model = build()
    dense = {n: {k: v.to(dtype) for k, v in fts[n].items()} for n in names}  # host memory, as a swap reads it
    base_f = {k: v.to(dtype) for k, v in base.items()}
    out: list[tuple[str, int, float]] = []
    tokens = args.batch * args.new

    out.append(("base alone", tokens, _median_seconds(lambda: run(base_model, prompts, mask), args.reps)))
    for k in args.k:
        # K distinct deltas; past the zoo's two fine-tunes they repeat (same bytes, distinct slots)
        chosen = [names[i % len(names)] for i in range(k)]
        patched = build([arts[n] for n in chosen])
        ids = [(row % (k + 1)) - 1 for row in range(args.batch)]  # -1 (base), 0, ..., k-1, -1, ...

        def mixed(ids: list[int] = ids, patched: torch.nn.Module = patched) -> object:
            set_active_deltas(patched, ids)
            return run(patched, prompts, mask)

        out.append((f"mixed: {k} fine-tune(s) + base rows, one batch", tokens,
                    _median_seconds(mixed, args.reps)))

        def swapping(ids: list[int] = ids, chosen: list[str] = chosen) -> object:
            for d in sorted(set(ids)):
                rows = [r for r, i in enumerate(ids) if i == d]
                swap_model.load_state_dict(dense[chosen[d]] if d >= 0 else base_f)
                run(swap_model, prompts[rows], mask[rows])
            return None

        out.append((f"swap dense: {k} fine-tune(s) + base, one batch each", tokens,
                    _median_seconds(swapping, args.reps)))
    first = prompts[:1]
    out.append(("batch 1: base alone", args.new, _median_seconds(lambda: run(base_model, first, mask[:1]),
                                                                 args.reps)))
    out.append(("batch 1: one fine-tune, patched", args.new,
                _median_seconds(lambda: run(one, first, mask[:1]), args.reps)))
    for label, n, s in out:
        print(f"{label}: {n / s:.1f} tokens/s, {s * 1000:.0f} ms", flush=True)
    return out


def _markdown(args: argparse.Namespace, quality_rows: list[dict[str, object]],
              speed_rows: list[tuple[str, int, float]], arts: dict[str, PackedArtifact]) -> str:
    where = (f"{torch.cuda.get_device_name(args.device)} (Triton kernels)" if args.device.startswith("cuda")
             else f"{platform.machine()} CPU (torch reference path)")
    lines = [f"# Serving (`benchmarks/serving.py`), {where}, torch {torch.__version__}", "",
             f"`python benchmarks/serving.py {args.zoo} --max-bytes {args.max_bytes} --batch {args.batch} "
             f"--prompt {args.prompt} --new {args.new} --reps {args.reps} --k {' '.join(map(str, args.k))} "
             f"--device {args.device} --dtype {args.dtype}{' --fused' if args.fused else ''}`; "
             f"profile `{args.profile}`. Beyond the zoo's two fine-tunes, K repeats them as distinct "
             "deltas.", "",
             "## Quality per row (bits per byte on each fine-tune's held-out text, gain kept)", "",
             "| fine-tune (text bytes) | base | exact | profile alone | mixed batch, per-row exact | "
             "mixed batch, keep-base |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in quality_rows:
        b, f = float(r["base"]), float(r["finetune"])  # type: ignore[arg-type]

        def cell(v: object, b: float = b, f: float = f) -> str:
            return f"{float(v):.4f} ({100 * gain_kept(b, f, float(v)):.1f} %)"  # type: ignore[arg-type]

        lines.append(f"| {r['name']} ({r['bytes']:,}) | {b:.4f} | {f:.4f} (100 %) | {cell(r['alone'])} | "
                     f"{cell(r['mixed'])} | {cell(r['keep'])} |")
    lines += ["", "Bytes per fine-tune held by the host (packed linear deltas / exact tensors kept per row):",
              ""]
    for name, art in arts.items():
        packed = sum(d.nbytes for d in art.packed.values())
        exact = sum(t.numel() * t.element_size() for t in art.dense.values())
        lines.append(f"- {name}: packed {packed:,} B, exact {exact:,} B ({len(art.dense)} tensors: "
                     f"{', '.join(sorted(art.dense)[:3])}, …)")
    if not speed_rows:
        return "\n".join(lines) + "\n"
    base_s = next(s / n for label, n, s in speed_rows if label == "base alone")
    b1 = next(s / n for label, n, s in speed_rows if label == "batch 1: base alone")
    lines += ["", f"## Speed (batch {args.batch}, {args.prompt}-token prompts, {args.new} new tokens, "
              f"greedy, KV cache; {args.dtype} on {where})", "",
              "| configuration | tokens/s | latency (ms) | time per token × base |",
              "| --- | ---: | ---: | ---: |"]
    for label, n, s in speed_rows:
        ref = b1 if label.startswith("batch 1") else base_s
        lines.append(f"| {label} | {n / s:.1f} | {1000 * s:.0f} | {s / n / ref:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--profile", default="deltadq:n=1,m=32,bits=4")
    ap.add_argument("--max-bytes", type=int, default=0, help="quality on the first N characters of each text")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4], help="fine-tunes per batch")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--device", default="cpu", help="where the speed runs go (quality stays on the CPU)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype of the models in the speed runs")
    ap.add_argument("--fused", action="store_true",
                    help="patched layers run base + delta in one Triton kernel (CUDA; small batches)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config, base = _load(args.zoo / "base")
    fts = {name: _load(args.zoo / name)[1] for name, _ in FINETUNES}
    arts = {name: build_artifact(base, ft, args.profile) for name, ft in fts.items()}
    quality_rows = [] if args.skip_quality else quality(args, config, base, fts, arts)
    speed_rows = [] if args.skip_speed else speed(args, config, base, fts, arts)
    table = _markdown(args, quality_rows, speed_rows, arts)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
