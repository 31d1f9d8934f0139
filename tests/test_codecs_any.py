"""Format 4's streams: the C kernel and the numpy fallback write and read the same bytes; chunks,
threads, and corruption are handled."""

from __future__ import annotations

import numpy as np
import pytest
from deltazoo.compression import exact_any as V
from deltazoo.compression import exact_any_tokens as T
from deltazoo.compression.bitpack import pack_lsb_first, unpack_lsb_first
from deltazoo.compression.codecs import CodecError, decode_tensor, encode_tensor, layout

from tests.codec_samples import DTYPES, pair

needs_c = pytest.mark.skipif(not V.has_extension(), reason="compression._exact_any is not built")


def test_extension_is_built() -> None:
    """CI builds compression._exact_any (setup.py); without it the numpy fallback is the only path."""
    assert V.has_extension(), (
        "compression._exact_any did not build: pip install -e . needs gcc, Python headers"
    )


@needs_c
@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("n", [0, 1, 4099, 20001])
def test_c_and_numpy_write_and_read_the_same_bytes(name: str, n: int) -> None:
    width = DTYPES[name]
    near, parent = pair(width, n, seed=n + width, spread=300)
    far, _ = pair(width, n, seed=n + 7, spread=1 << 30)
    delta, plain = layout(name, True), layout(name, False)
    cases = [(delta, near, parent), (delta, far, parent), (plain, near, None), (delta, far, None)]
    for lay, child, par in cases:
        coded = V.encode_stream(lay, child, par, backend="c")
        assert V.encode_stream(lay, child, par, backend="numpy") == coded
        for backend in ("c", "numpy"):
            out, end = V.decode_stream(lay, memoryview(coded), 0, n, par, backend=backend)
            assert end == len(coded)
            assert out.tobytes() == child.tobytes()


def test_bits_pack_lsb_first_and_unpack() -> None:
    values = np.array([0b101, 0, 0xFFFFFFFFFF, 1], np.uint64)
    nbits = np.array([3, 0, 40, 1])
    packed = pack_lsb_first(values, nbits)
    assert len(packed) == 6  # 44 bits
    assert packed[0] == 0b11111101  # 101, then the first five ones of the 40-bit value
    padded = np.frombuffer(packed + bytes(8), np.uint8)
    assert unpack_lsb_first(padded, nbits).tolist() == values.tolist()


def test_lanes_grow_with_the_tensor() -> None:
    assert [T.lanes_for(n) for n in (0, 1, 8191, 8192, 1 << 20, 1 << 30)] == [1, 1, 1, 2, 256, 4096]


def test_quantized_tables_sum_to_scale_and_keep_every_seen_token() -> None:
    counts = np.zeros((256, T.ALPHA), np.uint32)
    counts[3, :200] = 1
    counts[3, 7] = 10**9
    counts[9, 5] = 4
    used, f = T.quantize(counts)
    assert used.tolist() == [3, 9]
    assert (f.sum(axis=1) == T.PROB_SCALE).all()
    assert (f[0, :200] >= 1).all() and f[1, 5] == T.PROB_SCALE


def test_reciprocal_table_divides_exactly() -> None:
    """q = mulhi(x, rcp) is floor(x / f) for every frequency and the extreme states."""
    f = np.arange(1, 4097)
    tables = T.Tables.build(np.arange(16), np.zeros((16, 256), np.int64))
    tables.freq = np.concatenate([f, np.ones(16 * 256 - f.size, np.int64)]).astype(np.uint32)
    tables.cum = np.zeros(16 * 256, np.uint32)
    enc = V.enc_table(tables).reshape(-1, 2)[: f.size]  # contexts 0..15 are rows 0..15
    for x in (1 << 16, (1 << 16) + 1, (1 << 32) - 1, 123456789):
        q = [(x * int(r)) >> 64 for r in enc[:, 0]]
        want = [x // int(v) if v > 1 else x - 1 for v in f]  # f = 1: x - 1, the bias adds the rest
        assert q == want


@needs_c
@pytest.mark.parametrize("threads", [1, 3])
def test_chunked_tensor_round_trips_and_threads_write_the_same_bytes(threads: int) -> None:
    n = 2 * V.CHUNK + 1000  # three chunks, the last short
    child, parent = pair(1, n, seed=5, spread=20)
    lay = layout("F8_E4M3", True)
    one = V.encode_stream(lay, child, parent)
    assert V.encode_stream(lay, child, parent, threads=threads) == one
    out, end = V.decode_stream(lay, memoryview(one), 0, n, parent, threads=threads)
    assert end == len(one) and out.tobytes() == child.tobytes()
    raw, praw = child.tobytes(), parent.tobytes()
    enc = encode_tensor(raw, "F8_E4M3", [n], praw, "F8_E4M3", [n], threads=threads)
    assert decode_tensor("delta", enc.payload, "F8_E4M3", [n], praw, "F8_E4M3", [n], threads=threads) == raw


def test_every_flipped_bit_of_a_stream_is_caught() -> None:
    child, parent = pair(2, 3000, seed=11, spread=500)
    raw, praw = child.tobytes(), parent.tobytes()
    payload = encode_tensor(raw, "BF16", [3000], praw, "BF16", [3000], version=4).payload
    assert payload[:4] == b"DZT4"
    for i in range(16, len(payload), 7):
        bad = bytearray(payload)
        bad[i] ^= 0x10
        with pytest.raises(CodecError, match="corrupt payload"):
            decode_tensor("delta", bytes(bad), "BF16", [3000], praw, "BF16", [3000])


def test_a_parent_with_an_unseen_exponent_is_refused() -> None:
    child, parent = pair(2, 5000, seed=3, spread=10)
    parent = parent & np.uint16(0x3FFF)  # exponents of the low half only
    raw, praw = child.tobytes(), parent.tobytes()
    payload = encode_tensor(raw, "BF16", [5000], praw, "BF16", [5000], version=4).payload
    other = (parent | np.uint16(0x4000)).tobytes()
    with pytest.raises(CodecError, match="wrong parent"):
        decode_tensor("delta", payload, "BF16", [5000], other, "BF16", [5000])


def test_numpy_fallback_codes_what_the_extension_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    child, parent = pair(2, 20000, seed=12, spread=40)
    raw, praw = child.tobytes(), parent.tobytes()
    enc = encode_tensor(raw, "BF16", [20000], praw, "BF16", [20000], version=4)
    monkeypatch.setattr(V, "_exact_any", None)  # as if the extension had not built
    assert not V.has_extension()
    assert decode_tensor("delta", enc.payload, "BF16", [20000], praw, "BF16", [20000]) == raw
    assert encode_tensor(raw, "BF16", [20000], praw, "BF16", [20000], version=4) == enc
