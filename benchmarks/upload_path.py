"""The upload half of a push, alone: wall time and CPU seconds of the client and of the server processes.

A push of ``--pair``'s fine-tune folder (``benchmarks/throughput.py`` builds the pairs) to a fresh model,
``wait=False`` (the commit enqueues the encode; the clock and the CPU counters stop when ``push``
returns), then the encode is waited for and the model deleted so the next repetition uploads again
(nothing deduplicated). CPU seconds: the client is this process (``getrusage``: every upload thread);
the server is the API process, plus ``weed mini`` (the S3 store) on the full stack, from /proc.

    python benchmarks/upload_path.py --pair /tmp/deltazoo-throughput/bf16-256mib-4shards-seed0 \
        --servers embedded stack --reps 3

``--uncommitted``: the push's own steps up to the commit (list and hash the files, create the version,
send them with ``deltazoo/upload.py``), then the version is deleted instead of committed: no encode
runs between repetitions, so many repetitions fit in a minute and none of them shares the CPU with one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sys_seconds(pid: int) -> float:
    """System CPU seconds of a running process (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def serve(kind: str, work: Path, broker_db: int) -> Iterator[tuple[str, str | None, dict[str, int]]]:
    """(url, token, server pids by name) of an embedded server or a full stack with ``weed mini``."""
    from tests.servers import own_stack, start_api_server

    env = {"DELTAZOO_TENSOR_CACHE_MB": "64"}
    if kind == "embedded":
        api = start_api_server(work / "home", env)
        try:
            yield api.url, None, {"API": api.process.pid}
        finally:
            api.stop()
        return
    with own_stack(work / "stack", broker_db, env) as stack:
        yield stack.url, stack.admin_token, {"API": stack.api.process.pid, "S3": stack.s3.process.popen.pid}


def one_upload(url: str, token: str | None, pids: dict[str, int], folder: Path, rep: int) -> dict[str, float]:
    from deltazoo import Client

    name = f"bench/upload{rep}"
    with Client(url, token, cache_dir=folder.parent / f".upload-cache-{os.getpid()}") as client:
        load = os.getloadavg()[0]
        server_before = {k: cpu_seconds(p) for k, p in pids.items()}
        client_before = own_cpu()
        start = time.perf_counter()
        client.push(folder, name, quiet=True, wait=False)
        wall = time.perf_counter() - start
        client_cpu = own_cpu() - client_before
        server = {k: cpu_seconds(p) - server_before[k] for k, p in pids.items()}
        while (status := client.version_info(f"{name}@1").status) not in ("ready", "failed"):
            time.sleep(0.1)
        assert status == "ready", f"the encode of the upload {status}"
        client.delete_model(name)
    row = {"rep": rep, "wall s": wall, "client cpu s": client_cpu, "load": load}
    row |= {f"{k} cpu s": v for k, v in server.items()}
    return row


def one_uncommitted_upload(
    url: str, token: str | None, pids: dict[str, int], folder: Path, rep: int
) -> dict[str, float]:
    """What ``push`` does before its commit, timed the same way; the version is deleted afterwards."""
    from deltazoo import Client
    from deltazoo.checkpoint import scan_checkpoint
    from deltazoo.refs import Ref
    from deltazoo.upload import Uploader

    with Client(url, token, cache_dir=folder.parent / f".upload-cache-{os.getpid()}") as client:
        client.transport.json("POST", "/v1/models", json={"name": "bench/uncommitted", "exist_ok": True})
        load = os.getloadavg()[0]
        server_before = {k: cpu_seconds(p) for k, p in pids.items()}
        sys_before = {k: sys_seconds(p) for k, p in pids.items()}
        client_before = own_cpu()
        start = time.perf_counter()
        files = scan_checkpoint(folder, quiet=True, hash_up_to=client.upload_part_bytes)
        declared = [{"path": f.path, "size": f.size, "sha256": f.sha256 or None} for f in files]
        answer = client.transport.json(
            "POST", "/v1/models/bench/uncommitted/versions", json={"files": declared, "resume": False}
        )
        ref = Ref("bench", "uncommitted", str(answer["version"]["revision"]))
        Uploader(client.transport, client.upload_part_bytes).upload_all(ref, files, folder, quiet=True)
        wall = time.perf_counter() - start
        client_cpu = own_cpu() - client_before
        server = {k: cpu_seconds(p) - server_before[k] for k, p in pids.items()}
        server_sys = {k: sys_seconds(p) - sys_before[k] for k, p in pids.items()}
        client.transport.json("DELETE", f"/v1/models/bench/uncommitted/versions/{ref.rev}")
    row = {"rep": rep, "wall s": wall, "client cpu s": client_cpu, "load": load}
    row |= {f"{k} cpu s": v for k, v in server.items()}
    row |= {f"{k} sys s": v for k, v in server_sys.items()}
    return row


def main() -> int:
    from benchmarks.throughput import start_profiler, stop_profiler

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--pair", type=Path, required=True, help="a pair folder (its ft/ is pushed)")
    parser.add_argument("--servers", nargs="+", default=["embedded"], choices=["embedded", "stack"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles of the API and client, first rep")
    parser.add_argument("--broker-db", type=int, default=14, help="Redis db (after TEST_REDIS_DB_BASE)")
    parser.add_argument(
        "--uncommitted", action="store_true", help="delete each version instead of committing it (no encode)"
    )
    args = parser.parse_args()
    upload = one_uncommitted_upload if args.uncommitted else one_upload
    folder = args.pair / "ft"
    for kind in args.servers:
        with (
            tempfile.TemporaryDirectory(prefix="upload-path-") as tmp,
            serve(kind, Path(tmp), args.broker_db) as (url, token, pids),
        ):
            for rep in range(args.reps):
                spies = []
                if args.profile is not None and rep == 0:
                    spies = [
                        start_profiler(pid, Path(f"{args.profile}-{kind}-{who}.txt"))
                        for who, pid in (("api", pids["API"]), ("client", os.getpid()))
                    ]
                    time.sleep(1)
                try:
                    row = {"server": kind, **upload(url, token, pids, folder, rep)}
                finally:
                    for spy in spies:
                        stop_profiler(spy)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
