"""Format-5 plain streams (compression.exact16_plain, BF16/F16 with no parent): golden bytes, the C kernel
(both instruction sets) and the numpy fallback write and read the same bytes, edge cases, older payloads
still read, corruption caught (never a crash)."""

from __future__ import annotations

import numpy as np
import pytest
from deltazoo.compression import exact16_plain as X
from deltazoo.compression.codecs import PLAIN16, CodecError, decode_tensor, encode_tensor
from hypothesis import given, settings
from hypothesis import strategies as st

needs_c = pytest.mark.skipif(not X.has_extension(), reason="compression._exact16_plain is not built")


def golden_input(dtype: str, n: int) -> bytes:
    """A fixed tensor: zeros of both signs, infinities, a NaN, a subnormal, then a damped sine."""
    i = np.arange(n, dtype=np.float32)
    v = (np.sin(i * np.float32(0.7)) * np.float32(0.05) * (1 + i % 7)).astype(np.float32)
    v[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40]
    if dtype == "BF16":
        return (v.view(np.uint32) >> 16).astype("<u2").tobytes()
    return v.astype(np.float16).view("<u2").tobytes()


# Golden bytes: decode must read these forever; the encode comparison flags any change of the written
# format so that it is deliberate. (dtype, elements) -> payload.
GOLDEN = {
    ("BF16", 700): (
        "445a54357003ff01bc020000000000000100100000080000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000009000090097777654543"
        "333303000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000098300100200008087093c192"
        "81372059e9d67ea2116be1d4f57c1eb2580056cba45bcea92c26a629de184fd03212c87b5984de008c92a4ae9e160195"
        "cc68c42c0fb7a4cb2f3609faa355cd69f6d154fff1ed8bc3583580d073d2d262047ef9a05f4a42640aa4acb4df2e3818"
        "16cbb7de04ff48994966cdd6c733a69fe6a72e2ad7889eccd1a21bcb77856a21b165ab5f2f2db060fdb8483a19a0b9b0"
        "2040ebdcaed0280890219f386fc42e023e12fe267a66ba9f18a914f20387576e0a5d5ae70cdbc1a68463a9e293c25009"
        "ee97e86f0b455970a55973de30228c92d4bf5d9ce3493a43f13ccc7ef466216896f9fede1ea90831cd2c6a650000465a"
        "cc228991c8eff65e32b3f1cbcc716a8bb3d6a169c5cb31c97fef774460ccf479b954eb2aa0027af4f2eaaf504226f17f"
        "09af560e3618fc8a954373961aa08f55228d3f9d21507c5f8bed012cd688c6f74407414130d88d6fa065a1c8008a7424"
        "5fc0c258665ee431bbb02d54ac72b92a853d30a803505c5477223f9d2cae9f92351d19c997e4d3cf310b63066b3bd5d9"
        "128981a8adfd412f20905154945020b092607018d0f8d3bdf9643219b0da1fec857e23df76d8dc936ab28a2f4d541f57"
        "25066704a58adf911d83c6781af17dcf0483cbc8abf725ccb258ccf0792432d7c2200afe37bd4a78f112b660b2f85c11"
        "6003be31c96df26489001a7dcd0a2d0784270d57b6f39c5105835e62d7521ac8103b3bfdfd600a4761b5b3f2f373a0b3"
        "b5a253265e3862ac404130937924f506a46e3fdb3c0b1c8282dec8fc9e112f482dc9cd72df1ad42f31f6fecf5e4ae031"
        "70c6e758f168c06a70c5ccf0713121ddfe77263e8828e8084d68d60f3f3fbfbfff7fba7c39d5a57552cc3abe9057ed7c"
        "95d010afdb078ea74b30cd97f6babbd7098716525c3a5e48703b5709bc24d27ed716bbbc4a7d688f0bc0c98c4ca6f832"
        "91201db7771c9f2c9769fed1a6bafceb5497f62b05d6f181bc6ae7a38486f8b87de078b204d37c68afbb7b9df0d2428a"
        "4bc70b096ae72a59af88b4676d6d9757a90f6db8009c60646e8ac3c484f4b8bda3f866b99be6b5b6d8e547a92fed570a"
        "ac931764b2c54b890cf1b87de0f86609a679d3a6bbfb38e1a535292e1d0312d4cea3640d1169cf3ade2e47a90f6db8d8"
        "718291b9290e1313d2757b47f164b99be6bdb6d8e557a91fdac705d6c90732d9e28f1209d2dbed85e3932598e6459bea"
        "ee71a24beba6183a06a4553b8f121ae2b83deb185d8e521fda70b1e36447d6a678989890c6edbd8a9125370d78dc3e5c"
        "11ecead17a746d255fb185f4"
    ),
    ("F16", 200): (
        "445a54357002ff01c8000000000000000100100000060000007007076076454333330300000000000000000000000000"
        "000000007759000000080080000010ae920aaa44037a1a98146be8b3aaef841b8ca9359cd5ae3bef7c215d6c4140565c"
        "3219b7e4e2a8e2852734817a7c8c8c37611a329414b2b7972a0eca5b0162b04449eb556b9ae200ab2cb3d14666aebc21"
        "b726f9f21f649b3c38bfa3ad4e935366f95cf36aff8b7bfb97386670b546818502ed642d6e99c1407fca3f68bfa5211d"
        "c1cc0a23352b29fb69ab304719b1d8c22fea69169cdf49ca7882ccd7635bbff83237e517cd7f57bf8865d641a837191e"
        "6c8d6ea3cbba4761151796d0e66cabfcd21b1a03588ca51fb842962e7201d1fc72d62104da8a79ec5648038509826408"
        "3e8a9eb701192e11905fe4e17d9b184f67d7f5fbfdaf2e3f4e75683d29661d1fc8ab766e2534c4e3f60bc7d32598e6a6"
        "bdeeee71c2a18514878e1712dcce51022f89b4f7da629747a91fdae30270322393296e2612a4c7ed19c74f96cb346fda"
        "54972fa73ab43f29b006a679e0540e0b04638e91529f549b94e3"
    ),
    ("BF16", 6): (  # too small to code: stored
        "445a54357003ff010600000000000000ff00000080807f80ffc07f0100fec17f0180807f80fdc27f010001ff00"
    ),
}


