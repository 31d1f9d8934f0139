"""Real-size throughput on the embedded default: push, cold pull and delta-only pull of a synthetic
fine-tune, side by side with ``zstd -3 -T2`` / ``zstd -d`` of the same files, in one run.

A pair is a base of tensors of 2048x4096 (weights ~N(0, 0.02), seeded) and a full fine-tune of it (every
weight changed by ~2 %: w * (1 + 0.02 * N(0, 1))), in bf16 or fp32, as ``--shards`` safetensors files.
Pairs are generated once into ``--data`` and reused.

Each repetition starts a fresh ``deltazoo serve`` (embedded: SQLite + object directory, in-process jobs)
on a temporary home and, interleaved so that the machine's drift hits both sides alike:

* ``zstd -3 -T2`` of the fine-tune's files (to a file) — then ``push`` of the base, then ``push`` of the
  fine-tune with ``base=`` (upload + encode, SDK ``Client.push(wait=True)``);
* ``zstd -d`` of those files — then a cold ``pull`` of the fine-tune (empty cache), then a delta-only
  ``pull`` (fresh cache holding only the base);
* the codec alone: ``encode_tensor`` / ``decode_tensor`` of every fine-tune tensor against its base on
  one thread (no I/O, no hashing).

Every pull is checked sha256-equal to the original files. The API's peak RSS (VmHWM) is read from /proc
at the end of each repetition. Ratios are taken within a repetition; the table gives their median and
range. Writes ``benchmarks/results/throughput.md`` (appends one section per configuration).

    python benchmarks/throughput.py --size-mib 1024 --dtype bf16 --reps 3
    python benchmarks/throughput.py --size-mib 256 1024 4096 --reps 2     # time against size
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS, COLS = 2048, 4096
ITEMSIZE = {"bf16": 2, "fp32": 4}


# --- synthetic pairs -------------------------------------------------------------------------------


def pair_dir(data: Path, size_mib: int, dtype: str, shards: int, seed: int) -> Path:
    return data / f"{dtype}-{size_mib}mib-{shards}shards-seed{seed}"


def make_pair(data: Path, size_mib: int, dtype: str, shards: int, seed: int) -> Path:
    """base/ and ft/ directories of ``shards`` safetensors files, ``size_mib`` in all (generated once)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    out = pair_dir(data, size_mib, dtype, shards, seed)
    if (out / "done").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    tensor_bytes = ROWS * COLS * ITEMSIZE[dtype]
    count = max(1, (size_mib << 20) // tensor_bytes)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    rng = np.random.default_rng(seed)
    per_shard = -(-count // shards)
    for kind in ("base", "ft"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        names = [f"layers.{i}.weight" for i in range(s * per_shard, min(count, (s + 1) * per_shard))]
        base: dict[str, object] = {}
        ft: dict[str, object] = {}
        for name in names:
            w = rng.standard_normal((ROWS, COLS), dtype=np.float32) * np.float32(0.02)
            f = w * (np.float32(1) + np.float32(0.02) * rng.standard_normal((ROWS, COLS), dtype=np.float32))
            base[name] = torch.from_numpy(w).to(torch_dtype)
            ft[name] = torch.from_numpy(f).to(torch_dtype)
        fname = "model.safetensors" if shards == 1 else f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(base, str(out / "base" / fname))  # type: ignore[arg-type]
        save_file(ft, str(out / "ft" / fname))  # type: ignore[arg-type]
    for kind in ("base", "ft"):
        (out / kind / "config.json").write_text(json.dumps({"synthetic": True, "seed": seed}))
    (out / "done").write_text("")
    return out


def tree_sha256(directory: Path) -> dict[str, str]:
    result = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with p.open("rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
            result[str(p.relative_to(directory))] = h.hexdigest()
    return result


# --- measurements ----------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def zstd_files(files: list[Path], work: Path) -> tuple[float, float]:
    """Seconds of ``zstd -3 -T2`` of ``files`` (to files) and of ``zstd -d`` of what it wrote."""
    packed = [work / f"{i}.zst" for i in range(len(files))]
    unpacked = [work / f"{i}.raw" for i in range(len(files))]

    def compress() -> None:
        for src, dst in zip(files, packed, strict=True):
            subprocess.run(["zstd", "-q", "-f", "-3", "-T2", str(src), "-o", str(dst)], check=True)

    def decompress() -> None:
        for src, dst in zip(packed, unpacked, strict=True):
            subprocess.run(["zstd", "-q", "-f", "-d", str(src), "-o", str(dst)], check=True)

    c = timed(compress)
    d = timed(decompress)
    for p in packed + unpacked:
        p.unlink(missing_ok=True)
    return c, d


def codec_alone(pair: Path) -> tuple[float, float]:
    """Seconds of encode_tensor and decode_tensor of every fine-tune tensor against its base, one thread."""
    import torch
    from deltazoo.compression.codecs import decode_tensor, encode_tensor
    from safetensors import safe_open

    enc = dec = 0.0
    for ft_file in sorted((pair / "ft").glob("*.safetensors")):
        with safe_open(str(ft_file), "pt") as ft_h, safe_open(str(pair / "base" / ft_file.name), "pt") as b_h:
            for name in ft_h.keys():  # noqa: SIM118 (safe_open is not a dict)
                t = ft_h.get_tensor(name)
                p = b_h.get_tensor(name)
                dtype = "BF16" if str(t.dtype) == "torch.bfloat16" else "F32"
                raw = t.view(-1).view(dtype=torch.uint8).numpy().tobytes()
                praw = p.view(-1).view(dtype=torch.uint8).numpy().tobytes()
                shape = list(t.shape)
                start = time.perf_counter()
                e = encode_tensor(raw, dtype, shape, praw, dtype, shape)
                mid = time.perf_counter()
                out = decode_tensor(e.encoding, e.payload, dtype, shape, praw, dtype, shape)
                end = time.perf_counter()
                assert out == raw
                enc += mid - start
                dec += end - mid
    return enc, dec


# Stages of the API's time, first match wins: a stage matches a stack when, for each of its groups, some
# frame contains one of the group's strings (py-spy raw stacks: ``function (file:line)``).
STAGES: list[tuple[str, list[tuple[str, ...]]]] = [
    ("encode: parent reconstruction (decode + verify)", [("encode_and_store (",), ("reconstruct (",)]),
    ("encode: codec encode", [("encode_and_store (",), ("encode_tensor (",)]),
    ("encode: round-trip decode check", [("encode_and_store (",), ("decode_tensor (",)]),
    ("encode: payload sha256, blob write + fsync", [("encode_and_store (",)]),
    ("encode: read staged tensor + sha256", [("read_and_hash (",)]),
    ("encode: database (dedup, rows, commits)", [("encode_version (",), ("sqlalchemy",)]),
    ("encode: other (job thread)", [("encode_version (",)]),
    ("pull: tensor decode + verify", [("reconstruct (",)]),
    ("upload: validate + hash + spool", [("feed (", "account (")]),
    ("upload: staging write (copy + fsync)", [("put_file (",)]),
    ("database, other requests", [("sqlalchemy",)]),
    ("HTTP server (uvicorn / starlette)", [("uvicorn", "starlette", "anyio", "h11")]),
]


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "50",
        "--format",
        "raw",
        "--nonblocking",
        "-o",
        str(out),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        spy.wait(timeout=60)


def profile_breakdown(raw: Path) -> list[tuple[str, int]]:
    """Samples per stage of a py-spy raw (collapsed) profile: ``frame;frame;... count`` per line."""
    counts: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        stage = next(
            (
                name
                for name, groups in STAGES
                if all(any(k in f for f in frames for k in group) for group in groups)
            ),
            "other",
        )
        counts[stage] = counts.get(stage, 0) + int(n)
    return sorted(counts.items(), key=lambda kv: -kv[1])


def one_repetition(pair: Path, work: Path, rep: int, profile: Path | None = None) -> dict[str, float]:
    from benchmarks.memory import peak_rss_mib
    from deltazoo import Client
    from tests.servers import start_api_server

    ft_files = sorted((pair / "ft").glob("*.safetensors"))
    want = tree_sha256(pair / "ft")
    home = work / f"home-{rep}"
    api = start_api_server(home, {"DELTAZOO_TENSOR_CACHE_MB": "64"})
    r: dict[str, float] = {"API idle RSS MiB": peak_rss_mib(api.process.pid)[1]}
    spy = start_profiler(api.process.pid, profile) if profile is not None else None
    try:
        r["zstd -3 -T2"], r["zstd -d"] = zstd_files(ft_files, work)
        with Client(api.url, cache_dir=work / f"push-cache-{rep}") as c:
            r["push base"] = timed(lambda: c.push(pair / "base", "bench/base", quiet=True))
            start = time.perf_counter()
            c.push(pair / "ft", "bench/ft", base="bench/base@1", quiet=True, wait=False)
            r["push fine-tune: upload"] = time.perf_counter() - start
            while (status := c.version_info("bench/ft@1").status) not in ("ready", "failed"):
                time.sleep(0.05)
            assert status == "ready", f"the fine-tune's encode {status}"
            r["push fine-tune"] = time.perf_counter() - start
            r["push fine-tune: encode"] = r["push fine-tune"] - r["push fine-tune: upload"]
        r["zstd -d (again)"] = zstd_files(ft_files, work)[1]
        with Client(api.url, cache_dir=work / f"cold-{rep}") as c:
            r["cold pull"] = timed(lambda: c.pull("bench/ft@1", work / f"cold-out-{rep}", quiet=True))
        assert tree_sha256(work / f"cold-out-{rep}") == want, "cold pull differs"
        with Client(api.url, cache_dir=work / f"delta-{rep}") as c:
            c.pull("bench/base@1", quiet=True)
            r["delta-only pull"] = timed(lambda: c.pull("bench/ft@1", work / f"delta-out-{rep}", quiet=True))
        assert tree_sha256(work / f"delta-out-{rep}") == want, "delta-only pull differs"
        r["API peak RSS MiB"] = peak_rss_mib(api.process.pid)[1]
    finally:
        stop_profiler(spy)
        api.stop()
        for p in work.iterdir():
            if p.name.endswith(f"-{rep}") or p.name == f"home-{rep}-api.log":
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    r["codec encode 1 thread"], r["codec decode 1 thread"] = codec_alone(pair)
    return r


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def report(pair: Path, size_mib: int, dtype: str, shards: int, runs: list[dict[str, float]]) -> str:
    mib = sum(p.stat().st_size for p in (pair / "ft").glob("*.safetensors")) / (1 << 20)

    def col(key: str) -> list[float]:
        return [r[key] for r in runs]

    def ratio(a: str, b: str) -> list[float]:
        return [r[a] / r[b] for r in runs]

    rows = [
        ("`zstd -3 -T2` of the fine-tune", col("zstd -3 -T2"), None),
        ("`zstd -d` of that", col("zstd -d"), None),
        ("push of the base (upload + encode plain)", col("push base"), ratio("push base", "zstd -3 -T2")),
        (
            "push of the fine-tune (upload + encode delta)",
            col("push fine-tune"),
            ratio("push fine-tune", "zstd -3 -T2"),
        ),
        (
            "… of which upload (client hash + send, server validate + hash + stage)",
            col("push fine-tune: upload"),
            ratio("push fine-tune: upload", "zstd -3 -T2"),
        ),
        (
            "… of which the encode job (polled every 50 ms)",
            col("push fine-tune: encode"),
            ratio("push fine-tune: encode", "zstd -3 -T2"),
        ),
        ("cold pull of the fine-tune", col("cold pull"), ratio("cold pull", "zstd -d (again)")),
        (
            "delta-only pull (base cached)",
            col("delta-only pull"),
            ratio("delta-only pull", "zstd -d (again)"),
        ),
        (
            "codec alone: encode, 1 thread",
            col("codec encode 1 thread"),
            ratio("codec encode 1 thread", "zstd -3 -T2"),
        ),
        (
            "codec alone: decode, 1 thread",
            col("codec decode 1 thread"),
            ratio("codec decode 1 thread", "zstd -d (again)"),
        ),
    ]
    lines = [
        f"### {dtype}, {size_mib} MiB ({mib:.0f} MiB of safetensors in {shards} file(s)), "
        f"{len(runs)} repetition(s)",
        "",
        "| step | seconds, median (range) | MB/s | × zstd in the same repetition |",
        "| --- | --- | --- | --- |",
    ]
    for label, secs, rat in rows:
        mbs = mib * 1.048576 / statistics.median(secs)
        lines.append(f"| {label} | {spread(secs)} | {mbs:.0f} | {spread(rat) if rat else '–'} |")
    above = [r["API peak RSS MiB"] - r["API idle RSS MiB"] for r in runs]
    lines += [
        "",
        f"API peak RSS {spread(col('API peak RSS MiB'), '{:.0f}')} MiB, "
        f"{spread(above, '{:.0f}')} MiB above its RSS after start-up.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, nargs="+", default=[1024])
    parser.add_argument("--dtype", choices=sorted(ITEMSIZE), nargs="+", default=["bf16"])
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "deltazoo-throughput")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.md")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated pairs in --data")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the API during the first repetition into this file"
    )
    args = parser.parse_args()
    if shutil.which("zstd") is None:
        parser.error("the zstd command is needed (apt-get install zstd)")

    sections = []
    for dtype in args.dtype:
        for size in args.size_mib:
            pair = make_pair(args.data, size, dtype, args.shards, args.seed)
            runs = []
            with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
                for rep in range(args.reps):
                    runs.append(one_repetition(pair, Path(tmp), rep, args.profile if rep == 0 else None))
                    print(json.dumps({"dtype": dtype, "size_mib": size, "rep": rep, **runs[-1]}), flush=True)
            sections.append(report(pair, size, dtype, args.shards, runs))
            print(sections[-1], flush=True)
            if args.profile is not None and args.profile.is_file():
                stages = profile_breakdown(args.profile)
                total = sum(n for _, n in stages) or 1
                sections.append(
                    "\n".join(
                        [
                            "Where the API process spends its CPU: py-spy samples of its running threads "
                            "(idle threads left out), all threads summed, over the first repetition:",
                            "",
                            "| stage | share of samples |",
                            "| --- | --- |",
                            *[f"| {name} | {100 * n / total:.1f} % |" for name, n in stages],
                            "",
                        ]
                    )
                )
                print(sections[-1], flush=True)
            if not args.keep_data:
                shutil.rmtree(pair, ignore_errors=True)
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            f"## Throughput ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores)",
            "",
            f"Command: `{command}`",
            "",
            *sections,
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
