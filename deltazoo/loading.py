"""``deltazoo.load_model``: a transformers model straight from the registry, through the local cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deltazoo.errors import UsageError

if TYPE_CHECKING:
    from deltazoo.client import Client


def load_model(name: str, device: str = "cpu", client: Client | None = None, **kwargs: Any) -> Any:
    """Pull ``name`` (``org/name[@rev]``) into the cache and build it with
    ``transformers.AutoModelForCausalLM.from_pretrained`` from the local files only (no hub access).

    Extra keyword arguments go to ``from_pretrained`` (e.g. ``torch_dtype``).
    """
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise UsageError(
            "load_model needs transformers: pip install transformers", code="missing_dependency"
        ) from exc
    from deltazoo.client import Client

    owned = client is None
    c = client or Client()
    try:
        local_dir = c.pull(name)
    finally:
        if owned:
            c.close()
    if not (local_dir / "config.json").is_file():
        raise UsageError(
            f"{name} has no config.json, so transformers cannot build it; use "
            "Client.state_dict(name) for its tensors",
            code="not_a_transformers_model",
        )
    kwargs.setdefault("torch_dtype", "auto")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(local_dir), local_files_only=True, **kwargs)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise UsageError(
            f"transformers cannot build {name} as a causal LM ({type(exc).__name__}: {exc}); "
            "use Client.state_dict(name) for its tensors",
            code="not_a_transformers_model",
        ) from exc
    return model.to(device)  # type: ignore[arg-type]  # transformers types .to() for PreTrainedModel
