"""Text to token ids and back for a host: the base's own tokenizer files when the registry holds
them (transformers), else byte-level (vocabulary ≥ 256, token id = byte, as the zoo's models)."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Protocol

from .errors import HostError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class Decoder(Protocol):
    def feed(self, token: int) -> str: ...
    def flush(self) -> str: ...


class Tokenizer(Protocol):
    eos_ids: set[int]
    has_chat_template: bool

    def encode(self, text: str) -> list[int]: ...
    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]: ...
    def decoder(self) -> Decoder: ...


class _ByteDecoder:
    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(bytes([token])) if 0 <= token < 256 else ""

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class ByteTokenizer:
    """UTF-8 bytes as token ids, BOS first when the model has one."""

    has_chat_template = False

    def __init__(self, bos: int | None, eos: set[int]) -> None:
        self.bos = bos
        self.eos_ids = eos

    def encode(self, text: str) -> list[int]:
        return ([self.bos] if self.bos is not None else []) + list(text.encode("utf-8"))

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        raise HostError(400, "no_chat_template",
                        "this model has no chat template (no tokenizer files in the registry); "
                        "use /v1/completions with a prompt")

    def decoder(self) -> Decoder:
        return _ByteDecoder()


class _HFDecoder:
    """Decodes the whole completion each step and returns the new suffix (merges and multi-byte
    characters come out right); holds back a trailing replacement character until it resolves."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._sent = 0

    def _text(self) -> str:
        return str(self._tok.decode(self._ids, skip_special_tokens=True))

    def feed(self, token: int) -> str:
        self._ids.append(token)
        text = self._text()
        if text.endswith("\ufffd"):
            return ""
        new, self._sent = text[self._sent :], len(text)
        return new

    def flush(self) -> str:
        text = self._text()
        new, self._sent = text[self._sent :], len(text)
        return new


class HFTokenizer:
    def __init__(self, folder: Path, eos: set[int]) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(folder))
        if self._tok.eos_token_id is not None:
            eos = eos | {int(self._tok.eos_token_id)}
        self.eos_ids = eos
        self.has_chat_template = bool(getattr(self._tok, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text)["input_ids"])

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        if not self.has_chat_template:
            raise HostError(400, "no_chat_template",
                            "this model's tokenizer has no chat template; use /v1/completions")
        ids: Any = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # newer transformers answer a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def decoder(self) -> Decoder:
        return _HFDecoder(self._tok)


def _eos(config: dict[str, Any], folder: Path) -> set[int]:
    ids: set[int] = set()
    sources = [config]
    gen = folder / "generation_config.json"
    if gen.is_file():
        sources.append(json.loads(gen.read_text()))
    for src in sources:
        value = src.get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return ids


def load_tokenizer(folder: Path, config: dict[str, Any]) -> Tokenizer:
    """The tokenizer of a pulled base folder (see the module docstring)."""
    eos = _eos(config, folder)
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return HFTokenizer(folder, eos)
    vocab = int(config.get("vocab_size") or 0)
    if vocab < 256:
        raise ValueError(
            f"the base has no tokenizer files and a vocabulary of {vocab} (< 256), so it is not byte-level; "
            "push the tokenizer files (tokenizer.json, tokenizer_config.json) with the base"
        )
    bos = config.get("bos_token_id")
    return ByteTokenizer(int(bos) if isinstance(bos, int) else None, eos)
