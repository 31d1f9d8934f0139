"""The client's settings (SDK, CLI, inference host): where the server is, which token, where the cache is.

Every field is read from an environment variable with the ``DELTAZOO_`` prefix (``DELTAZOO_URL``,
``DELTAZOO_TOKEN``, ...). The server's settings (database, object store, broker, limits) are
``deltazoo.registry.settings``: the client never needs them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from deltazoo.errors import UsageError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DELTAZOO_", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    token: str | None = None
    cache: Path = Field(default=Path.home() / ".cache" / "deltazoo")
    retries: int = Field(default=5, description="re-sends after 429/5xx/connection errors (backoff)")
    upload_part_mb: int = Field(default=64, description="larger files are sent in resumable parts")
    outage_wait_s: float = Field(
        default=120.0,
        ge=0,
        description="how long an upload waits for a server that stopped answering (an API restart),"
        " counted from its last answer; then the push fails and, run again, resumes",
    )
    offline: bool = Field(default=False, description="pulls come from the cache only, no request")
    direct_io: bool = Field(
        default=True, description="pulls write big files around the page cache (O_DIRECT, deltazoo.direct_io)"
    )


def settings_problem(exc: ValidationError) -> str:
    """A settings error in a line a user acts on: which ``DELTAZOO_*`` variable, what it holds, why."""
    parts = []
    for e in exc.errors():
        field = str(e["loc"][0]) if e.get("loc") else "?"
        parts.append(f"DELTAZOO_{field.upper()}={e.get('input')!r}: {e.get('msg', 'invalid')}")
    return "invalid setting " + "; ".join(parts) + " (fix or unset the environment variable)"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise UsageError(settings_problem(exc), code="invalid_setting") from None
