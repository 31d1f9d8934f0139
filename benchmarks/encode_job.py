"""The encode job of a push alone: CPU seconds, wall time and peak memory of ``run_job`` for a fine-tune
coded against its base, on the embedded default (SQLite + an object directory), in this process.

The pair is ``benchmarks/throughput.py``'s (generated once into ``--data``). Per repetition: a fresh home,
the base pushed and encoded (not timed), the fine-tune uploaded (not timed), then its encode job run to the
end in this thread (``workers.jobs.run_job``, ``--threads`` lanes) while this process's CPU time
(``time.process_time``: every thread), wall time and peak RSS above the level before the job (VmHWM, reset
first through ``/proc/self/clear_refs``) are recorded. ``--profile FILE`` records the job with py-spy
(raw collapsed stacks, all threads, idle excluded). The 1-minute load average is printed next to each
figure: the machine is shared.

    python benchmarks/encode_job.py --size-mib 256 --shards 4 --reps 3 --data /tmp/encode-job-data
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _push(client: Any, name: str, folder: Path, base: str | None) -> int:
    """Create a version of ``folder``'s files, upload them (streamed from disk), commit; the job id."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    declared = []
    for p in files:
        h = hashlib.sha256()
        with p.open("rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        declared.append({"path": p.name, "size": p.stat().st_size, "sha256": h.hexdigest()})
    r = client.post("/v1/models", json={"name": name, "exist_ok": True})
    assert r.status_code in (200, 201), r.text
    r = client.post(f"/v1/models/{name}/versions", json={"base": base, "files": declared, "profiles": []})
    assert r.status_code == 201, r.text
    created = r.json()
    rev = created["version"]["revision"]
    for up in created["uploads"]:
        if up["needed"]:
            path = folder / up["path"]
            with path.open("rb") as f:
                r = client.put(
                    f"/v1/models/{name}/versions/{rev}/files/{up['path']}",
                    content=f,
                    headers={"Content-Length": str(path.stat().st_size)},
                )
            assert r.status_code == 200, r.text
    r = client.post(f"/v1/models/{name}/versions/{rev}/commit")
    assert r.status_code == 202, r.text
    return int(r.json()["job"]["id"])


def one_repetition(pair: Path, work: Path, threads: int, profile: Path | None) -> dict[str, float]:
    from deltazoo.api.app import create_app
    from deltazoo.registry.db import dispose_engines
    from deltazoo.registry.objectstore import LocalObjectStore
    from deltazoo.registry.settings import Settings
    from deltazoo.workers.jobs import JobContext, run_job
    from fastapi.testclient import TestClient

    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(
        home=home, database_url=None, broker_url=None, s3_endpoint=None, auth=False, encode_threads=threads
    )
    with TestClient(create_app(settings)) as client:
        client.app.state.dispatcher.stop()  # type: ignore[attr-defined]  # jobs run here, in this thread
        ctx = JobContext(
            settings, LocalObjectStore(settings.objects_dir, direct_io=settings.direct_io), lambda _id: None
        )
        assert run_job(_push(client, "bench/base", pair / "base", None), ctx) == "succeeded"
        job = _push(client, "bench/ft", pair / "ft", "bench/base@1")
        os.sync()  # the uploads' writeback does not land inside the timed job
        load = os.getloadavg()[0]
        rss0 = _status_kib("VmRSS")
        reset = _reset_peak_rss()
        spy = _start_profiler(profile) if profile else None
        perf = _start_perf() if os.environ.get("ENCODE_JOB_PERF") else None
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        status = run_job(job, ctx)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        faults = usage.ru_minflt - usage0.ru_minflt
        system = usage.ru_stime - usage0.ru_stime
        if perf is not None:
            perf.send_signal(2)
            perf.wait(timeout=120)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=120)
        assert status == "succeeded", status
        hwm = _status_kib("VmHWM") / 1024 if reset else float("nan")
        peak = hwm - rss0 / 1024
        detail = client.get("/v1/models/bench/ft/versions/1").json()
        blobs = hashlib.sha256(" ".join(sorted(o.key for o in ctx.store.list_objects("blobs/"))).encode())
    dispose_engines()  # the pooled SQLite connection would keep the deleted database open for the next one
    shutil.rmtree(home, ignore_errors=True)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "sys_s": system,
        "peak_mib": peak,
        "hwm_mib": hwm,
        "faults_k": faults / 1000,
        "load": load,
        "load_after": os.getloadavg()[0],
        "stored_mib": detail["stored_bytes"] / 2**20,
        "blobs": blobs.hexdigest()[:12],
    }


def _start_profiler(out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "--pid", str(os.getpid()), "--rate", "100", "--format", "raw", "-o", str(out)]
    if os.environ.get("ENCODE_JOB_IDLE"):  # waiting threads too (where the wall time goes)
        argv.append("--idle")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return proc


def _start_perf() -> subprocess.Popen[bytes]:
    """``perf record`` of this process during the job: ``ENCODE_JOB_PERF`` = the events (``cycles``,
    ``page-faults``), into ``ENCODE_JOB_PERF_OUT`` (default ``perf.data``), call graphs by frame pointer."""
    out = os.environ.get("ENCODE_JOB_PERF_OUT", "perf.data")
    events = os.environ["ENCODE_JOB_PERF"]
    argv = ["perf", "record", "-q", "-e", events, "-g", "-p", str(os.getpid()), "-o", out]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # perf attaches
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("/tmp/deltazoo-throughput"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the last repetition")
    args = parser.parse_args()
    os.environ.setdefault("DELTAZOO_TENSOR_CACHE_MB", "64")  # as benchmarks/throughput.py's servers

    from benchmarks.throughput import make_pair

    pair = make_pair(args.data, args.size_mib, args.dtype, args.shards, args.seed)
    print(f"pair {pair}; {args.threads} lanes; {args.reps} repetitions", flush=True)
    columns = [
        "rep",
        "load before / after",
        "encode job wall s",
        "CPU s (user+sys, all threads) / of it sys",
        "page faults (thousands)",
        "peak RSS above start / peak RSS MiB",
        "stored MiB",
        "blob names (sha256)",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    with tempfile.TemporaryDirectory(prefix="encode-job-") as tmp:
        for rep in range(args.reps):
            last = rep == args.reps - 1
            m = one_repetition(pair, Path(tmp), args.threads, args.profile if last else None)
            print(
                f"| {rep + 1} | {m['load']:.1f} / {m['load_after']:.1f} | {m['wall_s']:.2f} "
                f"| {m['cpu_s']:.2f} / {m['sys_s']:.2f} | {m['faults_k']:.0f} "
                f"| {m['peak_mib']:.0f} / {m['hwm_mib']:.0f} "
                f"| {m['stored_mib']:.1f} | {m['blobs']} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
