"""Locality-sensitive keys over version sketches: the bounded candidate lookup of ``base="auto"``.

A version's sketch (``services.similarity``) holds a run of sampled values per tensor. For up
to ``BANDS`` of its tensors (picked by a hash of name, dtype and shape, so every version of one
architecture picks the same ones) the band is that hash and the key is a ``BITS``-bit SimHash of the
centred samples: the signs of their dot products with ``BITS`` fixed random directions.

Two tensors whose samples differ by ``rel = rms(u − c) / rms(c − mean(c))`` sit about ``rel`` radians
apart, so each key bit differs with probability ≈ ``rel / π``. A fine-tune (``rel`` ≈ 0.1) shares a
given band's key with its parent with probability ≈ 0.97^12 ≈ 0.7, and at least one of 16 bands with
probability > 0.999999; an independent model of the same architecture (``rel`` ≈ √2, i.e. about π/2
apart) shares a key with probability 2^-12 per band. The commit looks up at most
``PER_BAND`` versions per (band, key) on an index, adds their ancestors, and scores only those: the
work per push is bounded whatever the size of the zoo.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

BANDS = 16
BITS = 12
PER_BAND = 8
MIN_SAMPLES = 16


def _hash31(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _directions(band: int, n: int) -> np.ndarray:
    """``BITS`` fixed random directions in R^n for one band (the same on every server)."""
    return np.random.default_rng(band).standard_normal((BITS, n))


def band_keys(sketch: dict[str, Any] | None) -> dict[int, int]:
    """band -> key for a sketch (empty when it has no float tensor with enough spread)."""
    entries = (sketch or {}).get("tensors") or {}
    bands: list[tuple[int, np.ndarray]] = []
    for name, e in entries.items():
        values = np.asarray(e.get("values") or (), dtype=np.float64)  # null (non-finite) reads as NaN
        finite = np.isfinite(values)
        if int(finite.sum()) < MIN_SAMPLES:
            continue
        centred = np.where(finite, values - values[finite].mean(), 0.0)  # non-finite samples count as 0
        if not np.any(centred):
            continue
        bands.append((_hash31(f"{name}|{e.get('dtype')}|{list(e.get('shape') or ())}"), centred))
    bands.sort(key=lambda pair: pair[0])
    out: dict[int, int] = {}
    for band, centred in bands[:BANDS]:
        bits = (_directions(band, centred.size) @ centred) >= 0
        out[band] = int(sum(1 << i for i, bit in enumerate(bits) if bit))
    return out
