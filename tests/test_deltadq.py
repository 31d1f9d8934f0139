"""DeltaDQ profiles, packing and artifacts on small hand-made tensors."""

from __future__ import annotations

import json

import pytest
import torch
from deltazoo.compression.deltadq import (
    DeltaDQProfile,
    build_artifact,
    compress_delta,
    parse_profile,
    tensor_seed,
)
from deltazoo.compression.packed import index_bits, load_artifact, save_artifact, unpack_code_rows


def _pair(rows: int = 6, cols: int = 64, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=gen)
    delta = torch.randn(rows, cols, generator=gen) * 0.01
    return (base + delta).to(dtype), base.to(dtype)


def test_parse_default_is_the_paper_recipe():
    p = parse_profile("deltadq:n=1,m=32,bits=4")
    assert p == DeltaDQProfile()
    options = (p.scale, p.select, p.rescale, p.fit, p.include, p.seed)
    assert options == ("tensor", "random", "mn", "minmax", "linear", 0)
    assert str(p) == "deltadq:n=1,m=32,bits=4"


def test_parse_canonical_order_and_round_trip():
    p = parse_profile(" deltadq: seed=7, rescale=sum,bits=8,scale=group,group_size=64,m=16,n=2 ")
    assert str(p) == "deltadq:n=2,m=16,bits=8,scale=group,group_size=64,rescale=sum,seed=7"
    assert parse_profile(str(p)) == p
    assert str(parse_profile("deltadq")) == "deltadq:n=1,m=32,bits=4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dq:n=1,m=32,bits=4", "not a deltadq profile"),
        ("deltadq:n=33,m=32,bits=4", "n=33 must be between 1 and m=32"),
        ("deltadq:n=0,m=32,bits=4", "n=0"),
        ("deltadq:n=1,m=32,bits=5", "bits=5 is not supported"),
        ("deltadq:n=1,m=32,bits=4,colour=red", "unknown option 'colour'"),
        ("deltadq:n=1,n=2", "given twice"),
        ("deltadq:n=one", "must be a non-negative integer"),
        ("deltadq:n=-1", "must be a non-negative integer"),
        ("deltadq:n", "is not key=value"),
        ("deltadq:n=1,,m=32", "is not key=value"),
        ("deltadq:scale=group", "needs group_size"),
        ("deltadq:scale=group,group_size=48", "multiple of m=32"),
        ("deltadq:group_size=64", "only meaningful with scale=group"),
        ("deltadq:select=best", "select='best' is not one of"),
        ("deltadq:m=0", "m=0 must be between 1"),
    ],
)
def test_parse_rejects_with_a_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_profile(text)


