"""Empirical entropy bounds for exact float32 coding, to pick a model before writing a coder.

    python benchmarks/f32_entropy.py ZOO_DIR [ZOO_DIR ...]

For every fine-tune folder (parent: the folder named in its parent.txt, else base/), over the F32
tensors whose parent tensor has the same shape (a BF16/F16 parent is cast to f32, as the codec does),
prints bits per element and the implied ratio (32 / bits) of:

* ``xor bytes``: order-0 entropy of each byte plane of child XOR parent (what ZipNN-on-XOR and BitX
  approach from above);
* ``diff tok(r) | ctx``: the integer difference d = child − parent (wrapping 32-bit, zigzagged to z), as
  a token (bit length of z and the r bits after its leading one; z itself below 2^(r+1)) with its
  conditional entropy given a context, plus the token's remaining low bits counted as raw (1 bit each).
  Contexts: none, the parent's exponent, the exponent and the top mantissa bit, the exponent and the
  previous element's token bit length (a neighbour in the same row);
* ``split``: the high 16 bits' difference coded the same way given the parent exponent, plus the order-0
  entropy of the low 16 bits' two byte planes given the high token (the high/low split the issue
  suggested, for comparison);
* plain (no parent): ``exp``: exponent entropy + 24 raw bits; ``exp+k``: exponent and top k mantissa
  bits jointly, plus 24 − k raw bits.

Entropies are plug-in estimates over the whole family (the tables a coder writes cost a few hundred
bytes a tensor, ignored here), so they are bounds for coders of that model, not for every model.
"""

from __future__ import annotations

import argparse
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _tensors(path: Path) -> dict[str, tuple[str, list[int], np.ndarray]]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[name] = (v["dtype"], v["shape"], np.frombuffer(data, np.uint8, e - s, 8 + n + s))
    return out


def _as_f32_bits(dtype: str, raw: np.ndarray) -> np.ndarray | None:
    if dtype == "F32":
        return raw.view("<u4")
    if dtype == "BF16":
        return raw.view("<u2").astype(np.uint32) << 16
    if dtype == "F16":
        return raw.view("<f2").astype(np.float32).view("<u4")
    return None


