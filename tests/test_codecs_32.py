"""Format 6 (F32 at full mantissa, delta and plain): golden bytes, the C kernel and the numpy fallback
write and read the same bytes, round trips by sha256 (hypothesis), parents of other float dtypes,
older formats still written on request, corruption caught."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from deltazoo.compression import exact32 as F
from deltazoo.compression import huffman
from deltazoo.compression.codecs import CodecError, decode_tensor, encode_tensor
from hypothesis import given, settings
from hypothesis import strategies as st

needs_c = pytest.mark.skipif(not F.has_extension(), reason="compression._exact32 is not built")

# Golden bytes: fixed F32 values with full mantissas (no narrower dtype holds them) and a parent near
# them. decode must read these forever; the encode comparison flags any change of the written format.
CHILD = bytes.fromhex("0100003f0bd7a3badd0f494000000080c216010002504348f285493c0200f0c0")
PARENT = bytes.fromhex("b0feff3e65daa3ba560e494000000000c216010080524348e2af493c14aeefc0")
GOLDEN_V6 = {
    "delta": (
        [8],
        PARENT,
        [8],
        "445a543664010100080000000000000000010000010b0000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000030000"
        "000000000000000000000000003003030300000000000030003000000000000000000000000000000000000000000000"
        "00000000000000000000300000030000008c0e77a259c7ffffffdfff1eee014041c007",
    ),
    "delta-rows": (
        [4, 2],
        PARENT[:16],
        [2, 2],
        "445a54367201010008000000000000000400000000000000000100000107000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000200200020000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000020000001000000e4a259c7ffffff07e39a4f8e00010000010c0000000000"
        "000002000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000020000000000000000020000000000000000000000000"
        "000020000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000010000006cc2160101a8817c614200000edd3e5ccf",
    ),
    "plain": (
        [8],
        None,
        None,
        "445a54367001ff0008000000000000000001000001170000000000000002000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000003000030000000000003003030000000000000000000000000000030000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000030000"
        "0051e11e01008085eb71f743020000286c1110801ac817260400e09ab0f628",
    ),
}


def pair(n: int, seed: int, rel: float) -> tuple[np.ndarray, np.ndarray]:
    """u32 patterns of f32 weights (parent) and a child that differs by about ``rel`` relative."""
    rng = np.random.default_rng(seed)
    parent = (rng.standard_normal(n) * 0.02).astype("<f4")
    child = (parent.astype(np.float64) * (1 + rng.standard_normal(n) * rel)).astype("<f4")
    return child.view("<u4"), parent.view("<u4")


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_extension_is_built() -> None:
    assert F.has_extension(), "compression._exact32 did not build: pip install -e . needs gcc, Python headers"


@pytest.mark.parametrize("encoding", list(GOLDEN_V6))
def test_golden_format_6(encoding: str) -> None:
    shape, parent, pshape, hexed = GOLDEN_V6[encoding]
    pdtype = "F32" if parent is not None else None
    assert decode_tensor(encoding, bytes.fromhex(hexed), "F32", shape, parent, pdtype, pshape) == CHILD
    enc = encode_tensor(CHILD, "F32", shape, parent, pdtype, pshape)
    assert (enc.encoding, enc.payload.hex()) == (encoding, hexed)


@needs_c
@pytest.mark.parametrize("n", [0, 1, 255, 4099, 70001])
def test_c_and_numpy_write_and_read_the_same_bytes(n: int) -> None:
    near, parent = pair(n, seed=n, rel=1e-6)
    rng = np.random.default_rng(n + 1)
    far = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype("<u4")  # every token, bit lengths up to 32
    for child, par in ((near, parent), (far, parent), (near, None), (far, None)):
        coded = F.encode_stream(child, par, backend="c")
        assert F.encode_stream(child, par, backend="numpy") == coded
        for backend in ("c", "numpy"):
            out, end = F.decode_stream(memoryview(coded), 0, n, par, backend=backend)
            assert end == len(coded)
            assert out.tobytes() == child.tobytes()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, (1 << 32) - 1), min_size=0, max_size=300),
    st.integers(0, (1 << 32) - 1),
    st.sampled_from([0, 1, 1 << 10, 1 << 20, 1 << 31]),
)
def test_any_f32_bits_round_trip(values: list[int], seed: int, spread: int) -> None:
    """Every bit pattern (NaNs, infinities, subnormals, signed zeros) round-trips, plain and delta."""
    child = np.array(values, "<u4")
    rng = np.random.default_rng(seed)
    step = rng.integers(-spread, spread + 1, child.size)
    parent = ((child.astype(np.int64) + step) & 0xFFFFFFFF).astype("<u4")
    raw, praw, n = child.tobytes(), parent.tobytes(), child.size
    for args in ((), (praw, "F32", [n])):
        enc = encode_tensor(raw, "F32", [n], *args)
        assert sha(decode_tensor(enc.encoding, enc.payload, "F32", [n], *args)) == sha(raw)
    if n:
        for backend in ("c", "numpy") if F.has_extension() else ("numpy",):
            coded = F.encode_stream(child, parent, backend=backend)
            assert F.decode_stream(memoryview(coded), 0, n, parent, backend=backend)[0].tobytes() == raw


def test_f32_deltas_and_plains_are_format_6_and_version_5_still_writes_format_4() -> None:
    n = 70000
    child, parent = pair(n, seed=3, rel=1e-5)
    raw, praw = child.tobytes(), parent.tobytes()
    for args, encoding in (((praw, "F32", [n]), "delta"), ((), "plain")):
        new = encode_tensor(raw, "F32", [n], *args)
        old = encode_tensor(raw, "F32", [n], *args, version=5)
        assert (new.encoding, new.payload[:4], old.payload[:4]) == (encoding, b"DZT6", b"DZT4")
        for enc in (new, old):
            assert decode_tensor(encoding, enc.payload, "F32", [n], *args) == raw
        assert len(new.payload) < len(old.payload) * 1.01  # same model: no worse than format 4 by > 1 %


def test_delta_rows_code_the_new_rows_plain() -> None:
    child, _ = pair(6000, seed=4, rel=1e-6)
    parent = pair(6000, seed=4, rel=0)[1][:4000].copy()
    raw, praw = child.tobytes(), parent.tobytes()
    enc = encode_tensor(raw, "F32", [60, 100], praw, "F32", [40, 100])
    assert (enc.encoding, enc.payload[:4]) == ("delta-rows", b"DZT6")
    assert sha(decode_tensor("delta-rows", enc.payload, "F32", [60, 100], praw, "F32", [40, 100])) == sha(raw)


@pytest.mark.parametrize("pdtype", [torch.bfloat16, torch.float16])
def test_f32_child_of_a_16_bit_parent(pdtype: torch.dtype) -> None:
    """An f32 fine-tune of a bf16/f16 base: the parent is widened (exact) and the delta is format 6."""
    g = torch.Generator().manual_seed(6)
    base = (torch.randn(3000, generator=g) * 0.02).to(pdtype)
    child = base.float() * (1 + torch.randn(3000, generator=g) * 1e-3)
    raw = child.numpy().tobytes()
    code = {torch.bfloat16: "BF16", torch.float16: "F16"}[pdtype]
    praw = base.view(torch.int16).numpy().tobytes()
    enc = encode_tensor(raw, "F32", [3000], praw, code, [3000])
    assert (enc.encoding, enc.payload[:4]) == ("delta", b"DZT6")
    assert enc.payload[6] == {"BF16": 3, "F16": 2}[code]  # the parent's dtype code is recorded
    assert sha(decode_tensor("delta", enc.payload, "F32", [3000], praw, code, [3000])) == sha(raw)
    plain = encode_tensor(raw, "F32", [3000])
    assert len(enc.payload) < len(plain.payload)  # the parent helps


def test_bf16_child_of_an_f32_parent() -> None:
    g = torch.Generator().manual_seed(7)
    base = torch.randn(3000, generator=g) * 0.02  # full-mantissa f32 parent
    child = (base * (1 + torch.randn(3000, generator=g) * 1e-2)).to(torch.bfloat16)
    raw, praw = child.view(torch.int16).numpy().tobytes(), base.numpy().tobytes()
    enc = encode_tensor(raw, "BF16", [3000], praw, "F32", [3000])
    assert (enc.encoding, enc.payload[:4], enc.payload[6]) == ("delta", b"DZT5", 1)
    assert sha(decode_tensor("delta", enc.payload, "BF16", [3000], praw, "F32", [3000])) == sha(raw)


def test_every_flipped_bit_of_a_stream_is_caught() -> None:
    child, parent = pair(3000, seed=8, rel=1e-5)
    raw, praw = child.tobytes(), parent.tobytes()
    for args, encoding in (((praw, "F32", [3000]), "delta"), ((), "plain")):
        payload = encode_tensor(raw, "F32", [3000], *args).payload
        for i in range(16, len(payload), 97):
            bad = bytearray(payload)
            bad[i] ^= 0x10
            with pytest.raises(CodecError, match="corrupt payload"):
                decode_tensor(encoding, bytes(bad), "F32", [3000], *args)


def test_truncated_and_mislabelled_payloads_raise_codec_error() -> None:
    shape, parent, pshape, hexed = GOLDEN_V6["delta"]
    payload = bytes.fromhex(hexed)
    for cut in (10, 20, 300, len(payload) - 5, len(payload) - 1):
        with pytest.raises(CodecError, match="corrupt payload"):
            decode_tensor("delta", payload[:cut], "F32", shape, parent, "F32", pshape)
    with pytest.raises(CodecError, match="payload is 'delta' but was asked to decode as 'plain'"):
        decode_tensor("plain", payload, "F32", shape)
    with pytest.raises(CodecError, match="needs its parent"):
        decode_tensor("delta", payload, "F32", shape)
    as_bf16 = bytearray(payload)
    as_bf16[5] = 3  # BF16: format 6 codes only F32
    with pytest.raises(CodecError, match="format 6 codes F32"):
        decode_tensor("delta", bytes(as_bf16), "BF16", [8], bytes(16), "F32", [4])
    huge = bytearray(payload)
    huge[16:20] = (1 << 31).to_bytes(4, "little")  # a segment size no writer uses
    with pytest.raises(CodecError, match="format-6 segments of"):
        decode_tensor("delta", bytes(huge), "F32", shape, parent, "F32", pshape)


def test_numpy_fallback_codes_what_the_extension_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    child, parent = pair(20000, seed=9, rel=1e-4)
    raw, praw = child.tobytes(), parent.tobytes()
    enc = encode_tensor(raw, "F32", [20000], praw, "F32", [20000])
    plain = encode_tensor(raw, "F32", [20000])
    monkeypatch.setattr(F, "_exact32", None)  # as if the extension had not built
    assert not F.has_extension()
    assert decode_tensor("delta", enc.payload, "F32", [20000], praw, "F32", [20000]) == raw
    assert decode_tensor("plain", plain.payload, "F32", [20000]) == raw
    assert encode_tensor(raw, "F32", [20000], praw, "F32", [20000]) == enc
    assert encode_tensor(raw, "F32", [20000]) == plain


def test_code_lengths_are_a_prefix_code_of_at_most_12_bits() -> None:
    counts = np.array([1 << 30] + [1] * 127, np.int64)  # a skewed table deeper than 12 bits unlimited
    ln = F.code_lengths(counts).astype(np.int64)
    assert ln.max() <= F.MAX_LEN and (ln > 0).all()
    assert sum(1 << (F.MAX_LEN - int(x)) for x in ln) <= 1 << F.MAX_LEN


@needs_c
@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 1 << 40), min_size=2, max_size=2 * F.NTOK_DELTA), st.integers(0, 3))
def test_c_code_lengths_are_the_python_ones(counts: list[int], zeros: int) -> None:
    for nsym in (F.NTOK_DELTA, F.NTOK_PLAIN):
        row = np.zeros(nsym, np.int64)
        row[: min(len(counts), nsym)] = counts[:nsym]
        row[:: 4 + zeros] = 0  # unused symbols between used ones
        table = np.stack([row, row[::-1].copy(), np.zeros(nsym, np.int64)])
        assert (F.context_lengths(table, use_c=True) == F.context_lengths(table, use_c=False)).all()


@needs_c
def test_portable_and_the_cpus_best_decoders_agree() -> None:
    chosen = F._exact32.set_portable(False)  # "avx2" or "bmi2" where the CPU has them
    try:
        for n in (300, 70001):
            near, parent = pair(n, seed=n, rel=1e-5)
            for par in (parent, None):
                coded = F.encode_stream(near, par)
                for portable in (True, False):
                    F._exact32.set_portable(portable)
                    assert F.decode_stream(memoryview(coded), 0, n, par)[0].tobytes() == near.tobytes()
        assert F._exact32.set_portable(True) == "portable"
    finally:
        assert F._exact32.set_portable(False) == chosen


def test_lengths_that_are_no_prefix_code_are_refused_by_both_backends() -> None:
    child, parent = pair(5000, seed=11, rel=1e-5)
    coded = bytearray(F.encode_stream(child, parent))
    at = F._HEAD.size + 256  # the first context's packed lengths
    coded[at : at + 8] = bytes([0x11] * 8)  # sixteen 1-bit codes: no prefix code
    crc_at = len(coded) - 4
    coded[crc_at:] = F.crc32(memoryview(coded)[:crc_at]).to_bytes(4, "little")
    for backend in ("c", "numpy") if F.has_extension() else ("numpy",):
        with pytest.raises(CodecError, match="not a prefix code"):
            F.decode_stream(memoryview(bytes(coded)), 0, 5000, parent, backend=backend)


def test_numpy_decoder_table_marks_tokens_no_delta_uses() -> None:
    lengths = np.zeros((1, F.NTOK_DELTA), np.uint8)
    lengths[0, [0, F.TOK_USED]] = 1  # a 1-bit code for a token that never occurs
    dec = F.dec_table(lengths, F.TOK_USED)
    assert set(np.unique(dec).tolist()) == {0 | 1 << 12, F.BAD_SLOT}
    assert huffman.check_kraft(lengths, F.MAX_LEN) is None


def flipped_with_valid_checksum(
    clean: bytes, rng: np.random.Generator, lo: int, hi: int, flips: int
) -> bytes:
    """``clean`` with ``flips`` random bits of ``[lo, hi)`` flipped and its crc32 written again, so that
    only the decoder's own checks can catch the damage."""
    coded = bytearray(clean)
    for at in rng.integers(lo, hi, flips):
        coded[at] ^= 1 << int(rng.integers(0, 8))
    coded[-4:] = F.crc32(memoryview(coded)[:-4]).to_bytes(4, "little")
    return bytes(coded)


