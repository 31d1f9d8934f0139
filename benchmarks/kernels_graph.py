"""GPU delta path timed as a model runs it: CUDA-graph replays over rotating layer copies.

benchmarks/kernels.py times one call at a time (do_bench: L2 flushed, launch overhead included). Here
each case is captured as one CUDA graph that runs L = 8 layers, each with its own bf16 base weight and
its own stack of 16 random 1:32 4-bit deltas (so no layer's weights sit in L2 when it runs, as in a
model's forward), and the median replay time / L is reported for F.linear alone, the delta path
(F.linear + the BGMV kernel) and the fused kernel, then for a sweep of the fused kernel's block sizes
and warps. Every variant is checked against the torch reference (relative error < 2e-2) before it is
timed. Needs CUDA; on a CPU it runs a tiny smoke case (TRITON_INTERPRET=1 for the Triton kernels).

    python benchmarks/kernels_graph.py OUTDIR        # prints the tables, appends OUTDIR/kernels_graph.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from deltazoo.compression.packed import index_bits, row_bytes

from deltazoo.kernels import batched_delta_matmul_reference, linear_with_delta
from deltazoo.kernels.stacked import StackedDeltas
from deltazoo.kernels.triton_delta import fused_linear_delta

CASES = [(1, 1), (4, 1), (4, 4), (16, 4), (16, 16), (64, 16)]  # (batch, distinct deltas)
SWEEP = {  # (batch, deltas) -> (block_tokens, block_rows, block_cols, num_warps) tried
    (1, 1): list(itertools.product([1], [2, 4, 8], [1024, 2048], [4, 8])),
    (4, 4): list(itertools.product([1, 2, 4], [4, 8], [1024, 2048], [4])),
    (16, 16): list(itertools.product([4, 8, 16], [4, 8], [1024], [4, 8])),
}


@dataclass
class Layers:
    weights: list[torch.Tensor]
    stacks: list[StackedDeltas]


def random_stack(shape: tuple[int, int], count: int, gen: torch.Generator,
                 device: torch.device) -> StackedDeltas:
    """``count`` 1:32 4-bit deltas with uniformly random packed bytes (every byte pattern is valid)."""
    rows, cols = shape
    kept = cols // 32

    def rand_bytes(width: int) -> torch.Tensor:
        return torch.randint(0, 256, (count, rows, width), dtype=torch.uint8, device=device, generator=gen)

    return StackedDeltas(
        shape=shape, n=1, m=32, bits=4, scale_granularity="tensor", group_size=0,
        values=rand_bytes(row_bytes(kept, 4)), indices=rand_bytes(row_bytes(kept, index_bits(32))),
        scales=(1e-3 * (0.5 + torch.rand((count, 1), device=device, generator=gen))).to(torch.float16),
    )


def graph_us(fns: list[Callable[[], object]], device: torch.device) -> float:
    """Median µs per call of a graph that runs every fn once (one fn per layer)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for f in fns:
            f()
        return 1e6 * (time.perf_counter() - t0) / len(fns)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and allocate outside the capture
        for _ in range(2):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / len(fns))
    return statistics.median(times)


def eager_us(fn: Callable[[], object], device: torch.device) -> float:
    if device.type != "cuda":
        return graph_us([fn], device)
    import triton.testing

    return 1000.0 * float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


