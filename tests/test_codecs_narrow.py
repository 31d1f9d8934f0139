"""Narrowed payloads (``DZTN``, compression.narrow): float tensors whose every element a narrower float
dtype holds bit for bit (bf16 weights saved as f32 or f16, f16 ones saved as f32) are coded in that dtype
and come back bit-exact; anything else is coded as before. Layout pinned by golden bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deltazoo.compression import exact16_delta, narrow
from deltazoo.compression.codecs import CodecError, decode_tensor, encode_tensor
from deltazoo.compression.payload import HEADER


def bf16_values(n: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = (torch.randn(n, generator=g) * scale).to(torch.bfloat16)
    v[:6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-30, -3e-7])  # f16 subnormal / zero
    return v


def raw_of(t: torch.Tensor) -> bytes:
    return t.contiguous().view(getattr(torch, f"int{8 * t.element_size()}")).numpy().tobytes()


def dtype_code(t: torch.Tensor) -> str:
    return {torch.float32: "F32", torch.float16: "F16", torch.float64: "F64", torch.bfloat16: "BF16"}[t.dtype]


def round_trip(child: torch.Tensor, parent: torch.Tensor | None = None) -> bytes:
    raw = raw_of(child)
    args = (raw_of(parent), dtype_code(parent), list(parent.shape)) if parent is not None else ()
    enc = encode_tensor(raw, dtype_code(child), list(child.shape), *args)
    assert decode_tensor(enc.encoding, enc.payload, dtype_code(child), list(child.shape), *args) == raw
    return enc.payload


@pytest.mark.parametrize("wide", [torch.float32, torch.float16, torch.float64])
def test_bf16_values_in_a_wider_dtype_are_coded_as_bf16(wide: torch.dtype) -> None:
    base = bf16_values(4096, seed=0).reshape(64, 64)
    noise = torch.randn(64, 64, generator=torch.Generator().manual_seed(1)) * 1e-3
    ft = (base.float() + noise).to(torch.bfloat16)
    for child, parent in ((base.to(wide), None), (ft.to(wide), base.to(wide))):
        payload = round_trip(child, parent)
        assert payload[:4] == narrow.MAGIC_NARROW and payload[5] == 3  # dtype code 3 = BF16
        raw = raw_of(child)
        args = (raw_of(parent), dtype_code(parent), list(parent.shape)) if parent is not None else ()
        plain_size = len(encode_tensor(raw, dtype_code(child), [64, 64], *args, narrowing=False).payload)
        assert len(payload) < plain_size  # the bits the wide dtype adds cost nothing


def test_grown_vocabulary_and_a_parent_of_another_dtype() -> None:
    base = bf16_values(48 * 32, seed=2).reshape(48, 32)
    grown = torch.cat([base, bf16_values(8 * 32, seed=3).reshape(8, 32)]).float()
    payload = round_trip(grown, base.float())  # delta-rows inside
    assert payload[:4] == narrow.MAGIC_NARROW
    assert round_trip(base.float(), base.to(torch.float16))[:4] == narrow.MAGIC_NARROW  # f16 parent


def test_f16_values_saved_as_f32_are_coded_as_f16() -> None:
    g = torch.Generator().manual_seed(4)
    child = (torch.randn(1000, generator=g) * 0.1).to(torch.float16).float()  # 11 significant bits: not bf16
    payload = round_trip(child)
    assert payload[:4] == narrow.MAGIC_NARROW and payload[5] == 2  # dtype code 2 = F16


def test_full_mantissa_shortcut_never_skips_a_tensor_a_narrower_dtype_holds() -> None:
    every_f16 = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    for chunk in raw_of(every_f16[: 1 << 15]), raw_of(every_f16[1 << 15 :]):  # NaN, inf, subnormals included
        assert not narrow.full_mantissa_f32(chunk)
    g = torch.Generator().manual_seed(6)
    full = (torch.randn(5000, generator=g, dtype=torch.float64) * 0.1).float()
    assert narrow.full_mantissa_f32(raw_of(full)) and narrow.narrowest(raw_of(full), "F32") is None
    f16_head = torch.cat([full[:4096].half().float(), full[4096:]])  # narrow-looking head, full tail
    assert not narrow.full_mantissa_f32(raw_of(f16_head))
    assert narrow.narrowest(raw_of(f16_head), "F32") is None
    assert narrow.narrowest(raw_of(full.half().float()), "F32")[0] == "F16"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_values_no_narrower_dtype_holds_are_coded_as_before(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    child = (torch.randn(1000, generator=g, dtype=torch.float64) * 0.1).to(dtype)
    assert round_trip(child)[:4] == (b"DZT6" if dtype == torch.float32 else b"DZT5")


def test_nan_payloads_narrow_only_when_they_survive() -> None:
    bits = np.array([0x7FC00000, 0x3F800000, 0xFF800001, 0], np.uint32)  # the last NaN has low bits
    assert round_trip(torch.from_numpy(bits.view(np.float32).copy()))[:4] == b"DZT6"  # F32, not narrowed
    bits[2] = 0xFFC10000  # a NaN with a payload in the high half only: bf16 holds it
    assert round_trip(torch.from_numpy(bits.view(np.float32).copy()))[:4] == narrow.MAGIC_NARROW


def test_f16_with_a_nan_is_not_narrowed() -> None:
    child = bf16_values(256, seed=7).to(torch.float16)
    child[9] = float("nan")
    assert round_trip(child)[:4] == b"DZT5"


@pytest.mark.skipif(narrow._narrow is None, reason="compression._narrow is not built")
@pytest.mark.parametrize("portable", [False, True])  # the AVX2/F16C loops and the scalar ones
def test_c_casts_are_exact_on_every_f16_and_agree_with_torch(
    monkeypatch: pytest.MonkeyPatch, portable: bool
) -> None:
    c = narrow._narrow
    h = np.arange(1 << 16, dtype=np.uint16)
    f32 = h.view(np.float16).astype(np.float32).view(np.uint32)
    holds = ~np.isnan(h.view(np.float16)) & (f32 & 0xFFFF == 0)  # the f16 values bf16 holds
    finite = h[~np.isnan(h.view(np.float16))]
    torch_rne = torch.from_numpy(finite.view(np.float16)).to(torch.bfloat16).view(torch.int16).numpy()
    c.set_portable(portable)
    try:
        out = np.empty(int(holds.sum()), "<u2")
        assert c.f16_to_bf16(h[holds].tobytes(), out) and (out == f32[holds] >> 16).all()
        back = np.empty_like(out)
        c.bf16_to_f16(out.tobytes(), back)
        assert (back == h[holds]).all()
        assert c.bf16_to_f16_bytes(out.tobytes()) == back.tobytes()  # the decoder's form: a new bytes object
        assert c.bf16_to_f32_bytes(out.tobytes()) == (out.astype("<u4") << 16).tobytes()
        for one in h[~holds][::97]:  # each value bf16 does not hold (or a NaN) is refused: 8 lanes + 1
            assert not c.f16_to_bf16(np.full(9, one, "<u2").tobytes(), np.empty(9, "<u2"))
        rne = np.empty_like(finite)  # the parent cast: torch's round to nearest even
        assert c.f16_to_bf16_rne(finite.tobytes(), rne) and (rne == torch_rne.view(np.uint16)).all()
        assert not c.f16_to_bf16_rne(np.full(9, 0x7E00, "<u2").tobytes(), np.empty(9, "<u2"))
    finally:
        c.set_portable(False)
    tensor = h[holds].tobytes()
    with_c = narrow.narrowest(tensor, "F16")
    monkeypatch.setattr(narrow, "_narrow", None)  # torch's casts give the same bytes
    assert narrow.narrowest(tensor, "F16") == with_c and with_c is not None
    assert narrow.widen(with_c[1], "BF16", "F16") == tensor


def test_child_narrows_but_parent_does_not() -> None:
    g = torch.Generator().manual_seed(6)
    parent = torch.randn(512, generator=g) * 0.02  # genuine f32
    child = (parent + 1e-3).to(torch.bfloat16).float()
    assert round_trip(child, parent)[:4] == narrow.MAGIC_NARROW


# Four f32 values of bf16 (1.0, -2.0, 0.5, 0): header DZTN, F32 (1), BF16 (3), then the BF16 payload.
GOLDEN = (
    "445a544e01030000"  # DZTN, F32, BF16, 2 zero bytes
    "445a54357003ff010400000000000000ff803f00c0003f0000ff803f00c0003f00fe017f0080017e00"  # the BF16 payload
)


def test_golden_bytes_and_corruption() -> None:
    raw = np.array([1.0, -2.0, 0.5, 0.0], np.float32).tobytes()
    payload = encode_tensor(raw, "F32", [4]).payload
    assert payload.hex() == GOLDEN
    assert decode_tensor("plain", bytes.fromhex(payload.hex()), "F32", [4]) == raw
    inner = payload[narrow.HEADER.size :]
    assert (
        decode_tensor("plain", inner, "BF16", [4])
        == np.array([1.0, -2.0, 0.5, 0.0], np.float32).view("<u2")[1::2].tobytes()
    )
    with pytest.raises(CodecError, match="F32 tensor but F16"):
        decode_tensor("plain", payload, "F16", [4])
    with pytest.raises(CodecError, match="cannot be narrowed"):
        decode_tensor("plain", payload[:5] + bytes([1]) + payload[6:], "F32", [4])  # F32 inside F32
    with pytest.raises(CodecError, match="inside a narrowed"):
        decode_tensor("plain", payload[:8] + payload, "F32", [4])
    with pytest.raises(CodecError, match="truncated"):
        decode_tensor("plain", payload[:6], "F32", [4])


def f16_family(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An F16 parent (values bf16 does not hold too: its cast rounds them) and an F16 child of bf16 values."""
    g = torch.Generator().manual_seed(seed)
    parent = (torch.randn(n, generator=g) * 0.02).half()
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 3e-7, -6e-8, 65504.0, 1e-4])
    parent[: min(n, 8)] = special[: min(n, 8)]
    child = (parent.float() + torch.randn(n, generator=g) * 1e-3).to(torch.bfloat16).half()
    return child, parent


