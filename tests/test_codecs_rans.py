"""Format 3's entropy stage: the C kernel and the numpy fallback write and read the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
from deltazoo.compression import exact_rans as R
from deltazoo.compression.codecs import CodecError, decode_tensor, encode_tensor, layout

from tests.codec_samples import DTYPES, pair


def test_extension_is_built() -> None:
    """CI builds compression._exactc (setup.py); without it the numpy fallback is the only path."""
    assert R.has_extension(), "compression._exactc did not build: pip install -e . needs gcc, Python headers"


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("n", [0, 1, 4099, 20001])
def test_c_and_numpy_write_and_read_the_same_bytes(name: str, n: int) -> None:
    width = DTYPES[name]
    if not R.has_extension():
        pytest.skip("compression._exactc is not built; test_extension_is_built reports it")
    near, parent = pair(width, n, seed=n + width, spread=300)
    far, _ = pair(width, n, seed=n + 7, spread=1 << 30)
    delta, plain = layout(name, True), layout(name, False)
    cases = [(delta, near, parent), (delta, far, parent), (plain, near, None)]
    for lay, child, par in cases:
        coded = R.encode_stream(lay, child, par, backend="c")
        assert R.encode_stream(lay, child, par, backend="numpy") == coded
        for backend in ("c", "numpy"):
            out, end = R.decode_stream(lay, memoryview(coded), 0, n, par, backend=backend)
            assert end == len(coded)
            assert out.tobytes() == child.tobytes()


def test_lanes_grow_with_the_tensor() -> None:
    assert [R.lanes_for(n) for n in (0, 1, 8191, 8192, 1 << 20, 1 << 30)] == [1, 1, 1, 2, 256, 4096]


def test_quantized_tables_sum_to_scale_and_keep_every_seen_token() -> None:
    counts = np.zeros((256, R.ALPHA), np.uint32)
    counts[3, :200] = 1
    counts[3, 7] = 10**9
    counts[9, 5] = 4
    used, f = R.quantize(counts)
    assert used.tolist() == [3, 9]
    assert (f.sum(axis=1) == R.PROB_SCALE).all()
    assert (f[0, :200] >= 1).all() and f[1, 5] == R.PROB_SCALE


def test_every_flipped_bit_of_a_stream_is_caught() -> None:
    child, parent = pair(2, 3000, seed=11, spread=500)
    raw, praw = child.tobytes(), parent.tobytes()
    payload = encode_tensor(raw, "BF16", [3000], praw, "BF16", [3000]).payload
    for i in range(16, len(payload), 7):
        bad = bytearray(payload)
        bad[i] ^= 0x10
        with pytest.raises(CodecError, match="corrupt payload"):
            decode_tensor("delta", bytes(bad), "BF16", [3000], praw, "BF16", [3000])


def test_numpy_fallback_decodes_what_the_codec_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    child, parent = pair(2, 20000, seed=12, spread=40)
    raw, praw = child.tobytes(), parent.tobytes()
    enc = encode_tensor(raw, "BF16", [20000], praw, "BF16", [20000])
    monkeypatch.setattr(R, "_exactc", None)  # as if the extension had not built
    assert not R.has_extension()
    assert decode_tensor("delta", enc.payload, "BF16", [20000], praw, "BF16", [20000]) == raw
    assert encode_tensor(raw, "BF16", [20000], praw, "BF16", [20000]) == enc
