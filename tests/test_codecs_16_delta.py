"""Format 5 (Huffman over delta tokens, BF16/F16): golden bytes, the C kernel and the numpy fallback
write and read the same bytes, escapes, every older format still read, corruption caught."""

from __future__ import annotations

import numpy as np
import pytest
from deltazoo.compression import exact16_delta as V
from deltazoo.compression.codecs import CodecError, decode_tensor, encode_tensor

needs_c = pytest.mark.skipif(not V.has_extension(), reason="compression._exact16_delta is not built")
SHIFT = {"BF16": 7, "F16": 10}

# Golden bytes: a fixed BF16 child and parent and their format-5 payloads. decode must read these
# forever; the encode comparison flags any change of the written format so that it is deliberate.
CHILD = bytes.fromhex("803f20c000005040833ae0c0813f00bf")
PARENT = bytes.fromhex("803f00c0003f4040833ac0c0803f01bf")
GOLDEN_V5 = {
    "delta": (
        [8], PARENT, [8],
        "445a54356403030008000000000000000001000008070707070707070707070707070707070707070707070707070707"
        "070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707"
        "070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707"
        "060504030201000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000010000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000010000000100000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000010001000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000001000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000001000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000004000000c2ff0620bf710c2a",
    ),
    "delta-rows": (
        [4, 2], PARENT[:8], [2, 2],
        "445a54357203030008000000000000000400000000000000000100000807070707070707070707070707070707070707"
        "070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707"
        "070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707"
        "070707070707070605040302010000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000100000001000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000100000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000010000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000300000082ff0671e8240a0000040001000000"
        "75000d00000400000000000000000000000000000000000400040000000400b0010100000000200000000000000003e0"
        "018053a02e84",
    ),
}


def pair(n: int, seed: int, spread: int, base: int = 0x3C00) -> tuple[np.ndarray, np.ndarray]:
    """A parent of float-like bit patterns around ``base`` and a child near it (|difference| < spread)."""
    rng = np.random.default_rng(seed)
    parent = (base + rng.integers(-1500, 1500, n)).astype(np.uint16)
    step = rng.integers(-spread, spread, n)
    return ((parent.astype(np.int64) + step) & 0xFFFF).astype(np.uint16), parent


def test_extension_is_built() -> None:
    """CI builds compression._exact16_delta (setup.py); without it the numpy fallback is the only path."""
    assert V.has_extension(), (
        "compression._exact16_delta did not build: pip install -e . needs gcc, Python headers"
    )


@pytest.mark.parametrize("encoding", list(GOLDEN_V5))
def test_golden_format_5(encoding: str) -> None:
    shape, parent, pshape, hexed = GOLDEN_V5[encoding]
    assert decode_tensor(encoding, bytes.fromhex(hexed), "BF16", shape, parent, "BF16", pshape) == CHILD
    if encoding == "delta":  # delta-rows code new rows with exact16_plain: see test_codecs_16_plain.py
        enc = encode_tensor(CHILD, "BF16", shape, parent, "BF16", pshape)
        assert (enc.encoding, enc.payload.hex()) == (encoding, hexed)


@needs_c
@pytest.mark.parametrize("dtype", ["BF16", "F16"])
@pytest.mark.parametrize("n", [0, 1, 255, 4099, 70001])
def test_c_and_numpy_write_and_read_the_same_bytes(dtype: str, n: int) -> None:
    near, parent = pair(n, seed=n, spread=300)
    far, _ = pair(n, seed=n + 1, spread=1 << 15)  # every token, escapes included when tables are sampled
    for child in (near, far):
        coded = V.encode_stream(child, parent, SHIFT[dtype], backend="c")
        assert V.encode_stream(child, parent, SHIFT[dtype], backend="numpy") == coded
        for backend in ("c", "numpy"):
            out, end = V.decode_stream(memoryview(coded), 0, n, parent, SHIFT[dtype], backend=backend)
            assert end == len(coded)
            assert out.tobytes() == child.tobytes()


@needs_c
@pytest.mark.parametrize("threads", [2, 3])
def test_threads_write_and_read_the_same_bytes(threads: int) -> None:
    n = 9 * 4096 + V.SAMPLE_FROM + 77  # segments of 4096, the last short: runs of unequal length
    child, parent = pair(n, seed=6, spread=900)
    one = V.encode_stream(child, parent, 7)
    assert V.encode_stream(child, parent, 7, threads=threads) == one
    out, end = V.decode_stream(memoryview(one), 0, n, parent, 7, threads=threads)
    assert end == len(one) and out.tobytes() == child.tobytes()
    raw, praw = child.tobytes(), parent.tobytes()
    enc = encode_tensor(raw, "BF16", [n], praw, "BF16", [n], threads=threads)
    assert enc.payload[:4] == b"DZT5"
    assert decode_tensor("delta", enc.payload, "BF16", [n], praw, "BF16", [n], threads=threads) == raw
    small = V.encode_stream(child[:10], parent[:10], 7, threads=threads)  # fewer segments than threads
    assert V.decode_stream(memoryview(small), 0, 10, parent[:10], 7, threads=threads)[0].tobytes() == (
        child[:10].tobytes()
    )