# A delta-rows payload of format 5 written now (flag PLAIN16): the format-5 delta stream of the shared
# rows, then the new rows as a plain stream (stored: 4 elements). Child and parent of test_codecs_16_delta.
GOLDEN_ROWS = (
    "445a54357203030108000000000000000400000000000000000100000807070707070707070707070707070707070707"
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
    "00000000000000000000000000000000000000000000000000000000000300000082ff0671e8240aff833ae0c0813f00"
    "bfbe843ae0c0813f00bd0875c081037f00"
)


def samples(dtype: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """Tensors of n elements: weight-like, random bits, all equal, special values, every exponent."""
    rng = np.random.default_rng(seed)
    g = (rng.standard_normal(n) * 0.02).astype(np.float32)
    weights = (
        (g.view(np.uint32) >> 16).astype(np.uint16)
        if dtype == "BF16"
        else g.astype(np.float16).view(np.uint16)
    )
    special = np.array(
        [
            0x0000,
            0x8000,
            0x7F80,
            0xFF80,
            0x7FC0,
            0xFFC1,
            0x0001,
            0x807F,
            0x7C00,
            0xFC00,
            0x7E00,
            0x03FF,
            0x8001,
        ],
        np.uint16,
    )
    return {
        "weights": weights,
        "random bits": rng.integers(0, 1 << 16, n).astype(np.uint16),
        "all equal": np.full(n, 0x3F80, np.uint16),
        "special": np.resize(special, n),
        "every exponent": (np.arange(n, dtype=np.int64) * 0x0101 % (1 << 16)).astype(np.uint16),
    }


def test_extension_is_built() -> None:
    """CI builds compression._exact16_plain (setup.py); without it the numpy fallback is the only path."""
    assert X.has_extension(), (
        "compression._exact16_plain did not build: pip install -e . needs gcc, Python headers"
    )


@pytest.mark.parametrize("key", list(GOLDEN))
def test_golden_plain_streams(key: tuple[str, int]) -> None:
    dtype, n = key
    raw, payload = golden_input(dtype, n), bytes.fromhex(GOLDEN[key])
    assert payload[:4] == b"DZT5" and payload[4:5] == b"p" and payload[7] == PLAIN16
    assert decode_tensor("plain", payload, dtype, [n]) == raw
    assert encode_tensor(raw, dtype, [n]).payload.hex() == GOLDEN[key]
    for backend in ("c", "numpy") if X.has_extension() else ("numpy",):
        assert X.decode(memoryview(payload), 16, n, dtype, backend=backend) == (raw, len(payload))


def test_golden_delta_rows_with_a_plain_tail() -> None:
    from tests.test_codecs_16_delta import CHILD, GOLDEN_V5, PARENT

    payload = bytes.fromhex(GOLDEN_ROWS)
    assert payload[7] == PLAIN16
    assert decode_tensor("delta-rows", payload, "BF16", [4, 2], PARENT[:8], "BF16", [2, 2]) == CHILD
    assert encode_tensor(CHILD, "BF16", [4, 2], PARENT[:8], "BF16", [2, 2]).payload.hex() == GOLDEN_ROWS
    old = bytes.fromhex(GOLDEN_V5["delta-rows"][3])  # format 5 as first written: a format-4 tail, no flag
    assert old[7] == 0
    assert decode_tensor("delta-rows", old, "BF16", [4, 2], PARENT[:8], "BF16", [2, 2]) == CHILD


@needs_c
@pytest.mark.parametrize("dtype", ["BF16", "F16"])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 255, 4095, 4097, 16383, 16384, 3 * 4096 + 5, 70001])
def test_c_and_numpy_write_and_read_the_same_bytes(dtype: str, n: int) -> None:
    for name, x in samples(dtype, n, seed=n).items():
        raw = x.tobytes()
        coded = X.encode(raw, dtype, b"head", backend="c")
        assert X.encode(raw, dtype, b"head", backend="numpy") == coded, name
        for backend in ("c", "numpy"):
            out, end = X.decode(memoryview(coded), 4, n, dtype, backend=backend)
            assert (out, end) == (raw, len(coded)), (name, backend)


