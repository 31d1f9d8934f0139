"""``deltazoo.load_model``: a transformers model straight from the registry, through the local cache; a
PEFT adapter is loaded onto its base with peft."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltazoo.errors import UsageError

if TYPE_CHECKING:
    from deltazoo.client import Client

ADAPTER_CONFIG = "adapter_config.json"


def load_model(
    name: str, device: str = "cpu", client: Client | None = None, *, base: str | None = None, **kwargs: Any
) -> Any:
    """Pull ``name`` (``org/name[@rev]``) into the cache and build it with
    ``transformers.AutoModelForCausalLM.from_pretrained`` from the local files only (no hub access).

    When ``name`` is a PEFT adapter (it holds ``adapter_config.json``), its base is pulled too and built
    first, and the adapter is loaded onto it with ``peft.PeftModel.from_pretrained`` (needs
    ``pip install peft``). The base is the version the adapter is stored under (its parent, relation
    ``adapter``), else ``base_model_name_or_path`` of its config when deltazoo holds that name; ``base``
    (``org/name[@rev]``) names it explicitly.

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
        parent: str | None = None
        base_ref = base_dir = None
        if c.offline:  # from the cache only: the lineage is not at hand
            local_dir = c.pull(name)
        else:
            info = c.version_info(name)
            local_dir = c.pull(f"{name.partition('@')[0]}@{info.revision}")  # a moving ref read once
            parent = info.parent
        adapter = (local_dir / ADAPTER_CONFIG).is_file()
        if adapter:
            base_ref = base or parent or _config_base(local_dir)
            if base_ref is None:
                raise UsageError(
                    f"{name} is a PEFT adapter stored without a base; pass base='org/name[@rev]'",
                    code="adapter_without_base",
                )
            base_dir = c.pull(base_ref)
    finally:
        if owned:
            c.close()
    kwargs.setdefault("torch_dtype", "auto")
    if base_ref is None or base_dir is None:  # not an adapter
        return _from_pretrained(AutoModelForCausalLM, name, local_dir, kwargs).to(device)
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise UsageError(
            f"{name} is a PEFT adapter: loading it onto its base needs peft (pip install peft), or pull "
            "the two with Client.pull and combine them yourself",
            code="missing_dependency",
        ) from exc
    model = _from_pretrained(AutoModelForCausalLM, base_ref, base_dir, kwargs)
    try:
        combined = PeftModel.from_pretrained(model, str(local_dir), local_files_only=True)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise UsageError(
            f"peft cannot load adapter {name} onto {base_ref} ({type(exc).__name__}: {exc})",
            code="adapter_mismatch",
        ) from exc
    return combined.to(device)


def _config_base(adapter_dir: Path) -> str | None:
    """``base_model_name_or_path`` of an adapter's config when it reads as a deltazoo name."""
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    named = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if isinstance(named, str) and named.count("/") == 1 and not named.startswith((".", "/")):
        return named
    return None


def _from_pretrained(auto: Any, name: str, local_dir: Path, kwargs: dict[str, Any]) -> Any:
    if not (local_dir / "config.json").is_file():
        raise UsageError(
            f"{name} has no config.json, so transformers cannot build it; use "
            "Client.state_dict(name) for its tensors",
            code="not_a_transformers_model",
        )
    try:
        return auto.from_pretrained(str(local_dir), local_files_only=True, **kwargs)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise UsageError(
            f"transformers cannot build {name} as a causal LM ({type(exc).__name__}: {exc}); "
            "use Client.state_dict(name) for its tensors",
            code="not_a_transformers_model",
        ) from exc
