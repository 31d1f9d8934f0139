"""Waiting on the server: a job until it ends (with a progress bar), a version's profiles until built."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from deltazoo.errors import JobFailedError
from deltazoo.models import Job
from deltazoo.transport import progress_bar

if TYPE_CHECKING:
    from deltazoo.client import Client


HOLD_S = 1.0  # how long each status request lets the server hold its answer (the bar moves as often)
QUEUED_NOTE_S = 30.0  # a job still queued after this long: say why the bar does not move


def wait_for_job(client: Client, job: Job | int | str, *, timeout: float | None, quiet: bool) -> Job:
    """``Client.wait``: each status request is a long poll (``GET /v1/jobs/{id}?wait=``), answered as
    soon as the job ends, so the end is seen at once and nothing polls the server while it works. A
    server that answers at once anyway (one without the long poll) is polled, backing off to 0.5 s."""
    current = job if isinstance(job, Job) else client.job(job)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.1
    bar = progress_bar(100, f"{current.kind or 'job'} {current.target or current.id}", quiet=quiet, unit="%")
    started, noted = time.monotonic(), quiet
    try:
        while not current.done:
            if not noted and current.status == "queued" and time.monotonic() - started > QUEUED_NOTE_S:
                noted = True
                print(
                    f"\njob {current.id} is still queued after {QUEUED_NOTE_S:g} s: no worker has taken it."
                    " On the full stack, check that a worker runs (`deltazoo worker`) and reaches the"
                    " broker; the job is kept and runs once one does (Ctrl-C stops waiting, not the job)",
                    file=sys.stderr,
                )
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"job {current.id} still {current.status} after {timeout:g} s; "
                    f"check it later with Client.job({current.id!r})"
                )
            hold = HOLD_S if left is None else min(HOLD_S, left)
            asked = time.monotonic()
            current = client.job(current.id, wait=hold)
            if not current.done and time.monotonic() - asked < hold / 2:  # not held: poll
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)  # a finished job is seen within half a second
            bar.n = round(100 * current.progress)
            bar.refresh()
    finally:
        bar.close()
    if current.status == "failed":
        raise JobFailedError(
            f"job {current.id} ({current.kind} {current.target}) failed: {current.error}",
            job_id=current.id,
        )
    return current


def wait_for_profiles(
    client: Client, ref: str, profiles: Sequence[str], *, timeout: float | None, quiet: bool
) -> None:
    """``Client.wait_profiles``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.2
    profiles = [_as_stored(p) for p in profiles]
    while True:
        version = client.version_info(ref)
        pending = [a for p in profiles if (a := version.artifact(p)) and a.status not in ("ready", "failed")]
        failed = [a for p in profiles if (a := version.artifact(p)) and a.status == "failed"]
        if failed:
            raise JobFailedError(
                f"{ref}: profile {failed[0].profile} failed to build "
                f"({failed[0].status_message or 'no reason recorded'})"
            )
        if not pending:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"{ref}: profiles {[a.profile for a in pending]} not ready after {timeout:g} s"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def _as_stored(profile: str) -> str:
    """``profile`` as the server keeps it (canonical): a version's artifacts are found by that name."""
    from deltazoo.compression.deltadq import parse_profile

    try:
        return str(parse_profile(profile))
    except ValueError:
        return profile

