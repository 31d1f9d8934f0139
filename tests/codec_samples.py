"""Sample tensors for the exact-codec format tests: a random parent and a child near it."""

from __future__ import annotations

import numpy as np

# safetensors dtype -> element width in bytes, one of each width and kind the codecs handle
DTYPES = {"F8_E4M3": 1, "F8_E5M2": 1, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "I32": 4, "U64": 8}


def pair(width: int, n: int, seed: int, spread: int) -> tuple[np.ndarray, np.ndarray]:
    """A random parent and a child near it (|difference| < spread, wrapping), as unsigned elements."""
    rng = np.random.default_rng(seed)
    udt = np.dtype(f"<u{width}")
    parent = rng.integers(0, 256, n * width, dtype=np.uint8).view(udt)
    step = rng.integers(-spread, spread, n).astype(np.int64).astype(np.uint64).astype(udt)
    return parent + step, parent