def test_nm_pattern_has_exactly_n_per_group_in_ascending_order():
    ft, base = _pair(rows=5, cols=96)
    d = compress_delta(ft, base, "deltadq:n=3,m=16,bits=4", "w")
    d.validate("w")
    pos = unpack_code_rows(d.indices, d.kept_per_row, index_bits(16)).reshape(5, 6, 3)
    assert (pos < 16).all()
    assert (pos[..., 1:] > pos[..., :-1]).all()  # n distinct, ascending
    _, columns = d.codes()
    assert columns.shape == (5, 18)
    assert ((columns // 16) == torch.arange(6).repeat_interleave(3)).all()


def test_paper_recipe_values_are_rescaled_and_min_max_quantized():
    ft, base = _pair(rows=4, cols=64)
    n, m, bits = 2, 16, 4
    d = compress_delta(ft, base, f"deltadq:n={n},m={m},bits={bits}", "layer.weight")
    q, columns = d.codes()
    delta = ft.float() - base.float()
    kept = torch.gather(delta, 1, columns.long()) * (m / n)
    qmax = 2 ** (bits - 1) - 1
    scale = (kept.abs().max() / qmax).to(torch.float16).float()
    assert d.scales.dtype == torch.float16 and d.scales.shape == (1,)
    assert d.scales.float().item() == scale.item()
    expect = torch.round(kept / scale).clamp(-qmax, qmax).int()
    assert torch.equal(q, expect)
    assert q.abs().max().item() == qmax  # min-max: the largest value uses the top level
    dense = d.to_dense()
    assert torch.equal(torch.gather(dense, 1, columns.long()), expect.float() * scale)
    assert (dense != 0).sum() <= 4 * 64 // m * n


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_levels_stay_in_the_symmetric_range(bits):
    ft, base = _pair(rows=3, cols=64, seed=bits)
    d = compress_delta(ft, base, f"deltadq:n=4,m=8,bits={bits},scale=row", "w")
    q, _ = d.codes()
    assert q.abs().max().item() <= 2 ** (bits - 1) - 1
    codes = unpack_code_rows(d.values, d.kept_per_row, bits)
    assert codes.min().item() >= 1 and codes.max().item() <= 2**bits - 1


def test_scale_granularities_shapes_and_accuracy():
    ft, base = _pair(rows=4, cols=128)
    delta = ft.float() - base.float()
    errors = {}
    for scale, shape in (("tensor", (1,)), ("row", (4,)), ("group,group_size=64", (4, 2))):
        d = compress_delta(ft, base, f"deltadq:n=8,m=8,bits=4,scale={scale}", "w")
        assert tuple(d.scales.shape) == shape
        errors[scale] = (d.to_dense() - delta).abs().max().item()
        assert errors[scale] <= d.scales.float().max().item() / 2 + 1e-6
    assert errors["group,group_size=64"] <= errors["tensor"]


def test_seeds_are_reproducible_and_vary_by_seed_and_name():
    ft, base = _pair(rows=4, cols=64)
    a = compress_delta(ft, base, "deltadq:n=1,m=8,bits=4", "x.weight")
    b = compress_delta(ft, base, "deltadq:n=1,m=8,bits=4", "x.weight")
    c = compress_delta(ft, base, "deltadq:n=1,m=8,bits=4,seed=1", "x.weight")
    e = compress_delta(ft, base, "deltadq:n=1,m=8,bits=4", "y.weight")
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert a.seed == tensor_seed(0, "x.weight") and c.seed == tensor_seed(1, "x.weight")
    assert not torch.equal(a.indices, c.indices)
    assert not torch.equal(a.indices, e.indices)


def test_magnitude_select_keeps_the_largest_and_sum_rescale_keeps_group_sums():
    ft, base = _pair(rows=3, cols=32, dtype=torch.float32)  # float32: no ties in |Δ|
    delta = ft.float() - base.float()
    d = compress_delta(ft, base, "deltadq:n=1,m=8,bits=8,select=magnitude,rescale=none,scale=row", "w")
    _, columns = d.codes()
    assert torch.equal(columns.long(), delta.reshape(3, 4, 8).abs().argmax(-1) + torch.arange(4) * 8)
    s = compress_delta(ft, base, "deltadq:n=2,m=8,bits=8,rescale=sum,scale=row", "w")
    sums = s.to_dense().reshape(3, 4, 8).sum(-1)
    assert torch.allclose(sums, delta.reshape(3, 4, 8).sum(-1), atol=2 * s.scales.float().max().item())


def test_lsq_fit_is_no_worse_than_min_max():
    ft, base = _pair(rows=8, cols=64, seed=3)
    delta = ft.float() - base.float()
    err = {}
    for fit in ("minmax", "lsq"):
        d = compress_delta(ft, base, f"deltadq:n=8,m=8,bits=3,scale=row,fit={fit}", "w")
        err[fit] = ((d.to_dense() - delta) ** 2).sum().item()
    assert err["lsq"] <= err["minmax"] * 1.001


@pytest.mark.parametrize(
    ("ft", "base", "message"),
    [
        (torch.zeros(4, 30), torch.zeros(4, 30), "pad or choose m dividing 30"),
        (torch.zeros(4, 32), torch.zeros(4, 64), "shape"),
        (torch.zeros(4, 32), torch.zeros(4, 32, dtype=torch.float16), "dtype"),
        (torch.zeros(32), torch.zeros(32), "2-D"),
    ],
)
def test_compress_delta_errors_name_the_tensor(ft, base, message):
    with pytest.raises(ValueError, match=message) as info:
        compress_delta(ft, base, "deltadq:n=1,m=32,bits=4", "model.layers.0.mlp.up_proj.weight")
    assert "model.layers.0.mlp.up_proj.weight" in str(info.value)


def _states():
    gen = torch.Generator().manual_seed(5)
    base = {
        "model.embed_tokens.weight": torch.randn(16, 32, generator=gen),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(32, 32, generator=gen),
        "model.layers.0.mlp.down_proj.weight": torch.randn(32, 64, generator=gen),
        "model.layers.0.input_layernorm.weight": torch.ones(32),
        "model.layers.0.odd.weight": torch.randn(4, 20, generator=gen),
        "lm_head.weight": torch.randn(16, 32, generator=gen),
        "model.unchanged.weight": torch.randn(8, 32, generator=gen),
        "model.gone.weight": torch.randn(2, 32, generator=gen),
    }
    base = {k: v.to(torch.bfloat16) for k, v in base.items()}
    ft = {
        k: (v.float() + 0.01 * torch.randn(v.shape, generator=gen)).to(torch.bfloat16)
        for k, v in base.items()
    }
    ft["model.unchanged.weight"] = base["model.unchanged.weight"].clone()
    ft["model.extra.bias"] = torch.randn(32, generator=gen).to(torch.bfloat16)
    del ft["model.gone.weight"]
    return base, ft


def test_build_artifact_chooses_packed_dense_and_omitted():
    base, ft = _states()
    art = build_artifact(base, ft, "deltadq:n=1,m=16,bits=4")
    assert set(art.packed) == {
        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
    }
    assert set(art.dense) == {
        "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.odd.weight",
        "lm_head.weight", "model.extra.bias",
    }
    assert art.profile == "deltadq:n=1,m=16,bits=4"
    assert art.metadata["seed"] == "0" and art.metadata["deltadq_version"] == "1"
    assert art.metadata["removed"] == '["model.gone.weight"]'
    everything = build_artifact(base, ft, "deltadq:n=1,m=16,bits=4,include=all")
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(everything.packed)


def test_artifact_round_trip_through_the_container(tmp_path):
    base, ft = _states()
    art = build_artifact(base, ft, parse_profile("deltadq:n=2,m=16,bits=4,scale=row,seed=3"))
    save_artifact(art, tmp_path / "a.safetensors")
    back = load_artifact(tmp_path / "a.safetensors")
    assert back.profile == art.profile and back.metadata == art.metadata
    approx = back.apply_to(base)
    for name, d in art.packed.items():
        expect = (base[name].float() + d.to_dense()).to(torch.bfloat16)
        assert torch.equal(approx[name], expect)
        assert torch.equal(back.packed[name].values, d.values) and back.packed[name].seed == d.seed
    for name in art.dense:
        assert torch.equal(approx[name], ft[name])
    assert torch.equal(approx["model.unchanged.weight"], base["model.unchanged.weight"])


# A 2x8 delta packed with deltadq:n=1,m=4,bits=4,select=magnitude,rescale=none (format v1, written by
# deltazoo 0.1.0; see docs/FORMAT.md). These bytes must load to the same delta forever.
GOLDEN_CONTAINER_HEX = (
    "70020000000000007b225f5f6d657461646174615f5f223a7b2273656564223a2230222c22666f726d61745f76657273"
    "696f6e223a2231222c22656e7472696573223a227b5c22772e7765696768745c223a207b5c22626974735c223a20342c"
    "205c2264747970655c223a205c22666c6f617433325c222c205c2267726f75705f73697a655c223a20302c205c226b69"
    "6e645c223a205c227061636b65645c222c205c226d5c223a20342c205c226e5c223a20312c205c227363616c655f6772"
    "616e756c61726974795c223a205c2274656e736f725c222c205c22736565645c223a2037393034343330363032303732"
    "3232363731382c205c2273686170655c223a205b322c20385d7d7d222c2270726f66696c65223a2264656c746164713a"
    "6e3d312c6d3d342c626974733d342c73656c6563743d6d61676e69747564652c72657363616c653d6e6f6e65222c226d"
    "6574686f64223a2264656c74616471222c2264656c746164715f76657273696f6e223a2231222c2272656d6f76656422"
    "3a225b5d222c22666f726d6174223a2264656c74617a6f6f2e7061636b65642d64656c7461227d2c22772e7765696768"
    "743a7363616c6573223a7b226474797065223a22463136222c227368617065223a5b315d2c22646174615f6f66667365"
    "7473223a5b302c325d7d2c22772e7765696768743a696e6469636573223a7b226474797065223a225538222c22736861"
    "7065223a5b322c345d2c22646174615f6f666673657473223a5b322c31305d7d2c22772e7765696768743a76616c7565"
    "73223a7b226474797065223a225538222c227368617065223a5b322c345d2c22646174615f6f666673657473223a5b31"
    "302c31385d7d7d2092300d000000040000001c0000004d000000"
)


def _golden_pair():
    base = torch.zeros(2, 8, dtype=torch.float32)
    ft = torch.tensor(
        [[0.0, 0.5, -0.25, 0.0, 0.125, 0.0, 0.0, -1.0], [0.75, 0.0, 0.0, 0.25, 0.0, -0.5, 0.0, 0.0]]
    )
    return {"w.weight": ft}, {"w.weight": base}


def _split(blob: bytes) -> tuple[dict, bytes]:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + size]), blob[8 + size :]


