"""Safetensors reading that validates before it trusts (pure: bytes in, records out).

A safetensors file is ``u64 little-endian header length N`` + ``N`` bytes of UTF-8 JSON + the data
section. The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the data section) and may hold ``"__metadata__"`` (str -> str). deltazoo accepts a file
only when every tensor's dtype is known, ``prod(shape) * itemsize == end - begin``, the offsets cover
the data section from 0 contiguously with no overlap and no gap, and the file is exactly as long as
the header says.

Three ways in: ``parse_header`` (the first bytes of a file), ``SafetensorsStreamValidator`` (feed the
chunks of an upload as they arrive) and ``iter_tensors`` (read tensor by tensor through a ranged
reader, never the whole file).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from deltazoo.compression.dtypes import DTYPES

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_NAME_CHARS = 500  # the registry's column width for tensor names
INDEX_SUFFIX = ".safetensors.index.json"


class SafetensorsError(ValueError):
    """The bytes are not a well-formed safetensors file; the message says what is wrong."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset in the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    header_bytes: bytes  # the exact first 8 + N bytes of the file
    tensors: tuple[TensorEntry, ...]  # in offset order
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def header_size(self) -> int:
        return len(self.header_bytes)

    @property
    def data_size(self) -> int:
        return self.tensors[-1].end if self.tensors else 0

    @property
    def file_size(self) -> int:
        return self.header_size + self.data_size


def is_safetensors_path(path: str) -> bool:
    return path.endswith(".safetensors")


def is_index_file(path: str) -> bool:
    """True for a sharded checkpoint's ``*.safetensors.index.json``."""
    return path.endswith(INDEX_SUFFIX)


def header_length(first8: bytes, max_header: int = MAX_HEADER_BYTES) -> int:
    """The JSON length N announced by the first 8 bytes of a file."""
    if len(first8) < 8:
        raise SafetensorsError(
            f"file is {len(first8)} bytes; a safetensors file starts with an 8-byte length"
        )
    (n,) = struct.unpack("<Q", first8[:8])
    if n > max_header:
        raise SafetensorsError(f"header of {n} bytes is larger than the {max_header}-byte limit")
    if n < 2:
        raise SafetensorsError(f"header of {n} bytes cannot hold a JSON object")
    return n


MAX_EXTENT = 2**63 - 1  # the largest element count (and stride) torch and safetensors can index


def _shape(name: str, raw: object) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise SafetensorsError(f"tensor {name!r}: shape must be a list of integers, got {raw!r}")
    if any(d < 0 for d in raw):
        raise SafetensorsError(f"tensor {name!r}: shape {raw} has a negative dimension")
    if math.prod(d for d in raw if d) > MAX_EXTENT:  # strides must fit int64, an empty tensor's too
        raise SafetensorsError(
            f"tensor {name!r}: shape {raw} is too large (its dimensions multiply past 2**63 - 1)"
        )
    return tuple(raw)


def _entry(name: str, raw: object) -> TensorEntry:
    if len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise SafetensorsError(
            f"tensor {name[:80]!r}...: names must be at most {MAX_NAME_CHARS} characters without NUL "
            f"(this one has {len(name)}); rename the tensor"
        )
    if not isinstance(raw, dict):
        raise SafetensorsError(f"tensor {name!r}: entry must be an object, got {type(raw).__name__}")
    missing = {"dtype", "shape", "data_offsets"} - raw.keys()
    if missing:
        raise SafetensorsError(f"tensor {name!r}: entry lacks {', '.join(sorted(missing))}")
    dtype = raw["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SafetensorsError(
            f"tensor {name!r}: unknown dtype {dtype!r}; deltazoo stores {', '.join(sorted(DTYPES))}"
        )
    shape = _shape(name, raw["shape"])
    offsets = raw["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
    ):
        raise SafetensorsError(
            f"tensor {name!r}: data_offsets must be two non-negative integers, got {offsets!r}"
        )
    begin, end = offsets
    if end < begin:
        raise SafetensorsError(f"tensor {name!r}: data_offsets end {end} is before begin {begin}")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if expected != end - begin:
        raise SafetensorsError(
            f"tensor {name!r}: shape {list(shape)} of {dtype} needs {expected} bytes "
            f"but data_offsets [{begin}, {end}] span {end - begin}"
        )
    return TensorEntry(name, dtype, shape, begin, end)