@needs_c
def test_code_lengths_of_c_and_python_agree() -> None:
    """The C kernel builds the same length-limited codes as ``code_lengths`` (lengths are in the stream)."""
    rng = np.random.default_rng(4)
    counts = np.zeros((40, V.NTOK), np.int64)
    for row in counts:  # skewed, flat, sparse, lone-token and empty contexts
        used = rng.choice(V.NTOK, int(rng.integers(0, V.NTOK)), replace=False)
        row[used] = (rng.pareto(rng.uniform(0.3, 3.0), used.size) * 1000).astype(np.int64) + 1
    c_lengths = np.zeros(counts.shape, np.uint8)
    V._exact16_delta.lengths(counts, c_lengths)
    for row, got in zip(counts, c_lengths, strict=True):
        want = V.code_lengths(row)
        assert got.tolist() == want.tolist()
        used = want[want > 0].astype(np.int64)
        assert used.max(initial=1) <= V.MAX_LEN
        assert (1 << (V.MAX_LEN - used)).sum() <= 1 << V.MAX_LEN  # a prefix code (Kraft)


@needs_c
def test_c_tables_equal_the_numpy_tables() -> None:
    rng = np.random.default_rng(5)
    counts = (rng.pareto(0.8, (8, V.NTOK)) * 100).astype(np.int64) * (rng.random((8, V.NTOK)) < 0.7)
    counts[3] = 0  # a context no element had
    counts[4, 1:] = 0  # a lone token
    counts[:, V.ESCAPE] = np.arange(8) % 2  # escapes in some contexts
    lengths = np.stack([V.code_lengths(c) for c in counts])
    enc, dec = V._tables(lengths, use_c=True)
    assert enc.tolist() == V.enc_table(lengths).tolist()
    assert dec.tolist() == V.dec_table(lengths).tolist()


def test_tokens_missing_from_the_sampled_tables_are_escaped() -> None:
    n = V.SAMPLE_FROM + 3
    child, parent = pair(n, seed=9, spread=4)
    child[1::4] ^= np.uint16(0x7FF0)  # huge differences, never at the sampled positions (every 4th)
    for backend in ("c", "numpy") if V.has_extension() else ("numpy",):
        coded = V.encode_stream(child, parent, 7, backend=backend)
        out, _ = V.decode_stream(memoryview(coded), 0, n, parent, 7, backend=backend)
        assert out.tobytes() == child.tobytes()


def test_bf16_and_f16_deltas_are_written_as_format_5_and_version_4_still_writes_format_4() -> None:
    child, parent = pair(5000, seed=2, spread=50)
    raw, praw = child.tobytes(), parent.tobytes()
    for dtype in ("BF16", "F16"):
        assert encode_tensor(raw, dtype, [5000], praw, dtype, [5000]).payload[:4] == b"DZT5"
        old = encode_tensor(raw, dtype, [5000], praw, dtype, [5000], version=4)
        assert old.payload[:4] == b"DZT4"
        assert decode_tensor("delta", old.payload, dtype, [5000], praw, dtype, [5000]) == raw
    assert encode_tensor(raw, "BF16", [5000]).payload[:4] == b"DZT5"  # plain: see test_codecs_16_plain.py
    with pytest.raises(CodecError, match="version must be one of"):
        encode_tensor(raw, "BF16", [5000], praw, "BF16", [5000], version=3)


def test_every_flipped_bit_of_a_stream_is_caught() -> None:
    child, parent = pair(3000, seed=11, spread=500)
    raw, praw = child.tobytes(), parent.tobytes()
    payload = encode_tensor(raw, "BF16", [3000], praw, "BF16", [3000]).payload
    assert payload[:4] == b"DZT5"
    for i in range(16, len(payload), 7):
        bad = bytearray(payload)
        bad[i] ^= 0x10
        with pytest.raises(CodecError, match="corrupt payload"):
            decode_tensor("delta", bytes(bad), "BF16", [3000], praw, "BF16", [3000])


def test_truncated_and_mislabelled_payloads_raise_codec_error() -> None:
    shape, parent, pshape, hexed = GOLDEN_V5["delta"]
    payload = bytes.fromhex(hexed)
    for cut in (20, 300, len(payload) - 5, len(payload) - 1):
        with pytest.raises(CodecError, match="corrupt payload"):
            decode_tensor("delta", payload[:cut], "BF16", shape, parent, "BF16", pshape)
    huge = V.encode_stream(np.zeros(3, np.uint16), np.zeros(3, np.uint16), 7)
    huge = (1 << 31).to_bytes(4, "little") + huge[4:]  # a segment size no writer uses; refused before the crc
    with pytest.raises(CodecError, match="format-5 segments of"):
        V.decode_stream(memoryview(huge), 0, 3, np.zeros(3, np.uint16), 7)
    as_f32 = bytearray(payload)
    as_f32[5] = as_f32[6] = 1  # F32 tensor and parent: format 5 codes only BF16 and F16
    with pytest.raises(CodecError, match="format 5 codes BF16 and F16"):
        decode_tensor("delta", bytes(as_f32), "F32", [8], bytes(32), "F32", [8])