def test_golden_container_reads_forever(tmp_path):
    (tmp_path / "g.safetensors").write_bytes(bytes.fromhex(GOLDEN_CONTAINER_HEX))
    back = load_artifact(tmp_path / "g.safetensors")
    assert back.profile == "deltadq:n=1,m=4,bits=4,select=magnitude,rescale=none"
    d = back.packed["w.weight"]
    assert (d.shape, d.n, d.m, d.bits, d.scale_granularity, d.dtype) == ((2, 8), 1, 4, 4, "tensor", "float32")
    s16 = torch.tensor(1 / 7, dtype=torch.float16).float()
    expect = torch.zeros(2, 8)
    expect[0, 1], expect[0, 7], expect[1, 0], expect[1, 5] = 4, -7, 5, -4
    assert torch.equal(d.to_dense(), expect * s16)


# The same artifact as written by the deterministic writer (sorted JSON header, space padded to 8 bytes,
# tensors by element size then name): save_artifact must write exactly these bytes.
GOLDEN_WRITTEN_HEX = (
    "70020000000000007b225f5f6d657461646174615f5f223a7b2264656c746164715f76657273696f6e223a2231222c22"
    "656e7472696573223a227b5c22772e7765696768745c223a207b5c22626974735c223a20342c205c2264747970655c22"
    "3a205c22666c6f617433325c222c205c2267726f75705f73697a655c223a20302c205c226b696e645c223a205c227061"
    "636b65645c222c205c226d5c223a20342c205c226e5c223a20312c205c227363616c655f6772616e756c61726974795c"
    "223a205c2274656e736f725c222c205c22736565645c223a20373930343433303630323037323232363731382c205c22"
    "73686170655c223a205b322c20385d7d7d222c22666f726d6174223a2264656c74617a6f6f2e7061636b65642d64656c"
    "7461222c22666f726d61745f76657273696f6e223a2231222c226d6574686f64223a2264656c74616471222c2270726f"
    "66696c65223a2264656c746164713a6e3d312c6d3d342c626974733d342c73656c6563743d6d61676e69747564652c72"
    "657363616c653d6e6f6e65222c2272656d6f766564223a225b5d222c2273656564223a2230227d2c22772e7765696768"
    "743a696e6469636573223a7b22646174615f6f666673657473223a5b322c31305d2c226474797065223a225538222c22"
    "7368617065223a5b322c345d7d2c22772e7765696768743a7363616c6573223a7b22646174615f6f666673657473223a"
    "5b302c325d2c226474797065223a22463136222c227368617065223a5b315d7d2c22772e7765696768743a76616c7565"
    "73223a7b22646174615f6f666673657473223a5b31302c31385d2c226474797065223a225538222c227368617065223a"
    "5b322c345d7d7d2092300d000000040000001c0000004d000000"
)


