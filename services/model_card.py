"""Model cards: the YAML front matter of a README.md (``base_model``, ``base_model_relation``, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_CARD_BYTES = 1 << 20


def front_matter(readme: bytes) -> dict[str, Any] | None:
    """The YAML block between the leading ``---`` lines of a model card; None when there is none or it
    is not a mapping (a card's text is free: a broken header is ignored, never an error)."""
    if len(readme) > MAX_CARD_BYTES:
        return None
    try:
        text = readme.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    data, problem = _header(text)
    return data if problem is None else None


def _header(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The front matter of card ``text`` (None when it has none) and what is wrong with it (None: nothing)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None, None
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        return None, "the YAML header opened with '---' is never closed by another '---' line"
    return load_header("\n".join(lines[1:end]))


def load_header(yaml_text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A card header's YAML as a mapping (None when empty or unreadable), and what is wrong with it.

    Aliases (``*name``) are refused: a few hundred bytes of nested aliases expand to gigabytes (and a
    self-referencing one never ends), and a card's metadata has no need of them."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(
                    "aliases (*name) are not accepted in a model card's header"
                    f" (line {mark.line + 1}, column {mark.column + 1})"
                )
            return super().compose_node(parent, index)

    try:
        data = yaml.load(yaml_text, Loader=NoAliases)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        return None, f"the YAML header does not parse: {exc}".replace("\n", " ")
    except RecursionError:
        return None, "the YAML header is nested too deeply"
    if data is not None and not isinstance(data, dict):
        return None, "the YAML header must be a mapping (key: value lines)"
    return data, None


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
    return _header(readme)[1]
