"""GPU delta path benchmark: base GEMV/GEMM alone vs base + packed 1:32 4-bit deltas.

For each weight shape, batch size and number of distinct deltas in the batch it times, side by side:

* ``base``         F.linear with the bf16 base weight alone (the reference cost);
* ``delta``        deltazoo.kernels.linear_with_delta: base F.linear + the packed-delta BGMV kernel
                   (Triton on CUDA), token b using delta ``b % deltas``;
* ``fused``        the same in one Triton kernel (base GEMV + delta, ``fused_linear_delta``) at every
                   batch size; ``linear_with_delta(fused=True)`` uses it for one-token inputs only;
* ``merged``       dense fine-tunes resident (W_base + ΔW precomputed per delta): one GEMM per distinct delta;
* ``materialise``  W_base + ΔW formed from the packed delta on every call, then the GEMM;
* ``2:4``          torch semi-structured sparse F.linear of a 2:4-pruned base-sized weight, where torch
                   supports it (a different sparsity, shown for scale only).

Every time is a ratio to ``base``; ``bound`` is the physical bound of the delta path, 1 + the packed
bytes of the distinct deltas used / the bf16 base's bytes (≈ 1.018 per 1:32 4-bit delta).
CUDA times come from triton.testing.do_bench (CUDA events, L2 flushed between runs, median).

    python benchmarks/kernels.py                   # on a GPU: writes benchmarks/results/kernels.md
    python benchmarks/kernels.py --smoke           # tiny shapes, CPU allowed: proves the script runs
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from deltazoo.compression.packed import index_bits, row_bytes

from deltazoo.kernels import linear_with_delta, random_packed_delta, stack_deltas
from deltazoo.kernels.ops import Backend
from deltazoo.kernels.stacked import StackedDeltas

RESULTS = Path(__file__).parent / "results" / "kernels.md"
GPU_SHAPES = [(4096, 4096), (4096, 11008)]


@dataclass
class Row:
    shape: tuple[int, int]
    batch: int
    deltas: int  # distinct deltas used by the batch
    base_us: float
    delta_us: float
    fused_us: float | None
    merged_us: float
    materialise_us: float
    sparse24_us: float | None
    bound: float


def bench(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median microseconds of ``fn``."""
    if device.type == "cuda":
        import triton.testing

        return 1000.0 * float(triton.testing.do_bench(fn, warmup=25, rep=reps, return_mode="median"))
    fn()
    times = []
    for _ in range(max(3, reps // 10)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def grouped(x: torch.Tensor, weights: list[torch.Tensor], ids: torch.Tensor,
            groups: list[torch.Tensor]) -> torch.Tensor:
    y = torch.empty((x.shape[0], weights[0].shape[0]), dtype=x.dtype, device=x.device)
    for d, sel in enumerate(groups):
        y[sel] = F.linear(x[sel], weights[d])
    return y


def sparse24_fn(w: torch.Tensor, x: torch.Tensor) -> tuple[Callable[[], object] | None, str]:
    """A 2:4 semi-structured F.linear of ``w``'s shape, or None and why not."""
    if w.device.type != "cuda":
        return None, "needs CUDA"
    try:
        from torch.sparse import to_sparse_semi_structured

        mask = torch.tensor([1, 1, 0, 0], dtype=w.dtype, device=w.device).repeat(w.numel() // 4)
        ws = to_sparse_semi_structured(w * mask.reshape(w.shape))
        F.linear(x, ws)
    except (RuntimeError, ValueError, ImportError) as exc:  # unsupported GPU, shape or build
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    return (lambda: F.linear(x, ws)), ""


def run_case(shape: tuple[int, int], batch: int, stack: StackedDeltas, dtype: torch.dtype,
             device: torch.device, reps: int, notes: set[str]) -> Row:
    rows, cols = shape
    gen = torch.Generator().manual_seed(batch)
    w = (0.02 * torch.randn(shape, generator=gen)).to(device, dtype)
    x = torch.randn(batch, cols, generator=gen).to(device, dtype)
    ids = (torch.arange(batch, device=device) % stack.num_deltas).to(torch.int32)
    used = sorted(set(ids.tolist()))
    groups = [(ids == d).nonzero().squeeze(1) for d in used]
    deltas = [stack.delta(d) for d in used]
    merged = [(w.float() + d.to_dense()).to(dtype) for d in deltas]

    def materialise() -> torch.Tensor:
        return grouped(x, [(w.float() + d.to_dense()).to(dtype) for d in deltas], ids, groups)

    backend: Backend = "triton" if device.type == "cuda" else "torch"

    def delta_fn() -> torch.Tensor:  # ids are in range by construction: no per-call device sync
        return linear_with_delta(x, w, stack, delta_ids=ids, backend=backend, validate=False)

    # correctness before timing: the delta path must equal the merged weights
    expected = grouped(x, merged, ids, groups).float()
    torch.testing.assert_close(delta_fn().float(), expected, rtol=3e-2, atol=3e-2)
    fused_us = None
    if device.type == "cuda":
        def fused_fn() -> torch.Tensor:
            from deltazoo.kernels.triton_delta import fused_linear_delta

            return fused_linear_delta(x, w, None, stack, ids)

        torch.testing.assert_close(fused_fn().float(), expected, rtol=3e-2, atol=3e-2)
        fused_us = bench(fused_fn, device, reps)
    else:
        notes.add("fused kernel not timed: needs CUDA")
    s24, why = sparse24_fn(w, x)
    if why:
        notes.add(f"2:4 not measured: {why}")
    base_bytes = rows * cols * 2  # the bound is stated against a bf16 base whatever the timed dtype
    return Row(
        shape=shape, batch=batch, deltas=len(used),
        base_us=bench(lambda: F.linear(x, w), device, reps),
        delta_us=bench(delta_fn, device, reps), fused_us=fused_us,
        merged_us=bench(lambda: grouped(x, merged, ids, groups), device, reps),
        materialise_us=bench(materialise, device, reps),
        sparse24_us=bench(s24, device, reps) if s24 else None,
        bound=1.0 + sum(d.nbytes for d in deltas) / base_bytes,
    )


def render(rows: list[Row], device: torch.device, args: argparse.Namespace, dtype: torch.dtype,
           notes: set[str]) -> str:
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
        status = "Measured on the GPU named above."
    else:
        where = f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}"
        status = ("**The GPU figures have not been measured yet.** This is a CPU smoke run of the script "
                  "(torch reference path, tiny shapes): it proves the script runs and checks the delta path "
                  "against merged weights; its times say nothing about the Triton kernels.")
    lines = [
        "# GPU delta path: base alone vs base + packed deltas", "",
        status, "",
        f"- device: {where}",
        f"- command: `python benchmarks/kernels.py{' --smoke' if args.smoke else ''}"
        f"{f' --reps {args.reps}' if args.reps != 100 else ''}`",
        f"- deltas: random {args.n}:{args.m} {args.bits}-bit packed deltas (tensor scale); "
        f"x and W_base in {str(dtype).removeprefix('torch.')}; token b uses delta b % deltas",
        "- each cell: median time in µs, and in brackets the ratio to `base`; `bound` = 1 + packed bytes "
        "of the distinct deltas / bf16 base bytes (the bytes-moved lower bound of the delta path)",
        "- design target (docs: DESIGN.md): the delta path ≤ 1.10× base at batch 1, several deltas per batch",
        "",
        "| shape (rows×cols) | batch | deltas | base µs | delta path | fused | bound | merged dense | "
        "materialise per call | torch 2:4 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        def cell(us: float | None, base: float = r.base_us) -> str:
            return "n/a" if us is None else f"{us:.1f} ({us / base:.3f}×)"
        lines.append(
            f"| {r.shape[0]}×{r.shape[1]} | {r.batch} | {r.deltas} | {r.base_us:.1f} | {cell(r.delta_us)} | "
            f"{cell(r.fused_us)} | "
            f"{r.bound:.3f}× | {cell(r.merged_us)} | {cell(r.materialise_us)} | {cell(r.sparse24_us)} |"
        )
    lines += ["", *[f"- {n}" for n in sorted(notes)]]
    if device.type != "cuda":
        lines += ["", "## Bytes-moved bounds of the GPU cases (computed from the packed layout, not timed)",
                  "", "| shape (rows×cols) | 1 delta | 4 deltas | 16 deltas |", "| --- | --- | --- | --- |"]
        for rows_, cols in GPU_SHAPES:
            kept = cols // args.m * args.n
            per_delta = rows_ * (row_bytes(kept, args.bits) + row_bytes(kept, index_bits(args.m))) + 2
            ratio = per_delta / (rows_ * cols * 2)
            bounds = " | ".join(f"{1 + k * ratio:.4f}×" for k in (1, 4, 16))
            lines.append(f"| {rows_}×{cols} | {bounds} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, few reps; runs on a CPU")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--reps", type=int, default=100, help="ms of timed runs per case on CUDA")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        p.error("no CUDA device: the GPU benchmark needs one (use --smoke to check the script on a CPU)")
    if args.smoke:
        torch.set_num_threads(1)  # a shared CPU: fewer threads, less contention noise
        shapes, batches, counts, dtype = [(128, 256), (128, 352)], [1, 4], [1, 4], torch.float32
    else:
        shapes, batches, counts = GPU_SHAPES, [1, 4, 16, 64], [1, 4, 16]
        dtype = getattr(torch, args.dtype)
    notes: set[str] = set()
    rows: list[Row] = []
    for shape in shapes:
        gen = torch.Generator().manual_seed(0)
        pool = [random_packed_delta(shape, n=args.n, m=args.m, bits=args.bits, scale=1e-3, generator=gen,
                                    device=device) for _ in range(max(counts))]
        for count in counts:
            stack = stack_deltas(pool[:count])
            for batch in batches:
                if batch < count:
                    continue  # fewer tokens than deltas: the case with batch == deltas covers it
                rows.append(run_case(shape, batch, stack, dtype, device, args.reps, notes))
                print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, device, args, dtype, notes))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