def decoded_or_none(coded: bytes, n: int, parent: np.ndarray | None, backend: str) -> bytes | None:
    """The decoded bytes, or None where the decoder refuses the stream (CodecError)."""
    try:
        out, _ = F.decode_stream(memoryview(coded), 0, n, parent, backend=backend)
    except CodecError:
        return None
    return bytes(out.tobytes())


@needs_c
@pytest.mark.parametrize("n", [1, 255, 4099, 70001])
def test_a_bf16_parent_is_read_as_stored_and_decodes_as_its_widened_copy(n: int) -> None:
    """An F32 fine-tune of a BF16 base: decode reads the BF16 parent as it is stored (each element the high
    half of its f32), with the same result as the widened parent: portable and the CPU's best decoder, C
    and numpy, and streams with a valid checksum but corrupt bits fail or decode alike."""
    rng = np.random.default_rng(n)
    p16 = ((rng.standard_normal(n).astype(np.float32) * 0.02).view("<u4") >> 16).astype("<u2")
    wide = p16.astype("<u4") << np.uint32(16)
    noise = 1 + rng.standard_normal(n).astype(np.float32) * 1e-3
    child = (wide.view(np.float32) * noise).astype(np.float32).view("<u4")
    coded = F.encode_stream(child, wide)
    chosen = F._exact32.set_portable(False)
    try:
        for portable in (True, False):
            F._exact32.set_portable(portable)
            for backend in ("c", "numpy"):
                out, end = F.decode_stream(memoryview(coded), 0, n, p16, backend=backend)
                assert end == len(coded) and out.tobytes() == child.tobytes()
        for _ in range(20):
            hostile = flipped_with_valid_checksum(coded, rng, F._HEAD.size, len(coded) - 4, 3)
            results = [
                decoded_or_none(hostile, n, par, backend)
                for par, backend in ((p16, "c"), (wide, "c"), (p16, "numpy"))
            ]
            assert results[0] == results[1] == results[2]
    finally:
        F._exact32.set_portable(False)
    assert F._exact32.set_portable(False) == chosen