@pytest.mark.skipif(exact16_delta._exact16_delta is None, reason="compression._exact16_delta is not built")
@pytest.mark.parametrize("portable", [False, True])  # BMI2 decoder and AVX2/F16C casts, and the scalar ones
@pytest.mark.parametrize("n", [5, 203, 256 * 15 + 100, 4096 * 23 + 1234])  # groups of 8, 4, 2, 1, a short one
def test_f16_delta_decodes_straight_to_f16_as_the_two_step_route(
    monkeypatch: pytest.MonkeyPatch, n: int, portable: bool
) -> None:
    child, parent = f16_family(n, seed=n)
    raw, praw = raw_of(child), raw_of(parent)
    enc = encode_tensor(raw, "F16", [n], praw, "F16", [n])
    assert enc.payload[:4] == narrow.MAGIC_NARROW and enc.encoding == "delta"
    inner = memoryview(enc.payload)[narrow.HEADER.size :]
    exact16_delta._exact16_delta.set_portable(portable)
    narrow._narrow.set_portable(portable)
    try:
        fused = exact16_delta.decode_stream_f16(inner, HEADER.size, n, np.frombuffer(praw, "<u2"))
        two_step = narrow.widen(decode_tensor("delta", inner, "BF16", [n], praw, "F16", [n]), "BF16", "F16")
        assert fused is not None and fused[1] == len(inner)
        assert fused[0].tobytes() == two_step == raw
        fused_calls: list[int | None] = []
        kernel = exact16_delta.decode_stream_f16
        monkeypatch.setattr(  # decode_tensor takes the one-pass route
            exact16_delta, "decode_stream_f16", lambda *a: fused_calls.append(n) or kernel(*a)
        )
        assert decode_tensor("delta", enc.payload, "F16", [n], praw, "F16", [n]) == raw
        assert fused_calls == [n]
    finally:
        exact16_delta._exact16_delta.set_portable(False)
        narrow._narrow.set_portable(False)


