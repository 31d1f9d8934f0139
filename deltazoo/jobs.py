"""Waiting on the server: a job until it ends (with a progress bar), a version's profiles until built."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from deltazoo.errors import JobFailedError
from deltazoo.models import Job
from deltazoo.transport import progress_bar

if TYPE_CHECKING:
    from deltazoo.client import Client


def wait_for_job(client: Client, job: Job | int | str, *, timeout: float | None, quiet: bool) -> Job:
    """``Client.wait``."""
    current = job if isinstance(job, Job) else client.job(job)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.1
    bar = progress_bar(100, f"{current.kind or 'job'} {current.target or current.id}", quiet=quiet, unit="%")
    try:
        while not current.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {current.id} still {current.status} after {timeout:g} s; "
                    f"check it later with Client.job({current.id!r})"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)  # a finished job is seen within half a second
            current = client.job(current.id)
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
    while True:
        version = client.version_info(ref)
        pending = [a for p in profiles if (a := version.artifact(p)) and a.status not in ("ready", "failed")]
        failed = [a for p in profiles if (a := version.artifact(p)) and a.status == "failed"]
        if failed:
            raise JobFailedError(
                f"{ref}: profile {failed[0].profile} failed to build "
                f"({failed[0].quality or 'see the server log'})"
            )
        if not pending:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"{ref}: profiles {[a.profile for a in pending]} not ready after {timeout:g} s"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