MAX_JSON_DEPTH = 32
MAX_JSON_INT_DIGITS = 20  # an int64 has at most 19 digits (and a sign)


def _bounded_int(text: str) -> int:
    if len(text) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits (at most {MAX_JSON_INT_DIGITS})")
    return int(text)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _check_strings(value: object, what: str, depth: int = 0) -> None:
    """Depth at most ``MAX_JSON_DEPTH``; every string (keys too) UTF-8 encodable (no lone surrogate
    escapes such as "\\ud800") and free of NUL, so the database and file systems can hold it."""
    if depth > MAX_JSON_DEPTH:
        raise SafetensorsError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, what, depth + 1)
            _check_strings(v, what, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v, what, depth + 1)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SafetensorsError(f"{what} holds a string with a lone surrogate escape") from None
        if "\x00" in value:
            raise SafetensorsError(f"{what} holds a string with a NUL character; names must be without NUL")
    elif isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise SafetensorsError(f"{what} holds an integer outside 64 bits")


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object whose keys are all different (JSON would keep only a duplicate's last value: a header
    naming a tensor twice describes bytes no name points to)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def strict_json(raw: bytes, what: str) -> object:
    """JSON from an untrusted file, refused with ``SafetensorsError`` (never a Python limit): UTF-8,
    depth, integer length, NaN/Infinity, duplicate keys, lone surrogates and NUL in strings."""
    try:
        doc = json.loads(
            raw.decode("utf-8"),
            parse_int=_bounded_int,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except UnicodeDecodeError as exc:
        raise SafetensorsError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except _DuplicateKey as exc:
        raise SafetensorsError(
            f"{what} names {str(exc)[:200]!r} twice; every tensor name (and key) must be unique"
        ) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise SafetensorsError(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    _check_strings(doc, what)
    return doc


class TooManyTensors(SafetensorsError):
    """A header declaring more tensors than the caller's ``max_tensors``."""


def parse_header(
    first_bytes: bytes, max_header: int = MAX_HEADER_BYTES, max_tensors: int | None = None
) -> SafetensorsHeader:
    """Parse and check the header at the start of ``first_bytes`` (which may hold more of the file).
    ``max_tensors``: more entries than this are refused before any of them is checked."""
    n = header_length(first_bytes, max_header)
    if len(first_bytes) < 8 + n:
        raise SafetensorsError(f"file ends inside its {n}-byte header (only {len(first_bytes) - 8} bytes)")
    doc = strict_json(first_bytes[8 : 8 + n], "header")
    if not isinstance(doc, dict):
        raise SafetensorsError(f"header must be a JSON object, got {type(doc).__name__}")
    metadata = doc.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata  # safetensors writes null for "no metadata"
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError("__metadata__ must map strings to strings")
    if max_tensors is not None and len(doc) > max_tensors:
        raise TooManyTensors(
            f"header declares {len(doc)} tensors, more than the server's limit of {max_tensors} per version "
            "(DELTAZOO_MAX_TENSORS); push fewer, larger tensors or ask the admin"
        )
    entries = sorted((_entry(name, raw) for name, raw in doc.items()), key=lambda e: (e.begin, e.end))
    position = 0
    for e in entries:
        if e.begin < position:
            raise SafetensorsError(
                f"tensor {e.name!r}: data_offsets [{e.begin}, {e.end}] overlap the tensor before"
            )
        if e.begin > position:
            raise SafetensorsError(
                f"tensor {e.name!r}: data_offsets begin at {e.begin}, leaving a gap after byte {position}"
            )
        position = e.end
    return SafetensorsHeader(bytes(first_bytes[: 8 + n]), tuple(entries), metadata)


class SafetensorsStreamValidator:
    """Check a safetensors file chunk by chunk while it streams in; memory bounded by the header.

    ``feed`` raises ``SafetensorsError`` as soon as the bytes seen so far prove the file malformed;
    ``finish`` checks the length and returns the parsed header.
    """

    def __init__(
        self,
        expected_size: int | None = None,
        max_header: int = MAX_HEADER_BYTES,
        max_tensors: int | None = None,
    ) -> None:
        self._expected_size = expected_size
        self._max_header = max_header
        self._max_tensors = max_tensors
        self._head = bytearray()
        self._need: int | None = None
        self.header: SafetensorsHeader | None = None
        self.received = 0

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.header is None:
            self._head += chunk
            if self._need is None and len(self._head) >= 8:
                self._need = 8 + header_length(bytes(self._head[:8]), self._max_header)
            if self._need is not None and len(self._head) >= self._need:
                self.header = parse_header(
                    bytes(self._head[: self._need]), self._max_header, self._max_tensors
                )
                self._head = bytearray()
                self._check_expected()
        if self.header is not None and self.received > self.header.file_size:
            raise SafetensorsError(
                f"file is longer than its header says: more than {self.header.file_size} bytes "
                f"(header + {self.header.data_size} bytes of tensor data)"
            )

    def _check_expected(self) -> None:
        assert self.header is not None
        if self._expected_size is not None and self._expected_size != self.header.file_size:
            raise SafetensorsError(
                f"header describes a file of {self.header.file_size} bytes but {self._expected_size} "
                "were declared"
            )

    def finish(self) -> SafetensorsHeader:
        if self.header is None:
            if self._need is None:
                header_length(bytes(self._head), self._max_header)
            raise SafetensorsError(f"file ends inside its header ({self.received} of {self._need} bytes)")
        if self.received != self.header.file_size:
            last = self.header.tensors[-1].name if self.header.tensors else "header"
            raise SafetensorsError(
                f"file is truncated: {self.received} bytes, header says {self.header.file_size} "
                f"(data of tensor {last!r} is cut short)"
            )
        return self.header


def validate_bytes(data: bytes) -> SafetensorsHeader:
    """Validate a whole file held in memory (small files and tests)."""
    v = SafetensorsStreamValidator()
    v.feed(data)
    return v.finish()


ReadAt = Callable[[int, int], bytes]


def iter_tensors(header: SafetensorsHeader, read_at: ReadAt) -> Iterator[tuple[TensorEntry, bytes]]:
    """Yield each tensor with its raw bytes, reading ``read_at(file_offset, length)`` one tensor at a time."""
    base = header.header_size
    for e in header.tensors:
        raw = read_at(base + e.begin, e.nbytes) if e.nbytes else b""
        if len(raw) != e.nbytes:
            raise SafetensorsError(f"tensor {e.name!r}: read {len(raw)} bytes, expected {e.nbytes}")
        yield e, raw


def read_header(read_at: ReadAt, file_size: int, max_header: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Parse the header of a stored file through a ranged reader and check the file's length."""
    n = header_length(read_at(0, min(8, file_size)), max_header)
    if 8 + n > file_size:
        raise SafetensorsError(f"file of {file_size} bytes ends inside its {n}-byte header")
    header = parse_header(read_at(0, 8 + n), max_header)
    if header.file_size != file_size:
        raise SafetensorsError(f"file is {file_size} bytes, header says {header.file_size}")
    return header


def validate_index(data: bytes) -> dict[str, str]:
    """Check a ``model.safetensors.index.json`` and return its weight map (tensor name -> shard file)."""
    doc = strict_json(data, "index file")
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise SafetensorsError('index file needs "weight_map": {tensor name: "shard.safetensors"}')
    for name, shard in weight_map.items():
        if not is_safetensors_path(shard):
            raise SafetensorsError(
                f"index file maps tensor {name[:100]!r} to {shard[:100]!r}, not a .safetensors file"
            )
    return weight_map