def test_golden_container_is_what_we_write(tmp_path):
    ft, base = _golden_pair()
    art = build_artifact(base, ft, "deltadq:n=1,m=4,bits=4,select=magnitude,rescale=none")
    save_artifact(art, tmp_path / "w.safetensors")
    assert (tmp_path / "w.safetensors").read_bytes() == bytes.fromhex(GOLDEN_WRITTEN_HEX)
    # the older writer's file (other header key order) holds the same header and data
    header, data = _split(bytes.fromhex(GOLDEN_WRITTEN_HEX))
    golden_header, golden_data = _split(bytes.fromhex(GOLDEN_CONTAINER_HEX))
    assert header == golden_header
    assert data == golden_data == bytes.fromhex("9230" "0d000000" "040000001c000000" "4d000000")


def test_save_is_deterministic_and_safetensors_reads_it(tmp_path):
    from safetensors import safe_open

    base, ft = _states()
    art = build_artifact(base, ft, "deltadq:n=2,m=16,bits=4,scale=row,seed=3")
    shuffled = type(art)(
        profile=art.profile,
        packed=dict(reversed(list(art.packed.items()))),
        dense=dict(reversed(list(art.dense.items()))),
        metadata=dict(reversed(list(art.metadata.items()))),
    )
    save_artifact(art, tmp_path / "a.safetensors")
    save_artifact(shuffled, tmp_path / "b.safetensors")
    blob = (tmp_path / "a.safetensors").read_bytes()
    assert blob == (tmp_path / "b.safetensors").read_bytes()
    assert (8 + int.from_bytes(blob[:8], "little")) % 8 == 0
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        for name, d in art.packed.items():
            assert torch.equal(f.get_tensor(f"{name}:values"), d.values)
            assert torch.equal(f.get_tensor(f"{name}:scales"), d.scales)
        for name, t in art.dense.items():
            assert torch.equal(f.get_tensor(f"{name}:dense"), t)