def pairs(zoo: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(fine-tune name, child u32 bits, parent u32 bits), all shared f32 tensors concatenated."""
    for folder in sorted(p for p in zoo.iterdir() if (p / "model.safetensors").exists()):
        note = folder / "parent.txt"
        parent_name = note.read_text().strip() if note.exists() else ("base" if folder.name != "base" else "")
        if not parent_name or parent_name == folder.name:
            continue
        child = _tensors(folder / "model.safetensors")
        parent = _tensors(zoo / parent_name / "model.safetensors")
        cs, ps = [], []
        for name, (dtype, shape, raw) in child.items():
            if dtype != "F32" or name not in parent or parent[name][1] != shape:
                continue
            p = _as_f32_bits(parent[name][0], parent[name][2])
            if p is not None:
                cs.append(raw.view("<u4"))
                ps.append(p)
        if cs:
            yield f"{zoo.name}/{folder.name} (parent {parent_name})", np.concatenate(cs), np.concatenate(ps)


def entropy(counts: np.ndarray) -> float:
    """Plug-in entropy in bits of a histogram (any shape, flattened)."""
    c = counts[counts > 0].astype(np.float64)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def cond_entropy(sym: np.ndarray, ctx: np.ndarray) -> float:
    """H(sym | ctx) in bits per element (both small non-negative integers)."""
    joint = np.unique(ctx.astype(np.int64) << 20 | sym.astype(np.int64), return_counts=True)[1]
    marg = np.unique(ctx, return_counts=True)[1]
    n = sym.size
    return (entropy(joint) - entropy(marg)) * 1.0 if n else 0.0


def tokens(z: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(token, raw bit count) of zigzagged values z (uint64): z below 2^(r+1) is its own token, else
    (bit length k, the r bits after the leading one), with k − 1 − r raw bits."""
    k = np.zeros(z.shape, np.int64)
    nz = z > 0
    k[nz] = np.floor(np.log2(z[nz].astype(np.float64))).astype(np.int64) + 1
    fix = nz & ((np.uint64(1) << np.maximum(k - 1, 0).astype(np.uint64)) > z)  # float log2 rounding up
    k[fix] -= 1
    small = z < (1 << (r + 1))
    top = (z >> np.maximum(k - 1 - r, 0).astype(np.uint64)).astype(np.int64) & ((1 << r) - 1)
    tok = np.where(small, z.astype(np.int64), (1 << (r + 1)) + (k - r - 2) * (1 << r) + top)
    return tok, np.where(small, 0, k - 1 - r)


def zigzag32(d: np.ndarray) -> np.ndarray:
    s = d.view(np.int32).astype(np.int64)
    return ((s << 1) ^ (s >> 63)).astype(np.uint64) & np.uint64(0xFFFFFFFF)


def report(name: str, c: np.ndarray, p: np.ndarray) -> list[str]:
    n = c.size
    rows = [f"### {name}: {n} elements"]

    def line(what: str, bits: float) -> None:
        rows.append(f"| {what} | {bits:.3f} | {32 / bits:.3f} |")

    rows += ["| model | bits / element | ratio bound |", "| --- | --- | --- |"]
    x = (c ^ p).view(np.uint8).reshape(-1, 4)
    line("xor bytes, order 0 per plane", sum(entropy(np.bincount(x[:, i], minlength=256)) for i in range(4)))
    d = (c.astype(np.int64) - p.astype(np.int64)).astype(np.uint32)
    z = zigzag32(d)
    exp = ((p >> 23) & 0xFF).astype(np.int64)
    m1 = ((p >> 22) & 1).astype(np.int64)
    for r in (2, 3, 4):
        tok, raw = tokens(z, r)
        line(f"diff tok({r}), no context", entropy(np.bincount(tok)) + raw.mean())
        line(f"diff tok({r}) given parent exponent", cond_entropy(tok, exp) + raw.mean())
        if r == 2:
            mean = raw.mean()
            line("diff tok(2) given exponent + top mantissa bit", cond_entropy(tok, exp << 1 | m1) + mean)
            k = np.where(tok < 8, 0, (tok - 8) // 4 + 3)  # bit length of z, the token's scale
            prev = np.r_[0, k[:-1]]
            by_prev = cond_entropy(tok, exp << 6 | prev) + mean
            line("diff tok(2) given exponent + previous bit length", by_prev)
            line("diff tok(2) given previous bit length only", cond_entropy(tok, prev) + raw.mean())
    hi_c, hi_p = (c >> 16).astype(np.int64), (p >> 16).astype(np.int64)
    dh = (hi_c - hi_p) & 0xFFFF
    zh = zigzag32(np.where(dh >= 1 << 15, dh - (1 << 16), dh).astype(np.int32).view(np.uint32))
    tok_h, raw_h = tokens(zh, 2)
    lo = c & 0xFFFF
    h_lo = cond_entropy((lo >> 8).astype(np.int64), tok_h) + cond_entropy((lo & 0xFF).astype(np.int64), tok_h)
    h_hi = cond_entropy(tok_h, exp) + raw_h.mean()
    line("split: high diff tok(2) | exponent, low bytes | high token", h_hi + h_lo)
    # plain
    e_all = ((c >> 23) & 0xFF).astype(np.int64)
    line("plain: exponent + 24 raw", entropy(np.bincount(e_all)) + 24)
    for k in (1, 2, 3):
        sym = e_all << k | ((c >> (23 - k)) & ((1 << k) - 1)).astype(np.int64)
        line(f"plain: exponent + top {k} mantissa bits, + {24 - k} raw", entropy(np.bincount(sym)) + 24 - k)
    xb = c.view(np.uint8).reshape(-1, 4)
    planes = sum(entropy(np.bincount(xb[:, i], minlength=256)) for i in range(4))
    line("plain: byte planes order 0 (ZipNN-like)", planes)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoos", type=Path, nargs="+")
    args = ap.parse_args()
    for zoo in args.zoos:
        for name, c, p in pairs(zoo):
            print("\n".join(report(name, c, p)) + "\n", flush=True)


if __name__ == "__main__":
    main()