def test_numpy_fallback_codes_what_the_extension_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    child, parent = pair(20000, seed=12, spread=40)
    raw, praw = child.tobytes(), parent.tobytes()
    enc = encode_tensor(raw, "BF16", [20000], praw, "BF16", [20000])
    monkeypatch.setattr(V, "_exact16_delta", None)  # as if the extension had not built
    assert not V.has_extension()
    assert decode_tensor("delta", enc.payload, "BF16", [20000], praw, "BF16", [20000]) == raw
    assert encode_tensor(raw, "BF16", [20000], praw, "BF16", [20000]) == enc


@needs_c
@pytest.mark.parametrize("dtype", ["BF16", "F16"])
@pytest.mark.parametrize("n", [3, 2000, 9 * 4096 + V.SAMPLE_FROM + 77])
def test_bmi2_and_portable_kernels_write_and_read_the_same_bytes(dtype: str, n: int) -> None:
    """The BMI2 clones (picked at import where the CPU has BMI2) and the plain x86-64-v2 code are the
    same coder: forcing the portable one (and the byte-table crc32) gives the same bytes and reads every
    stream back."""
    near, parent = pair(n, seed=n, spread=300)
    far, _ = pair(n, seed=n + 1, spread=1 << 15)  # long codes with extra bits (the rare slow step), escapes
    chosen = V._exact16_delta.set_portable(False)  # "bmi2" where the CPU has it
    try:
        for child in (near, far):
            V._exact16_delta.set_portable(False)
            coded = V.encode_stream(child, parent, SHIFT[dtype])
            assert V.encode_stream(child, parent, SHIFT[dtype], backend="numpy") == coded
            out, _ = V.decode_stream(memoryview(coded), 0, n, parent, SHIFT[dtype])
            assert out.tobytes() == child.tobytes()
            assert V._exact16_delta.set_portable(True) == "portable"
            assert V.encode_stream(child, parent, SHIFT[dtype]) == coded
            out, _ = V.decode_stream(memoryview(coded), 0, n, parent, SHIFT[dtype])
            assert out.tobytes() == child.tobytes()
            out, _ = V.decode_stream(memoryview(coded), 0, n, parent, SHIFT[dtype], threads=2)
            assert out.tobytes() == child.tobytes()
    finally:
        assert V._exact16_delta.set_portable(False) == chosen


@needs_c
def test_crc32_kernel_is_zlib_crc32() -> None:
    import zlib

    rng = np.random.default_rng(13)
    data = rng.integers(0, 256, 100_010, dtype=np.uint8).tobytes()
    chosen = V._exact16_delta.set_portable(False)
    try:
        # carry-less multiplies where the CPU has them (128-bit below 256 bytes, 256-bit VPCLMULQDQ from
        # there on where it has that), then the byte table
        for portable in (False, True):
            V._exact16_delta.set_portable(portable)
            for n in [*range(0, 200), 255, 256, 271, 383, 384, 1000, 4999, 100_003]:
                for at in (0, 1, 7):
                    chunk = memoryview(data)[at : at + n]
                    assert V._exact16_delta.crc32(chunk) == zlib.crc32(chunk)
                    assert V._exact16_delta.crc32(chunk, 0xDEADBEEF) == zlib.crc32(chunk, 0xDEADBEEF)
    finally:
        assert V._exact16_delta.set_portable(False) == chosen


@needs_c
def test_a_body_that_lies_is_refused_without_reading_past_the_stream() -> None:
    """Corrupt segment bits behind a valid crc: the kernel bounds its reads by the body (it reads the
    payload in place, no padded copy) and the segment-end check names the fault."""
    import struct
    import zlib

    n = 3 * 4096 + V.SAMPLE_FROM
    child, parent = pair(n, seed=14, spread=700)
    coded = V.encode_stream(child, parent, 7)
    seg, k = struct.unpack_from("<IB", coded)
    nseg = -(-n // seg)
    body_at = 5 + 256 + k * V.NTOK + 4 * nseg
    rng = np.random.default_rng(15)
    for trial in range(40):
        bad = bytearray(coded)
        lo = body_at if trial % 2 else len(coded) - 40  # anywhere, or near the end (the bounded loads)
        for i in rng.integers(lo, len(coded) - 4, 3):
            bad[i] ^= int(rng.integers(1, 256))
        bad[-4:] = struct.pack("<I", zlib.crc32(bytes(bad[:-4])))
        try:
            out, _ = V.decode_stream(memoryview(bytes(bad)), 0, n, parent, 7)
        except CodecError as exc:
            assert "does not end where its size says" in str(exc)
        else:
            assert out.size == n  # a flip the code absorbs: still n elements