@needs_c
@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_portable_and_bmi2_kernels_write_and_read_the_same_bytes(dtype: str) -> None:
    _exact16_plain = X._exact16_plain  # the C extension (no type stubs)

    blobs = [x.tobytes() for n in (5, 5000, 40000) for x in samples(dtype, n, seed=3).values()]
    fast = [X.encode(raw, dtype) for raw in blobs]
    try:
        assert _exact16_plain.set_portable(True) == "portable"
        assert [X.encode(raw, dtype) for raw in blobs] == fast
        assert [
            X.decode(memoryview(p), 0, len(raw) // 2, dtype)[0] for p, raw in zip(fast, blobs, strict=True)
        ] == blobs
    finally:
        _exact16_plain.set_portable(False)
    assert [
        X.decode(memoryview(p), 0, len(raw) // 2, dtype)[0] for p, raw in zip(fast, blobs, strict=True)
    ] == blobs


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_every_bit_pattern_round_trips(dtype: str) -> None:
    raw = np.arange(1 << 16, dtype="<u2").tobytes()
    enc = encode_tensor(raw, dtype, [256, 256])
    assert enc.payload[:4] == b"DZT5" and enc.payload[7] == PLAIN16
    assert decode_tensor("plain", enc.payload, dtype, [256, 256]) == raw


def test_code_lengths_are_limited_to_12_bits() -> None:
    """Fibonacci counts would give a 25-bit Huffman code: cut to 12, still a prefix code."""
    fib = [1, 1]
    while len(fib) < 26:
        fib.append(fib[-1] + fib[-2])
    lengths = X.code_lengths(np.array(fib + [0] * 6))
    assert (
        lengths.max() == X.MAX_LEN
        and (1 << X.MAX_LEN >> lengths[:26].astype(np.int64)).sum() <= 1 << X.MAX_LEN
    )
    x = np.repeat((np.arange(26, dtype=np.uint16) + 100) << 7, fib)  # BF16 exponents 100.. with those counts
    raw = x.tobytes()
    for backend in ("c", "numpy") if X.has_extension() else ("numpy",):
        coded = X.encode(raw, "BF16", backend=backend)
        assert coded[0] == X.K and X.decode(memoryview(coded), 0, x.size, "BF16", backend=backend)[0] == raw


def test_versions_and_dtypes_that_keep_format_4() -> None:
    x = samples("BF16", 5000, seed=1)["weights"].tobytes()
    assert encode_tensor(x, "BF16", [5000], version=4).payload[:4] == b"DZT4"
    f32 = np.linspace(-1, 1, 3000, dtype="<f4").tobytes()
    assert encode_tensor(f32, "F32", [3000], version=5).payload[:4] == b"DZT4"
    assert encode_tensor(f32, "F32", [3000]).payload[:4] == b"DZT6"  # F32: format 6 (test_codecs_32.py)
    for version in (4, 5):
        enc = encode_tensor(x, "BF16", [5000], version=version)
        assert decode_tensor("plain", enc.payload, "BF16", [5000]) == x


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_delta_rows_code_new_rows_as_a_plain_stream(dtype: str) -> None:
    x = samples(dtype, 6000, seed=2)["weights"]
    parent = x[:4000].copy()
    parent[::3] ^= 1
    raw, praw = x.tobytes(), parent.tobytes()
    enc = encode_tensor(raw, dtype, [60, 100], praw, dtype, [40, 100])
    assert enc.encoding == "delta-rows" and enc.payload[:4] == b"DZT5" and enc.payload[7] == PLAIN16
    assert decode_tensor("delta-rows", enc.payload, dtype, [60, 100], praw, dtype, [40, 100]) == raw
    old = encode_tensor(raw, dtype, [60, 100], praw, dtype, [40, 100], version=4)
    assert decode_tensor("delta-rows", old.payload, dtype, [60, 100], praw, dtype, [40, 100]) == raw


def test_unknown_flags_and_wrong_dtype_raise_codec_error() -> None:
    payload = bytearray(bytes.fromhex(GOLDEN[("F16", 200)]))
    payload[7] = 2
    with pytest.raises(CodecError, match="flags"):
        decode_tensor("plain", bytes(payload), "F16", [200])
    payload[7], payload[5] = PLAIN16, 1  # dtype code F32 with the plain flag
    with pytest.raises(CodecError):
        decode_tensor("plain", bytes(payload), "F32", [100])


@pytest.mark.parametrize("key", [("BF16", 700), ("F16", 200)])
def test_every_flipped_bit_and_every_truncation_is_caught(key: tuple[str, int]) -> None:
    dtype, n = key
    payload = bytes.fromhex(GOLDEN[key])
    for bit in range(8 * len(payload)):
        bad = bytearray(payload)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CodecError):
            decode_tensor("plain", bytes(bad), dtype, [n])
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            decode_tensor("plain", payload[:cut], dtype, [n])
    for at in range(16, len(payload), 37):  # the fallback too, on a sample of the stream's bytes
        bad = bytearray(payload)
        bad[at] ^= 0x10
        with pytest.raises(CodecError):
            X.decode(memoryview(bytes(bad)), 16, n, dtype, backend="numpy")


def _resum(stream: bytearray) -> bytes:
    """The stream with its checksum recomputed: corruption only the decoder itself can catch."""
    body = bytes(stream[:-16])
    s1, s2 = X.checksum(body)
    return body + s1.to_bytes(8, "little") + s2.to_bytes(8, "little")


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_garbage_with_a_valid_checksum_never_crashes(dtype: str) -> None:
    """Random segment sizes, code lengths and segment bytes under a recomputed checksum: a CodecError or
    some wrong tensor, never a crash or a read past the payload (the C decoder bounds every load)."""
    n = 20000
    good = X.encode(samples(dtype, n, seed=5)["weights"].tobytes(), dtype)
    alphabet = 1 << (X.FLOATS[dtype][0] + X.K)
    nseg = -(-n // X.SEGMENT)
    sizes_at = 5 + alphabet // 2
    rng = np.random.default_rng(7)
    backends = ("c", "numpy") if X.has_extension() else ("numpy",)
    for trial in range(300):
        bad = bytearray(good)
        if trial % 3 == 0:  # segment sizes
            bad[sizes_at : sizes_at + 2 * nseg] = rng.integers(0, 256, 2 * nseg, dtype=np.uint8).tobytes()
        elif trial % 3 == 1:  # code lengths
            bad[5 : 5 + alphabet // 2] = rng.integers(0, 256, alphabet // 2, dtype=np.uint8).tobytes()
        else:  # segment bytes
            at = int(rng.integers(sizes_at + 2 * nseg, len(bad) - 16 - 64))
            bad[at : at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        blob = _resum(bad)
        for backend in backends[: 1 if trial % 10 else 2]:
            try:
                out, end = X.decode(memoryview(blob), 0, n, dtype, backend=backend)
            except CodecError:
                continue
            assert len(out) == 2 * n and end == len(blob)


def test_without_the_extension_codecs_write_and_read_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where compression._exact16_plain did not build, encode_tensor and decode_tensor run the numpy
    fallback."""
    x = samples("BF16", 9000, seed=4)["weights"].tobytes()
    with_c = encode_tensor(x, "BF16", [90, 100]).payload
    monkeypatch.setattr(X, "_exact16_plain", None)
    assert not X.has_extension()
    assert encode_tensor(x, "BF16", [90, 100]).payload == with_c
    assert decode_tensor("plain", with_c, "BF16", [90, 100]) == x
    with pytest.raises(CodecError, match="not built"):
        X.encode(x, "BF16", backend="c")


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(["BF16", "F16"]),
    words=st.lists(st.integers(0, (1 << 16) - 1), max_size=3000),
    spread=st.integers(0, 15),
)
def test_property_plain_round_trips_and_backends_agree(dtype: str, words: list[int], spread: int) -> None:
    """Any bit patterns, narrowed to few exponents or not: the payload decodes to the input, and the numpy
    fallback writes the same bytes as the C kernel."""
    x = np.array(words, np.uint16)
    if spread < 15:  # weight-like: exponents near 1.0 (coded, not stored, once there are enough)
        exponent = (x.astype(np.int64) >> 7) & ((1 << spread) - 1)
        x = ((x & 0x807F) | 0x3C00 | exponent << 7).astype(np.uint16)
    raw = x.astype("<u2").tobytes()
    narrowed = encode_tensor(raw, dtype, [x.size])  # F16 values that BF16 holds are coded as BF16 (DZTN)
    assert decode_tensor("plain", narrowed.payload, dtype, [x.size]) == raw
    enc = encode_tensor(raw, dtype, [x.size], narrowing=False)
    assert decode_tensor("plain", enc.payload, dtype, [x.size]) == raw
    if X.has_extension():
        assert X.encode(raw, dtype, backend="numpy") == enc.payload[16:]
