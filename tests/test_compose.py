"""docker-compose.yml, the Dockerfile and the README agree with the code (Docker itself cannot run here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deltazoo.registry.settings import Settings

from deltazoo.settings import Settings as ClientSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the server extra (transformers)")
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _setting_names(*classes: type) -> set[str]:
    return {f"DELTAZOO_{name.upper()}" for cls in classes or (Settings,) for name in cls.model_fields}


def test_compose_has_the_full_stack(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "api", "worker"} <= services.keys()
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert services["api"]["command"][:4] == ["deltazoo", "serve", "--host", "0.0.0.0"]
    assert services["worker"]["command"] == ["deltazoo", "worker", "--name", "worker"]
    for name in ("postgres", "redis", "minio", "api", "worker"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert "mc mb" in " ".join(services["minio-init"]["entrypoint"])


def test_gpu_worker_is_optional(compose: dict) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"], "a GPU reservation must not be needed by a plain `docker compose up`"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_every_compose_variable_is_a_setting(compose: dict) -> None:
    settings = _setting_names()
    seen = set()
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("DELTAZOO_"):
                assert key in settings, f"{name}: {key} is not a field of registry/settings.py"
                seen.add(key)
    assert {"DELTAZOO_DATABASE_URL", "DELTAZOO_BROKER_URL", "DELTAZOO_S3_ENDPOINT"} <= seen


def test_api_and_worker_share_one_configuration(compose: dict) -> None:
    services = compose["services"]
    env = services["api"]["environment"]
    assert services["worker"]["environment"] == env == services["worker-gpu"]["environment"]
    assert env["DELTAZOO_DATABASE_URL"].startswith("postgresql+psycopg2://"), "psycopg2 is the driver"
    assert env["DELTAZOO_S3_ENDPOINT"] == "minio:9000"
    assert env["DELTAZOO_AUTH"] == "true"


def test_dockerfile_installs_torch_before_the_project() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    assert lines[[i for i, line in enumerate(lines) if line.startswith("FROM")][0]] == "FROM python:3.11-slim"
    torch_at = next(i for i, line in enumerate(lines) if '"torch==${TORCH_VERSION}"' in line)
    project_at = next(i for i, line in enumerate(lines) if 'pip install ".[${EXTRAS}]"' in line)
    assert torch_at < project_at


def test_readme_names_only_real_settings() -> None:
    named = set(re.findall(r"DELTAZOO_[A-Z0-9_]+", (ROOT / "README.md").read_text()))
    assert named, "the README documents no setting"
    known = _setting_names(Settings, ClientSettings)  # the server's and the client's
    assert named <= known, f"README names unknown settings: {sorted(named - known)}"
