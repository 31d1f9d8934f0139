"""The server's settings (API, workers, migrations, `deltazoo serve`/`worker`/`admin audit`); no other
server module reads the environment. The client's own few (URL, token, cache) are ``deltazoo.settings``.

Every field is read from an environment variable with the ``DELTAZOO_`` prefix
(``DELTAZOO_DATABASE_URL``, ``DELTAZOO_S3_ENDPOINT``, ...).

Embedded default: with no database, broker or S3 endpoint named, deltazoo keeps a SQLite
file and an object directory under ``home`` and runs jobs in an in-process worker.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DELTAZOO_", extra="ignore")

    # --- where things live ---
    home: Path = Field(default=Path(".deltazoo"), description="embedded default's directory")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in home")
    broker_url: str | None = Field(default=None, description="Celery broker (Redis); default in-process")
    s3_endpoint: str | None = Field(default=None, description="host:port of an S3 server; default local dir")
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "deltazoo"
    s3_secure: bool = False
    s3_region: str | None = None

    # --- server behaviour ---
    auth: bool | None = Field(
        default=None,  # resolved by _auth_rule: always a bool once built
        description="require tokens; default: on unless the database is SQLite (see docs/REST.md)",
    )
    admin_token: str | None = Field(default=None, description="admin token created on first start")
    max_chain_depth: int = Field(default=8, description="re-anchor a delta chain deeper than this")
    worker_concurrency: int = 1
    encode_threads: int = Field(
        default=0, description="tensors one encode job codes side by side; 0 = one per core"
    )
    encode_split: bool = Field(
        default=True,
        description="Celery workers split a version's encode into part jobs (weight files, tensor ranges) "
        "that any worker runs",
    )
    encode_part_mb: int = Field(
        default=128,
        ge=1,
        description="a split encode cuts a weight file larger than this into tensor ranges of about this "
        "size (MiB)",
    )
    job_heartbeat_s: float = Field(default=10.0, description="Celery job heartbeat; 3 missed: sent again")
    job_commit_every_s: float = Field(
        default=1.0, ge=0, description="a running encode commits its work and progress at most this often (s)"
    )
    direct_io: bool = Field(
        default=True,
        description="a local object store stages uploads, the encode reads them and writes delta blobs, and "
        "blobs not in the page cache are read, around it (O_DIRECT, reused aligned buffers); off: through it",
    )
    tensor_cache_mb: int = Field(default=64, description="LRU of decoded parent tensors, per process (MiB)")
    max_tensor_mb: int = Field(default=65536, ge=1, description="largest tensor an upload may hold (MiB)")
    max_tensors: int = Field(default=100_000, ge=1, description="most tensors one version may hold")
    tensor_chunk_mb: int = Field(
        default=8, ge=1, description="tensors larger than this are stored in chunks of it (MiB)"
    )
    max_pending_versions: int = Field(
        default=20, ge=1, description="versions one token may hold created and not committed (429 past it)"
    )
    max_concurrent_uploads: int = Field(
        default=16, ge=1, description="file uploads one token may stream at once, per API process (429)"
    )
    max_text_bytes: int = Field(default=4 << 20, description="largest evaluation text set accepted (bytes)")
    eval_device: str = Field(default="cpu", description="torch device the evaluate job runs models on")
    eval_max_versions: int = Field(default=200, description="newest ready versions a new text set evaluates")
    orphan_grace_hours: float = Field(
        default=6.0, description="objects no row names are swept once older than this (hours)"
    )
    orphan_sweep_hours: float = Field(
        default=6.0, description="the API sweeps the object store at start and then this often; 0: never"
    )
    staging_expiry_hours: float = Field(
        default=24.0, description="versions left uncommitted longer than this are removed with their uploads"
    )
    hub_large_files: Literal["inline", "lfs"] = Field(
        default="inline",
        description="Hub uploads: weight files asked inline (any client) or through Git LFS (clients"
        " without Xet: HF_HUB_DISABLE_XET=1)",
    )

    @model_validator(mode="after")
    def _auth_rule(self) -> Settings:
        """The one auth rule: DELTAZOO_AUTH when set; otherwise on exactly when DELTAZOO_DATABASE_URL
        names a database other than SQLite (a shared, full-stack deployment)."""
        if self.auth is None:
            url = self.database_url or ""
            self.auth = bool(url) and not url.startswith("sqlite")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'registry.db').resolve()}"

    @property
    def objects_dir(self) -> Path:
        return self.home / "objects"

    @property
    def embedded(self) -> bool:
        """True when no broker is named: jobs run in the serving process."""
        return self.broker_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
