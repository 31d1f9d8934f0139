"""Real-size throughput: push, cold pull and delta-only pull of a synthetic fine-tune, on the embedded
default and on the full stack, side by side with ``zstd -3 -T2`` / ``zstd -d`` of the same files, in one run.

A pair is a base of tensors of 2048x4096 (weights ~N(0, 0.02), seeded) and a full fine-tune of it (every
weight changed by ~2 %: w * (1 + 0.02 * N(0, 1))), in bf16 or fp32, as ``--shards`` safetensors files.
Pairs are generated once into ``--data`` and reused.

``--servers`` picks what serves them: ``embedded`` (a fresh ``deltazoo serve`` per repetition: SQLite + an
object directory, in-process jobs) and ``stack-N`` (Postgres, Redis, N Celery workers and ``weed mini``
as the S3 store, started once; its models are deleted after each repetition). Every full stack is
started before the first repetition and the servers take turns, repetition by repetition (``stack-1``,
``stack-2``, ``stack-1``, ...), so that the machine's drift hits each alike.

Scale-out (``--pin-workers``): worker *n* of a stack runs on core *n-1* only (its CPU affinity, as
``taskset -c``; lanes follow the affinity, so one encode lane each). ``stack-1`` against ``stack-2``
then stands for one single-core worker host against two: on this 2-core machine, unpinned workers
would each run two lanes on the same two cores and could not show scale-out. The API, Postgres, Redis
and the S3 server are not pinned and share the cores with the workers (and with whatever else runs).

Within each repetition, interleaved so that the machine's drift hits both sides alike:

* ``zstd -3 -T2`` of the fine-tune's files (to a file) — then ``push`` of the base, then ``push`` of the
  fine-tune with ``base=`` (upload + encode, SDK ``Client.push``, then ``Client.wait`` on its job as
  ``push --wait`` waits: a long poll, answered when the job ends);
* ``zstd -d`` of those files (the median of ``ZSTD_D_RUNS`` runs, each into new files, the compressed
  files warm in the page cache as the server's blobs are) — then a cold ``pull`` of the fine-tune (empty
  cache), then a delta-only ``pull`` (fresh cache holding only the base); both pulls are divided by that
  median;
* the codec alone: ``encode_tensor`` / ``decode_tensor`` of every fine-tune tensor against its base on
  one thread (no I/O, no hashing).

The "encode job" is timed from the push's commit answering to the client's poll seeing ``ready``; on a
stack, the workers' logs split it into queue latency, the parts' span, the workers' idle seconds in it,
the finishing run and the poll's lag, and the API's and S3 server's CPU seconds in it are read
(``--push-only``: no pulls; ``--setting DELTAZOO_X=V``: a setting for every server process).

Every pull is checked sha256-equal to the original files. The CPU seconds (user + system) the workers
spent during the fine-tune's encode are read from /proc. Each server process's peak RSS (VmHWM) is read
from /proc, and the 1-minute load average before and after each repetition is recorded (this machine is
shared: say it next to the figures). Ratios are taken within a repetition; the table gives their median
and range. Writes ``benchmarks/results/throughput.md`` (appends one section per configuration).

    python benchmarks/throughput.py --size-mib 1024 --shards 4 --servers embedded stack-1 stack-2 --reps 1
    python benchmarks/throughput.py --size-mib 256 --shards 4 --servers stack-1 stack-2 --pin-workers --reps 2
    python benchmarks/throughput.py --size-mib 256 1024 4096 --dtype bf16 fp32 --shards 4 \
        --servers embedded stack-1 stack-2 --reps 3 --profile /tmp/throughput-profile.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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


ZSTD_D_RUNS = 3  # zstd -d before the pulls: the median of this many runs (one run swung 0.3-1.0 s)


def zstd_compress(files: list[Path], work: Path) -> tuple[float, list[Path]]:
    """Seconds of ``zstd -3 -T2`` of ``files`` (to files in ``work``), and those files."""
    packed = [work / f"{i}.zst" for i in range(len(files))]

    def compress() -> None:
        for src, dst in zip(files, packed, strict=True):
            subprocess.run(["zstd", "-q", "-f", "-3", "-T2", str(src), "-o", str(dst)], check=True)

    return timed(compress), packed


def zstd_decompress(packed: list[Path], work: Path) -> float:
    """Seconds of ``zstd -d`` of ``packed`` into new files (as a pull writes new files), deleted after."""
    unpacked = [work / f"{i}.raw" for i in range(len(packed))]

    def decompress() -> None:
        for src, dst in zip(packed, unpacked, strict=True):
            subprocess.run(["zstd", "-q", "-f", "-d", str(src), "-o", str(dst)], check=True)

    seconds = timed(decompress)
    for p in unpacked:
        p.unlink(missing_ok=True)
    return seconds


def zstd_files(files: list[Path], work: Path, runs: int = 1) -> tuple[float, float]:
    """Seconds of ``zstd -3 -T2`` of ``files`` (to files) and of ``zstd -d`` of what it wrote (the
    median of ``runs``: the compressed files and the page cache are warm after the first)."""
    c, packed = zstd_compress(files, work)
    d = statistics.median(zstd_decompress(packed, work) for _ in range(runs))
    for p in packed:
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
LANE = ("encode_and_store (", "code_chunk (")  # a lane coding a whole tensor or one chunk
STAGES: list[tuple[str, list[tuple[str, ...]]]] = [
    (
        "encode: parent reconstruction",
        [("encode_and_store (", "encode_chunk_of ("), ("reconstruct (", "elements (")],
    ),
    ("encode: codec encode", [LANE, ("encode_tensor (",)]),
    ("encode: round-trip decode check", [LANE, ("decode_tensor (",)]),
    ("encode: payload sha256, blob write", [LANE]),
    ("encode: read staged tensor + sha256", [("read_and_hash (", "hash_in_chunks (", "encode_chunk_of (")]),
    ("encode: database (dedup, rows, commits)", [("encode_version (", "encode_file ("), ("sqlalchemy",)]),
    ("encode: other (job thread)", [("encode_version (", "encode_file (")]),
    ("pull: tensor / chunk decode + verify", [("reconstruct (", "decode_chunk (")]),
    ("upload: validate + hash + spool", [("feed (", "account (")]),
    ("upload: staging write", [("put_file (",)]),
    ("database, other requests", [("sqlalchemy",)]),
    ("HTTP server (uvicorn / starlette)", [("uvicorn", "starlette", "anyio", "h11")]),
]


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    beside = Path(sys.executable).parent / "py-spy"  # pip install py-spy into the venv
    spy = shutil.which("py-spy") or (str(beside) if beside.is_file() else None)
    if spy is None:
        print("py-spy not found (pip install py-spy): no profile", file=sys.stderr)
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


def _frame_matches(frame: str, key: str) -> bool:
    """``name (`` keys name a function (``decode_chunk (`` is not ``code_chunk (``: the frame's function,
    possibly ``Class.name``, must be it); others are any part of the frame (a module path)."""
    if not key.endswith(" ("):
        return key in frame
    function = frame.split(" (", 1)[0]
    return function == key[:-2] or function.endswith("." + key[:-2])


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
                if all(any(_frame_matches(f, k) for f in frames for k in group) for group in groups)
            ),
            "other",
        )
        counts[stage] = counts.get(stage, 0) + int(n)
    return sorted(counts.items(), key=lambda kv: -kv[1])


@dataclass
class Server:
    url: str
    token: str | None
    pids: dict[str, int]  # process name -> pid, for peak RSS
    fresh_per_repetition: bool
    worker_logs: tuple[Path, ...] = ()  # each Celery worker's log, for the encode's timeline


_TASK_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): \w+/\w+\] Task [\w.]+\[deltazoo-job-(\d+)-\w+\] "
    r"(received|succeeded in [\d.e-]+s: '(\w+)')"
)


def task_spans(logs: tuple[Path, ...], since: float) -> list[dict[str, float | int | str]]:
    """The jobs each Celery worker ran from ``since`` (wall clock) on, read from its log: worker number,
    job id, when its message was taken and when it ended (seconds after ``since``; the solo pool with a
    prefetch of one takes a message only when it is free, so taken = started), and what it returned."""
    spans: list[dict[str, float | int | str]] = []
    for n, log in enumerate(logs, start=1):
        open_at: dict[int, float] = {}
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            m = _TASK_LINE.match(line)
            if m is None:
                continue
            at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            if at < since - 1:
                continue
            job = int(m.group(3))
            if m.group(4) == "received":
                open_at[job] = at
            elif job in open_at:
                start = open_at.pop(job)
                spans.append(
                    {"worker": n, "job": job, "start": start - since, "end": at - since, "result": m.group(5)}
                )
    return sorted(spans, key=lambda s: float(s["start"]))


def timeline_figures(spans: list[dict[str, float | int | str]], ready: float) -> dict[str, float]:
    """Where a split encode's wall time went (seconds, from the commit's answer to ``ready``): until the
    first job started (queue latency), the parts' span, each worker's idle time inside it, and the finish
    step (the version job's last run) up to when the client saw ``ready``; figures whose log lines are
    missing are left out."""
    if not spans:
        return {}
    version_job = min(int(s["job"]) for s in spans)
    parts = [s for s in spans if int(s["job"]) != version_job]
    runs = [s for s in spans if int(s["job"]) == version_job and s["result"] != "waiting"]
    finish = runs[-1] if runs else None
    out = {"encode: until the first job starts": float(spans[0]["start"])}
    if parts:
        first = min(float(s["start"]) for s in parts)
        last = max(float(s["end"]) for s in parts)
        out["encode: parts, first start to last end"] = last - first
        workers = sorted({int(s["worker"]) for s in spans})
        idle = [
            (last - first) - sum(float(s["end"]) - float(s["start"]) for s in parts if s["worker"] == w)
            for w in workers
        ]
        out["encode: idle worker seconds among the parts"] = sum(idle)
        if finish is not None:
            out["encode: last part end to finish start"] = float(finish["start"]) - last
    if finish is not None:
        out["encode: finish step"] = float(finish["end"]) - float(finish["start"])
        out["encode: finish end to ready seen"] = ready - float(finish["end"])
    return out


def pin(pid: int, cpu: int) -> None:
    """Every thread of process ``pid`` on core ``cpu`` only (``taskset -a -p -c``); threads it starts
    later inherit it."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def fresh_memory_ms_per_mib(folder: Path, mib: int = 64) -> float:
    """CPU milliseconds per MiB of page cache filled for the first time: ``mib`` MiB written to a new
    file in ``folder`` in 4 MiB writes on this thread, then deleted. This VM hands memory that stayed
    free a couple of seconds back to its host, and filling it again costs host faults: ~1.8-2.4 ms per
    MiB "cold", ~0.2-0.3 "warm" (freed a moment before). Every new file pays it, ``zstd``'s and
    deltazoo's alike, so each repetition records it (BENCHMARKS.md "Fresh memory")."""
    path = folder / "fresh-memory-probe"
    block = b"\1" * (4 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.thread_time()
        for _ in range(mib // 4):
            os.write(fd, block)
        return (time.thread_time() - start) * 1000 / mib
    finally:
        os.close(fd)
        path.unlink()


def process_cpu_seconds() -> float:
    """This process's CPU seconds (user + system, all its threads): the SDK's side of a transfer."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sys_seconds(pid: int) -> float:
    """System CPU seconds of process ``pid`` so far (all its threads): the part that fresh pages cost."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def worker_pids(server: Server) -> list[int]:
    return [pid for name, pid in server.pids.items() if name.startswith("worker")]


@contextmanager
def serve(
    kind: str, work: Path, broker_db: int, pin_workers: bool = False, settings: dict[str, str] | None = None
) -> Iterator[Server]:
    """``embedded``: ``deltazoo serve`` on SQLite + an object directory, in-process jobs. ``stack-N``:
    Postgres (a temporary database), Redis, N Celery workers and ``weed mini`` as the S3 store
    (``tests.servers.own_stack``)."""
    from tests.servers import CeleryWorker, own_stack, start_api_server
    from tests.services import child_env

    env = {"DELTAZOO_TENSOR_CACHE_MB": "64", **(settings or {})}
    if kind == "embedded":
        api = start_api_server(work / "home", env)
        try:
            yield Server(api.url, None, {"API": api.process.pid}, True)
        finally:
            api.stop()
        return
    workers = int(kind.removeprefix("stack-"))
    with own_stack(work / "stack", broker_db, env) as stack:
        extra = []
        try:
            for n in range(2, workers + 1):
                folder = work / f"worker-{n}"
                folder.mkdir(parents=True, exist_ok=True)
                worker_env = child_env({**stack.env, "DELTAZOO_HOME": str(folder / "home")})
                extra.append(CeleryWorker(worker_env, folder).start())
            pids = {"API": stack.api.process.pid, "S3 server": stack.s3.process.pid}
            pids["worker 1"] = stack.worker.pid
            pids |= {f"worker {n}": w.pid for n, w in enumerate(extra, start=2)}
            if pin_workers:
                cores = sorted(os.sched_getaffinity(0))
                for n, pid in enumerate([stack.worker.pid, *(w.pid for w in extra)]):
                    pin(pid, cores[n % len(cores)])
            logs = (stack.worker.log_dir, *(w.log_dir for w in extra))
            yield Server(
                stack.url,
                stack.admin_token,
                pids,
                False,
                tuple(sorted(d.glob("worker-*.log"))[-1] for d in logs),
            )
        finally:
            for w in extra:
                w.stop()


def one_repetition(
    pair: Path,
    work: Path,
    rep: int,
    server: Server,
    profile: Path | None = None,
    push_only: bool = False,
) -> dict[str, float]:
    from benchmarks.memory import peak_rss_mib
    from deltazoo import Client

    ft_files = sorted((pair / "ft").glob("*.safetensors"))
    want = tree_sha256(pair / "ft")
    r: dict[str, float] = {"load average before": os.getloadavg()[0]}
    r["fresh memory ms/MiB, start"] = fresh_memory_ms_per_mib(work)
    r |= {f"{name} idle RSS MiB": peak_rss_mib(pid)[1] for name, pid in server.pids.items()}
    spy = start_profiler(server.pids["API"], profile) if profile is not None else None
    try:
        r["zstd -3 -T2"], r["zstd -d"] = zstd_files(ft_files, work)
        with Client(server.url, server.token, cache_dir=work / f"push-cache-{rep}") as c:
            r["push base"] = timed(lambda: c.push(pair / "base", "bench/base", quiet=True))
            api_cpu, client_cpu = cpu_seconds(server.pids["API"]), process_cpu_seconds()
            api_sys = sys_seconds(server.pids["API"])
            start = time.perf_counter()
            c.push(pair / "ft", "bench/ft", base="bench/base@1", quiet=True, wait=False)
            r["push fine-tune: upload"] = time.perf_counter() - start
            r["upload: API CPU s"] = cpu_seconds(server.pids["API"]) - api_cpu
            r["upload: API sys s"] = sys_seconds(server.pids["API"]) - api_sys
            api_sys = sys_seconds(server.pids["API"])
            r["upload: client CPU s"] = process_cpu_seconds() - client_cpu
            committed = time.time()
            workers_cpu = sum(cpu_seconds(pid) for pid in worker_pids(server))
            others = ("API", "S3 server")
            others_cpu = {n: cpu_seconds(server.pids[n]) for n in others if n in server.pids}
            assert c.last_push_job is not None
            c.wait(c.last_push_job, quiet=True)  # as ``push --wait`` waits: a long poll, ended when it ends
            status = c.version_info("bench/ft@1").status
            assert status == "ready", f"the fine-tune's encode {status}"
            r["push fine-tune"] = time.perf_counter() - start
            r["push fine-tune: encode"] = r["push fine-tune"] - r["push fine-tune: upload"]
            for n, before in others_cpu.items():
                r[f"encode: {n} CPU s"] = cpu_seconds(server.pids[n]) - before
            r["encode: API sys s"] = sys_seconds(server.pids["API"]) - api_sys
            if worker_pids(server):
                r["encode: workers CPU s"] = (
                    sum(cpu_seconds(pid) for pid in worker_pids(server)) - workers_cpu
                )
            if server.worker_logs:
                time.sleep(1)  # the worker logs the job's end just after committing it: let it
                spans = task_spans(server.worker_logs, committed)
                r |= timeline_figures(spans, r["push fine-tune: encode"])
                print(json.dumps({"timeline": spans}), flush=True)
        if push_only:
            with Client(server.url, server.token) as c:
                c.delete_model("bench/ft")
                c.delete_model("bench/base")
            r["load average after"] = os.getloadavg()[0]
            return r
        # the yardstick of the pulls, right before them: the median of several runs (one swings 3x here)
        r["fresh memory ms/MiB, before the pulls"] = fresh_memory_ms_per_mib(work)
        r["zstd -d (again)"] = zstd_files(ft_files, work, runs=ZSTD_D_RUNS)[1]
        with Client(server.url, server.token, cache_dir=work / f"cold-{rep}") as c:
            r["cold pull"] = timed(lambda: c.pull("bench/ft@1", work / f"cold-out-{rep}", quiet=True))
        assert tree_sha256(work / f"cold-out-{rep}") == want, "cold pull differs"
        with Client(server.url, server.token, cache_dir=work / f"delta-{rep}") as c:
            c.pull("bench/base@1", quiet=True)
            r["delta-only pull"] = timed(lambda: c.pull("bench/ft@1", work / f"delta-out-{rep}", quiet=True))
            assert tree_sha256(work / f"delta-out-{rep}") == want, "delta-only pull differs"
            if not server.fresh_per_repetition:  # the next repetition pushes the same bytes again
                c.delete_model("bench/ft")
                c.delete_model("bench/base")
        r |= {f"{name} peak RSS MiB": peak_rss_mib(pid)[1] for name, pid in server.pids.items()}
        r["load average after"] = os.getloadavg()[0]
    finally:
        stop_profiler(spy)
        # this repetition's caches and pulled trees only: a stack's own folder (``stack-1``) also ends
        # in ``-<n>``, and deleting it under its running S3 server hung the next repetition
        for name in ("push-cache", "cold", "cold-out", "delta", "delta-out"):
            p = work / f"{name}-{rep}"
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    r["codec encode 1 thread"], r["codec decode 1 thread"] = codec_alone(pair)
    return r


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def report(
    pair: Path, size_mib: int, dtype: str, shards: int, kind: str, runs: list[dict[str, float]]
) -> str:
    mib = sum(p.stat().st_size for p in (pair / "ft").glob("*.safetensors")) / (1 << 20)

    def col(key: str) -> list[float]:
        return [r[key] for r in runs if key in r]

    def ratio(a: str, b: str) -> list[float]:
        return [r[a] / r[b] for r in runs if a in r and b in r]

    rows = [
        ("`zstd -3 -T2` of the fine-tune", col("zstd -3 -T2"), None),
        ("`zstd -d` of that", col("zstd -d"), None),
        (
            f"`zstd -d` again before the pulls (median of {ZSTD_D_RUNS}; the pulls' yardstick)",
            col("zstd -d (again)"),
            None,
        ),
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
            "… of which the encode job (waited for as `push --wait` does)",
            col("push fine-tune: encode"),
            ratio("push fine-tune: encode", "zstd -3 -T2"),
        ),
        *(
            [("… the workers' CPU seconds (user + sys) in the encode", col("encode: workers CPU s"), None)]
            if "encode: workers CPU s" in runs[0]
            else []
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
    loads = col("load average before") + col("load average after")
    fresh = [
        f"{when} {spread(col(f'fresh memory ms/MiB, {when}'))}"
        for when in ("start", "before the pulls")
        if col(f"fresh memory ms/MiB, {when}")
    ]
    lines = [
        f"### {kind}: {dtype}, {size_mib} MiB ({mib:.0f} MiB of safetensors in {shards} file(s)), "
        f"{len(runs)} repetition(s), 1-minute load average {min(loads):.1f}–{max(loads):.1f}",
        "",
        "| step | seconds, median (range) | MB/s | × zstd in the same repetition |",
        "| --- | --- | --- | --- |",
    ]
    for label, secs, rat in rows:
        if not secs:  # --push-only: no pulls
            continue
        mbs = mib * 1.048576 / statistics.median(secs)
        lines.append(f"| {label} | {spread(secs)} | {mbs:.0f} | {spread(rat) if rat else '–'} |")
    lines.append("")
    if fresh:
        lines += [
            "Fresh memory, CPU ms per MiB of page cache first filled (~2 cold, ~0.3 warm; BENCHMARKS.md "
            f'"Fresh memory"): {", ".join(fresh)}.',
            "",
        ]
    for name in [k.removesuffix(" peak RSS MiB") for k in runs[0] if k.endswith(" peak RSS MiB")]:
        above = [r[f"{name} peak RSS MiB"] - r[f"{name} idle RSS MiB"] for r in runs]
        lines.append(
            f"{name} peak RSS {spread(col(f'{name} peak RSS MiB'), '{:.0f}')} MiB, "
            f"{spread(above, '{:.0f}')} MiB above its RSS before the repetition."
        )
    lines.append("")
    return "\n".join(lines)


def spread_of(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs if key in r]
    return spread(values) if values else "–"


def scale_out(kinds: list[str], runs: dict[str, list[dict[str, float]]], pinned: bool) -> str:
    """The encode job of the fine-tune on the second stack against the first, repetition by repetition
    (the servers took turns, so repetition i of each ran side by side)."""
    one, two = kinds
    pairs = list(zip(runs[one], runs[two], strict=True))
    ratios = [b["push fine-tune: encode"] / a["push fine-tune: encode"] for a, b in pairs]
    cpu = [b["encode: workers CPU s"] / a["encode: workers CPU s"] for a, b in pairs]
    loads = [r[k] for a, b in pairs for r in (a, b) for k in ("load average before", "load average after")]
    how = "workers pinned one core each (one lane each)" if pinned else "workers not pinned"
    steps = [k for k in runs[one][0] if k.startswith("encode: ") and k != "encode: workers CPU s"]
    return "\n".join(
        [
            "| where the encode's wall time went (s, median) | " + f"{one} | {two} |",
            "| --- | --- | --- |",
            *[
                f"| {k.removeprefix('encode: ')} | {spread_of(runs[one], k)} | {spread_of(runs[two], k)} |"
                for k in steps
            ],
            "",
            f"Scale-out, {how}: encode job of the fine-tune, {two} / {one} = {spread(ratios)} "
            f"(per repetition: {', '.join(f'{x:.2f}' for x in ratios)}); the workers' CPU seconds in it, "
            f"{two} / {one} = {spread(cpu)}; 1-minute load average {min(loads):.1f}–{max(loads):.1f}.",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, nargs="+", default=[1024])
    parser.add_argument("--dtype", choices=sorted(ITEMSIZE), nargs="+", default=["bf16"])
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=["embedded"],
        help="embedded, stack-1, stack-2 (full stack: Postgres, Redis, N Celery workers, weed mini)",
    )
    parser.add_argument(
        "--broker-db",
        type=int,
        default=15,
        help="Redis db of the first stack (after TEST_REDIS_DB_BASE); the next stacks take the dbs after it",
    )
    parser.add_argument(
        "--pin-workers",
        action="store_true",
        help="worker n of a stack on core n-1 only (one lane each): stack-N stands for N single-core hosts",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="DELTAZOO_X=VALUE",
        help="a setting for every server process (repeatable), e.g. DELTAZOO_ENCODE_THREADS=2",
    )
    parser.add_argument(
        "--push-only",
        action="store_true",
        help="only zstd and the two pushes in each repetition (no pulls, no codec-alone step)",
    )
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "deltazoo-throughput")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.md")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated pairs in --data")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the API during the first repetition into this file"
    )
    args = parser.parse_args()
    # a SIGTERM (``timeout``) unwinds like an exception, so the stacks' workers, API and S3 server stop:
    # left running, a stack's workers keep taking the next run's messages from the same Redis database
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("zstd") is None:
        parser.error("the zstd command is needed (apt-get install zstd)")

    settings = dict(kv.split("=", 1) for kv in args.setting)
    if any(not k.startswith("DELTAZOO_") for k in settings):
        parser.error("--setting takes DELTAZOO_NAME=VALUE")
    sections = []
    for dtype in args.dtype:
        for size in args.size_mib:
            pair = make_pair(args.data, size, dtype, args.shards, args.seed)
            runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in args.servers}
            with tempfile.TemporaryDirectory(prefix="throughput-") as tmp, ExitStack() as open_stacks:
                work = Path(tmp)
                # every full stack is started once, before the first repetition, and its models deleted
                # after each; the embedded server is started afresh for each repetition
                stacks = {
                    kind: open_stacks.enter_context(
                        serve(kind, work / kind, args.broker_db + n, args.pin_workers, settings)
                    )
                    for n, kind in enumerate(k for k in args.servers if k != "embedded")
                }
                for rep in range(args.reps):
                    for kind in args.servers:  # the servers take turns, repetition by repetition
                        profile = args.profile if rep == 0 and kind == args.servers[0] else None
                        if kind == "embedded":
                            home = work / f"embedded{rep}"
                            with serve(kind, home, args.broker_db, False, settings) as fresh:
                                runs[kind].append(
                                    one_repetition(pair, work, rep, fresh, profile, args.push_only)
                                )
                        else:
                            runs[kind].append(
                                one_repetition(pair, work, rep, stacks[kind], profile, args.push_only)
                            )
                        line = {
                            "server": kind,
                            "dtype": dtype,
                            "size_mib": size,
                            "rep": rep,
                            **runs[kind][-1],
                        }
                        print(json.dumps(line), flush=True)
            for kind in args.servers:
                sections.append(report(pair, size, dtype, args.shards, kind, runs[kind]))
                print(sections[-1], flush=True)
            if len(args.servers) == 2 and all(k.startswith("stack-") for k in args.servers):
                sections.append(scale_out(args.servers, runs, args.pin_workers))
                print(sections[-1], flush=True)
            if args.profile is not None and args.profile.is_file() and size == args.size_mib[0]:
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