@needs_c
def test_hostile_streams_with_a_valid_checksum_fail_or_decode_alike_in_c_and_numpy() -> None:
    rng = np.random.default_rng(12)
    for n, par_of in ((20000, lambda p: p), (9000, lambda p: None)):
        child, parent = pair(n, seed=n, rel=1e-4)
        par = par_of(parent)
        clean = F.encode_stream(child, par)
        for _ in range(60):
            coded = flipped_with_valid_checksum(clean, rng, F._HEAD.size, len(clean) - 4, 3)
            assert decoded_or_none(coded, n, par, "c") == decoded_or_none(coded, n, par, "numpy")


def _plain_lengths(coded: bytes) -> np.ndarray:
    packed = np.frombuffer(coded, np.uint8, F.NTOK_PLAIN // 2, F._HEAD.size)
    return np.concatenate([packed & 15, packed >> 4])


@needs_c
def test_plain_symbols_decoded_three_a_lookup_fail_or_decode_alike_in_c_and_numpy() -> None:
    """A plain tensor of >= 4 segments of 4096 whose codes are <= 11 bits is decoded up to three symbols a
    lookup in C (a table of 11 bits); bits flipped among its token segments (valid checksum) must fail or
    decode as the numpy decoder does."""
    rng = np.random.default_rng(13)
    n = 4 * 4096 + 1234  # four segments side by side, then a fifth alone
    child, _ = pair(n, seed=n, rel=0)
    rare = rng.integers(0, 1 << 32, 200, dtype=np.uint64).astype("<u4")  # symbols of long codes
    child[rng.integers(0, n, 200)] = rare
    clean = F.encode_stream(child, None)
    assert 9 <= _plain_lengths(clean).max() <= 11
    body_at = F._HEAD.size + F.NTOK_PLAIN // 2 + 4 * 5
    body_end = body_at + int(np.frombuffer(clean, "<u4", 5, body_at - 20).sum())
    outcomes = set()
    for trial in range(25):
        coded = flipped_with_valid_checksum(clean, rng, body_at, body_end, 1 + trial % 3)
        result = decoded_or_none(coded, n, None, "c")
        assert result == decoded_or_none(coded, n, None, "numpy")
        outcomes.add(result is None)
    assert True in outcomes  # most flips move every later code of the segment past its size: refused


@needs_c
def test_plain_codes_of_12_bits_are_decoded_one_a_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lengths up to 12 bits (a prefix code the writer's floor never reaches on its own, but the format
    allows): C falls back from the 11-bit table to one symbol a lookup and reads what numpy writes."""
    n = 4 * 4096 + 777
    rng = np.random.default_rng(21)
    syms = np.minimum(rng.geometric(0.5, n) - 1, 12)  # symbol k about 2^-(k+1) of the elements
    child = (syms.astype(np.uint32) << 22 | rng.integers(0, 1 << 22, n).astype(np.uint32)).astype("<u4")
    lengths = np.zeros((1, F.NTOK_PLAIN), np.uint8)
    lengths[0, :13] = [*range(1, 13), 12]  # Kraft sum 1: codes of 1..12 bits
    monkeypatch.setattr(F, "context_lengths", lambda counts, use_c: lengths)
    coded = F.encode_stream(child, None, backend="numpy")
    assert F.encode_stream(child, None, backend="c") == coded and _plain_lengths(coded).max() == 12
    for backend in ("c", "numpy"):
        assert F.decode_stream(memoryview(coded), 0, n, None, backend=backend)[0].tobytes() == child.tobytes()


@needs_c
@pytest.mark.parametrize("p16", [False, True])
def test_the_raw_bit_loops_of_deltas_decode_alike(p16: bool) -> None:
    """The delta decoder's raw-bit loops (eight a step with AVX-512 VBMI where the CPU has it, scalar)
    write the same bytes, from F32 and BF16 parents, and fail or decode alike on corrupt streams."""
    rng = np.random.default_rng(31 + p16)
    levels = []
    try:
        for level in (1, 0):
            levels.append(F._exact32.set_raw_delta(level))
        assert levels[-1] == "scalar"
        for n in (7, 4096 * 4 + 13, 70001):
            child, parent = pair(n, seed=n, rel=1e-3)
            if p16:
                parent = (parent >> 16).astype("<u2")
                wide = parent.astype("<u4") << np.uint32(16)
                child = (wide.view(np.float32) * (1 + rng.standard_normal(n).astype(np.float32) * 1e-3)).view(
                    "<u4"
                )
            coded = F.encode_stream(child, parent.astype("<u4") << np.uint32(16) if p16 else parent)
            hostile = [
                flipped_with_valid_checksum(coded, rng, F._HEAD.size, len(coded) - 4, 3) for _ in range(20)
            ]
            seen = []
            for level in (1, 0):
                F._exact32.set_raw_delta(level)
                out, end = F.decode_stream(memoryview(coded), 0, n, parent)
                assert end == len(coded) and out.tobytes() == child.tobytes()
                seen.append([decoded_or_none(h, n, parent, "c") for h in hostile])
            assert seen[0] == seen[-1]
    finally:
        F._exact32.set_raw_delta(1)