@pytest.mark.skipif(exact16_delta._exact16_delta is None, reason="compression._exact16_delta is not built")
def test_f16_delta_falls_back_for_a_nan_parent_and_names_corruption() -> None:
    n = 5000
    child, parent = f16_family(n, seed=9)
    parent[4321] = float("nan")  # torch casts this parent: the kernel declines it
    raw, praw = raw_of(child), raw_of(parent)
    enc = encode_tensor(raw, "F16", [n], praw, "F16", [n])
    inner = memoryview(enc.payload)[narrow.HEADER.size :]
    assert exact16_delta.decode_stream_f16(inner, HEADER.size, n, np.frombuffer(praw, "<u2")) is None
    assert decode_tensor("delta", enc.payload, "F16", [n], praw, "F16", [n]) == raw
    child, parent = f16_family(n, seed=10)
    raw, praw = raw_of(child), raw_of(parent)
    payload = bytearray(encode_tensor(raw, "F16", [n], praw, "F16", [n]).payload)
    payload[len(payload) // 2] ^= 0x10
    with pytest.raises(CodecError, match="checksum"):
        decode_tensor("delta", bytes(payload), "F16", [n], praw, "F16", [n])
    intact = encode_tensor(raw, "F16", [n], praw, "F16", [n]).payload
    with pytest.raises(CodecError, match="parent of"):  # the parent checked as the two-step route does
        decode_tensor("delta", intact, "F16", [n], praw[:-2], "F16", [n - 1])
    grown = torch.cat([child, child[:64]])  # delta-rows: the two-step route
    assert round_trip(grown, parent)[:4] == narrow.MAGIC_NARROW
