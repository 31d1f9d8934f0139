"""Format 7 (ELF, compression.elf32): the opt-in bounded-error coding of F32 tensors. Every element within
2⁻²⁴ (checked one by one), values ELF cannot align kept bit for bit, golden bytes, and nothing lossy
unless asked."""

from __future__ import annotations

import numpy as np
import pytest
from deltazoo.compression import elf32
from deltazoo.compression.codecs import CodecError, decode_tensor, encode_tensor

SPECIALS = np.array(
    [
        0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1.5, -7.25, 3.0e38,  # outside (-1, 1) or signed zeros
        1e-40, -3e-39, 1.4e-45,  # subnormals
        float(np.nextafter(np.float32(1), np.float32(0))),  # |p| + 1 rounds up to 2
        -float(np.nextafter(np.float32(1), np.float32(0))),
        1.2e-38, -5e-30, 2.0**-24, 2.0**-25, 0.49999997,
    ],
    np.float32,
)
GOLDEN_CHILD = np.array([0.015625, -0.3, 2.5, -0.0, 1e-40, 0.7, np.nan, -1e-8], np.float32)
GOLDEN = (
    "445a54377001ff000800000000000000040000000000000000000400010000000000050000080000000400000004008c"
    "40000000000000000000000000001685788400010000010c000000000000000100000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000020000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000002001"
    "000000310000200000a0b04500000000e1e5eb1900010000010800000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000200000000000000000000000000000000000000000000000000000000000000000002000000000000000200200000"
    "000000000000000000000000000000000001000000360000cbcc4c3333019b42f211"
)


def weights(n: int, seed: int, scale: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * scale).astype(np.float32)
    x[: SPECIALS.size] = SPECIALS
    return x


def check_bound(original: np.ndarray, served: np.ndarray) -> None:
    """Every element: within 2⁻²⁴ when ELF aligned it, bit for bit otherwise."""
    o, s = original.view(np.uint32), served.view(np.uint32)
    exceptional, _ = elf32.align(o)
    assert (o[exceptional] == s[exceptional]).all()
    err = np.abs(original[~exceptional].astype(np.float64) - served[~exceptional].astype(np.float64))
    assert (err <= elf32.ERROR_BOUND).all(), float(err.max())
    assert (np.abs(served[~exceptional]) < 1).all()


@pytest.mark.parametrize("scale", [0.02, 0.3, 3.0])
def test_every_element_is_within_the_bound_and_specials_are_exact(scale: float) -> None:
    x = weights(50_000, seed=7, scale=scale)
    enc = encode_tensor(x.tobytes(), "F32", [50_000], lossy=True)
    assert enc.encoding == "plain" and enc.payload[:4] == b"DZT7"
    out = decode_tensor("plain", enc.payload, "F32", [50_000])
    assert out == elf32.served(x.tobytes())
    served = np.frombuffer(out, np.float32)
    check_bound(x, served)
    specials = served[: SPECIALS.size].view(np.uint32)
    exact_ones = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]  # outside (-1, 1), +-0, subnormals, ->2
    assert specials[exact_ones].tolist() == SPECIALS.view(np.uint32)[exact_ones].tolist()


def test_every_float32_bit_pattern_class_stays_within_the_bound() -> None:
    """A sweep over exponents and mantissas (every 4099th bit pattern): no element escapes the bound."""
    bits = np.arange(0, 1 << 32, 4099, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    payload = encode_tensor(x.tobytes(), "F32", [x.size], lossy=True).payload
    out = decode_tensor("plain", payload, "F32", [x.size])
    check_bound(x, np.frombuffer(out, np.float32))


def test_aligning_is_idempotent_so_a_served_tensor_codes_to_the_same_payload() -> None:
    x = weights(20_000, seed=3)
    enc = encode_tensor(x.tobytes(), "F32", [20_000], lossy=True)
    served = decode_tensor("plain", enc.payload, "F32", [20_000])
    assert encode_tensor(served, "F32", [20_000], lossy=True) == enc


def test_golden_bytes() -> None:
    enc = encode_tensor(GOLDEN_CHILD.tobytes(), "F32", [8], lossy=True)
    assert enc.payload.hex() == GOLDEN
    out = np.frombuffer(decode_tensor("plain", bytes.fromhex(GOLDEN), "F32", [8]), np.float32)
    check_bound(GOLDEN_CHILD, out)


def test_lossy_is_opt_in_and_only_for_f32() -> None:
    x = weights(5000, seed=1)
    assert encode_tensor(x.tobytes(), "F32", [5000]).payload[:4] == b"DZT6"  # default: exact
    bf16 = (x.view(np.uint32) >> 16).astype("<u2").tobytes()
    lossy = encode_tensor(bf16, "BF16", [5000], lossy=True)
    assert decode_tensor("plain", lossy.payload, "BF16", [5000]) == bf16  # other dtypes stay exact
    widened = ((x.view(np.uint32) >> 16) << 16).astype("<u4").tobytes()  # bf16 values saved as f32
    held = encode_tensor(widened, "F32", [5000], lossy=True)
    assert held.payload[:4] == b"DZTN"  # exact narrowing wins over ELF: smaller and lossless
    assert decode_tensor("plain", held.payload, "F32", [5000]) == widened


def test_a_parent_is_not_used_and_not_needed() -> None:
    x, parent = weights(5000, seed=2), weights(5000, seed=4)
    enc = encode_tensor(x.tobytes(), "F32", [5000], parent.tobytes(), "F32", [5000], lossy=True)
    assert enc.encoding == "plain"
    assert decode_tensor("plain", enc.payload, "F32", [5000]) == elf32.served(x.tobytes())


def test_corrupt_and_mismatched_payloads_are_refused() -> None:
    payload = bytes.fromhex(GOLDEN)
    with pytest.raises(CodecError, match="holds a F32 tensor but F16 was asked"):
        decode_tensor("plain", payload, "F16", [8])
    with pytest.raises(CodecError, match="holds 8 elements"):
        decode_tensor("plain", payload, "F32", [9])
    with pytest.raises(CodecError, match="payload is 'plain'"):
        decode_tensor("delta", payload, "F32", [8], payload[:32], "F32", [8])
    with pytest.raises(CodecError, match="corrupt payload"):
        decode_tensor("plain", payload[:-3], "F32", [8])
    with pytest.raises(CodecError, match="unexpected bytes"):
        decode_tensor("plain", payload + b"\0", "F32", [8])
    flipped = bytearray(payload)
    flipped[-6] ^= 0x10
    with pytest.raises(CodecError, match="corrupt payload"):
        decode_tensor("plain", bytes(flipped), "F32", [8])
