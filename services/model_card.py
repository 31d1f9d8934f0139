"""Model cards: the YAML front matter of a README.md (``base_model``, ``base_model_relation``, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_CARD_BYTES = 1 << 20


def front_matter(readme: bytes) -> dict[str, Any] | None:
    """The YAML block between the leading ``---`` lines of a model card; None when there is none or it
    is not a mapping (a card's text is free: a broken header is ignored, never an error)."""
    import yaml

    if len(readme) > MAX_CARD_BYTES:
        return None
    try:
        text = readme.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        return None
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def card_data(readme: bytes) -> dict[str, Any] | None:
    """The front matter as JSON-safe ``cardData`` (dates and other YAML types as strings)."""
    data = front_matter(readme)
    return _json_safe(data) if data is not None else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True)
class CardLineage:
    """What a card says about its parent: ``base_model`` (one name) and ``base_model_relation``."""

    base_model: str | None
    relation: str | None


def card_lineage(readme: bytes) -> CardLineage:
    data = front_matter(readme) or {}
    base = data.get("base_model")
    if isinstance(base, list):
        base = base[0] if len(base) == 1 else None  # several bases (a merge): no single parent
    relation = data.get("base_model_relation")
    return CardLineage(
        base if isinstance(base, str) and base.strip() else None,
        relation if isinstance(relation, str) and relation.strip() else None,
    )


def front_matter_problem(readme: str) -> str | None:
    """What is wrong with a card's YAML header (``POST /api/validate-yaml``), or None."""
    import yaml

    lines = readme.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        return "the YAML header opened with '---' is never closed by another '---' line"
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        return f"the YAML header does not parse: {exc}".replace("\n", " ")
    if data is not None and not isinstance(data, dict):
        return "the YAML header must be a mapping (key: value lines)"
    return None