def run_case(layers: Layers, batch: int, nd: int, device: torch.device, gen: torch.Generator,
             log: Callable[..., None]) -> dict[str, object]:
    ws, stacks = layers.weights, layers.stacks
    rows, cols = ws[0].shape
    x = torch.randn(batch, cols, device=device, generator=gen).to(ws[0].dtype)
    ids = (torch.arange(batch, device=device) % nd).to(torch.int32)
    ref = F.linear(x.float(), ws[0].float()) + batched_delta_matmul_reference(x.float(), stacks[0], ids)

    def check(y: torch.Tensor, label: str) -> bool:
        err = ((y.float() - ref).norm() / ref.norm()).item()
        ok = err < 2e-2 and bool(torch.isfinite(y).all())
        if not ok:
            print(f"  WRONG {label}: relative error {err:.3g}", flush=True)
        return ok

    def delta(w: torch.Tensor, s: StackedDeltas, fused: bool = False) -> torch.Tensor:
        if fused:  # the fused kernel itself, whatever the batch (linear_with_delta uses it for 1 token)
            return fused_linear_delta(x, w, None, s, ids)
        return linear_with_delta(x, w, s, delta_ids=ids, backend="triton", validate=False)

    pairs = list(zip(ws, stacks, strict=True))
    base_g = graph_us([partial(F.linear, x, w) for w in ws], device)
    res: dict[str, object] = dict(shape=f"{rows}x{cols}", batch=batch, deltas=nd, base_graph=base_g,
                                  base_eager=eager_us(lambda: F.linear(x, ws[0]), device),
                                  base_tbps=rows * cols * 2 / base_g / 1e6)
    res["delta_ok"] = check(delta(ws[0], stacks[0]), "delta path")
    res["delta_graph"] = graph_us([partial(delta, w, s) for w, s in pairs], device)
    res["delta_eager"] = eager_us(lambda: delta(ws[0], stacks[0]), device)
    if batch <= 16:
        res["fused_ok"] = check(delta(ws[0], stacks[0], True), "fused")
        res["fused_graph"] = graph_us([partial(delta, w, s, True) for w, s in pairs], device)
        res["fused_eager"] = eager_us(lambda: delta(ws[0], stacks[0], True), device)
    packed = stacks[0].values[0].numel() + stacks[0].indices[0].numel()
    res["bound"] = 1 + nd * packed / (rows * cols * 2)
    log(kind="case", **res)
    print("  " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()),
          flush=True)
    best = None
    for bt, br, bk, nw in SWEEP.get((batch, nd), []) if device.type == "cuda" else []:
        def fn(w: torch.Tensor, s: StackedDeltas, bt: int = bt, br: int = br, bk: int = bk,
               nw: int = nw) -> torch.Tensor:
            return fused_linear_delta(x, w, None, s, ids, block_rows=br, block_cols=bk, block_tokens=bt,
                                      num_warps=nw)
        label = f"tokens={bt} rows={br} cols={bk} warps={nw}"
        try:
            good = check(fn(ws[0], stacks[0]), f"fused {label}")
            t = graph_us([partial(fn, w, s) for w, s in pairs], device)
        except Exception as exc:  # noqa: BLE001 - a config the compiler refuses (resources) is skipped
            print(f"  fused {label}: {type(exc).__name__} {str(exc)[:100]}")
            continue
        log(kind="fused_config", shape=res["shape"], batch=batch, deltas=nd, block_tokens=bt, block_rows=br,
            block_cols=bk, num_warps=nw, us=t, ok=good, ratio=t / base_g)
        print(f"  fused {label}: {t:.2f} us ({t / base_g:.3f}x base){'' if good else ' WRONG'}", flush=True)
        if good and (best is None or t < best[0]):
            best = (t, label)
    if best:
        print(f"  fused best: {best[0]:.2f} us ({best[0] / base_g:.3f}x base), {best[1]}", flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for kernels_graph.jsonl")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import triton

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke run)"
    print(f"device {name}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    gpu = device.type == "cuda"
    shapes = [(4096, 4096), (4096, 11008)] if gpu else [(64, 256)]
    dtype = torch.bfloat16 if gpu else torch.float32
    args.out.mkdir(parents=True, exist_ok=True)
    summary = []
    with open(args.out / "kernels_graph.jsonl", "a") as sink:
        def log(**kw: object) -> None:
            sink.write(json.dumps(kw) + "\n")
            sink.flush()

        for shape in shapes:
            gen = torch.Generator(device=device).manual_seed(1)
            count = 8 if gpu else 2
            layers = Layers([(0.02 * torch.randn(shape, device=device, generator=gen)).to(dtype)
                             for _ in range(count)],
                            [random_stack(shape, 16, gen, device) for _ in range(count)])
            for batch, nd in CASES if gpu else [(1, 1), (4, 4)]:
                summary.append(run_case(layers, batch, nd, device, gen, log))
            del layers
    print("\n| shape | batch | deltas | base µs (TB/s) | delta path | fused | bound | base eager µs | "
          "delta eager | fused eager |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in summary:
        bg, be = float(r["base_graph"]), float(r["base_eager"])  # type: ignore[arg-type]

        def ratio(key: str, base: float, r: dict[str, object] = r) -> str:
            return f"{float(r[key]) / base:.3f}×" if key in r else "-"  # type: ignore[arg-type]

        print(f"| {r['shape']} | {r['batch']} | {r['deltas']} | {bg:.1f} ({float(r['base_tbps']):.2f}) | "  # type: ignore[arg-type]
              f"{ratio('delta_graph', bg)} | {ratio('fused_graph', bg)} | {float(r['bound']):.3f}× | "  # type: ignore[arg-type]
              f"{be:.1f} | {ratio('delta_eager', be)} | {ratio('fused_eager', be)} |")


if __name__ == "__main__":
    main()
