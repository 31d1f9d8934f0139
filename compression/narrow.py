"""Float tensors stored in a wider dtype than their values need (``DZTN`` payloads).

A model trained in bf16 and saved in f32 has 16 zero low bits in every element; one cast from bf16 to
f16 has values with at most 8 significant bits. Coding those bits as if they carried information costs
ratio (the zoo cast to f32: 1.20× plain against ZipNN's 3.0×). ``narrowest`` finds the narrowest float
dtype that holds every element *bit for bit* (the wide → narrow → wide round trip, round to nearest
even, gives back the same bit patterns, signed zeros included); the encoder then codes the narrow tensor
(against its parent cast to the narrow dtype) and the decoder casts it back. Widening casts are exact
and the narrowing one (bf16 → f16) was checked on this very tensor, so the result is the original
bytes. Except for bf16 saved as f32 (bit operations, any bits), tensors holding a NaN are not
narrowed: NaN payloads may convert differently elsewhere. F16 <-> BF16 runs in the C extension
``compression._narrow`` when it is built (torch otherwise, the same bytes). Layout (docs/FORMAT.md,
"Narrowed payloads"): ``DZTN``, u8 dtype code of the tensor, u8 dtype code of the narrow tensor, 2 zero
bytes, then the full payload (``DZT5``/``DZT4``) of the narrow tensor.
"""

from __future__ import annotations

import struct
import warnings

import numpy as np

try:  # built by setup.py; optional (torch does the same casts, slower)
    from deltazoo.compression import _narrow  # type: ignore[attr-defined]  # a C extension, no stubs
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _narrow = None

MAGIC_NARROW = b"DZTN"
HEADER = struct.Struct("<4s B B 2x")  # magic, dtype code, narrow dtype code
# Candidates per dtype, narrowest (and best coded) first.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "F64": ("BF16", "F16", "F32"),
    "F32": ("BF16", "F16"),
    "F16": ("BF16",),
}
_TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_SAMPLE = 4096  # elements checked first: most tensors that do not narrow fail here, cheaply


def _tensor(raw: bytes | bytearray | memoryview, dtype: str):  # -> torch.Tensor
    import torch

    with warnings.catch_warnings():  # read-only buffers are fine: the casts allocate anew
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(raw, dtype=getattr(torch, _TORCH[dtype]))


def _bits(t):  # -> torch.Tensor of the same bit patterns as integers
    import torch

    return t.view(getattr(torch, f"int{8 * t.element_size()}"))


def _holds(t, narrow: str) -> bool:
    """Whether every element of ``t`` survives the cast to ``narrow`` and back, bit for bit."""
    import torch

    back = t.to(getattr(torch, _TORCH[narrow])).to(t.dtype)
    return bool(torch.equal(_bits(back), _bits(t)))


def bf16_of_f32(raw: bytes | bytearray | memoryview) -> np.ndarray | None:
    """The bf16 bit patterns of f32 values that are bf16 values (every low half zero), else None."""
    halves = np.frombuffer(raw, "<u2").reshape(-1, 2)
    if halves[:_SAMPLE, 0].any() or halves[:, 0].any():
        return None
    return halves[:, 1].copy()


def full_mantissa_f32(raw: bytes | bytearray | memoryview) -> bool:
    """Whether an f32 element among the first few thousand has a nonzero bit in its low 13 mantissa bits:
    then neither bf16 (7 mantissa bits) nor f16 (10, fewer for its subnormals) holds it, nor the tensor."""
    head = np.frombuffer(raw, "<u4", min(len(raw) // 4, _SAMPLE))
    return bool((head & 0x1FFF).any())


def bf16_rne_of_f16(raw: bytes | bytearray | memoryview) -> np.ndarray | None:
    """torch's f16 -> bf16 cast (round to nearest even) by the C extension; None without it or when a
    value is NaN (the caller then casts with torch)."""
    if _narrow is None:
        return None
    out = np.empty(len(raw) // 2, "<u2")
    return out if _narrow.f16_to_bf16_rne(raw, out) else None


def narrowest(raw: bytes | bytearray | memoryview, dtype: str) -> tuple[str, bytes] | None:
    """(narrow dtype, the tensor's bytes in it) for the first candidate that holds every element
    exactly, or None (not a float dtype with a candidate, empty, or no candidate holds)."""
    if dtype not in CANDIDATES or len(raw) == 0:
        return None
    if dtype == "F32":  # the common case in numpy, one pass: bf16 bits are the high halves
        bf16 = bf16_of_f32(raw)
        if bf16 is not None:
            return "BF16", bf16.tobytes()
        if full_mantissa_f32(raw):  # neither candidate can hold the tensor: no torch casts needed
            return None
    if dtype == "F16" and _narrow is not None:  # the C casts (no NaN: torch refuses those too)
        out = np.empty(len(raw) // 2, "<u2")
        return ("BF16", out.tobytes()) if _narrow.f16_to_bf16(raw, out) else None
    import torch

    t = _tensor(raw, dtype)
    for narrow in CANDIDATES[dtype]:
        if not _holds(t[:_SAMPLE], narrow):  # most tensors that do not narrow stop here, cheaply
            continue
        if bool(torch.isnan(t).any()):  # NaN payloads may convert differently in other libraries
            return None
        cast = t.to(getattr(torch, _TORCH[narrow]))
        if torch.equal(_bits(cast.to(t.dtype)), _bits(t)):
            return narrow, _bits(cast).numpy().tobytes()
    return None


def widen(raw: bytes | bytearray | memoryview, narrow: str, dtype: str) -> bytes:
    """The narrow tensor's bytes cast back to ``dtype`` (the inverse of ``narrowest``)."""
    if len(raw) == 0:
        return b""
    if (narrow, dtype) == ("BF16", "F32"):  # exact by construction: the bf16 bits become the high half
        if _narrow is not None:  # straight into the result, no temporaries
            return bytes(_narrow.bf16_to_f32_bytes(raw))
        return (np.frombuffer(raw, "<u2").astype("<u4") << 16).tobytes()
    if (narrow, dtype) == ("BF16", "F16") and _narrow is not None:
        return bytes(_narrow.bf16_to_f16_bytes(raw))
    import torch

    wide = _tensor(raw, narrow).to(getattr(torch, _TORCH[dtype]))
    return np.ascontiguousarray(_bits(wide).numpy()).tobytes()
