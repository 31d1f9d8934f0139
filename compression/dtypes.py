"""The safetensors dtypes deltazoo understands, with their sizes and float layouts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DtypeInfo:
    name: str  # safetensors spelling, e.g. "BF16"
    itemsize: int  # bytes per element
    exponent_bits: int  # 0 for integers and bool
    mantissa_bits: int

    @property
    def is_float(self) -> bool:
        return self.exponent_bits > 0


DTYPES: dict[str, DtypeInfo] = {
    d.name: d
    for d in (
        DtypeInfo("F64", 8, 11, 52),
        DtypeInfo("F32", 4, 8, 23),
        DtypeInfo("F16", 2, 5, 10),
        DtypeInfo("BF16", 2, 8, 7),
        DtypeInfo("F8_E4M3", 1, 4, 3),
        DtypeInfo("F8_E5M2", 1, 5, 2),
        DtypeInfo("I64", 8, 0, 0),
        DtypeInfo("I32", 4, 0, 0),
        DtypeInfo("I16", 2, 0, 0),
        DtypeInfo("I8", 1, 0, 0),
        DtypeInfo("U64", 8, 0, 0),
        DtypeInfo("U32", 4, 0, 0),
        DtypeInfo("U16", 2, 0, 0),
        DtypeInfo("U8", 1, 0, 0),
        DtypeInfo("BOOL", 1, 0, 0),
    )
}


def dtype_info(name: str) -> DtypeInfo:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(
            f"unsupported dtype {name!r}; deltazoo stores {', '.join(sorted(DTYPES))}"
        ) from None


def uint_dtype(width: int) -> np.dtype:
    """The little-endian unsigned integer dtype of ``width`` bytes: how the codecs read bit patterns."""
    return np.dtype(f"<u{width}")
