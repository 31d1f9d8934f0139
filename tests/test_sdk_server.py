"""The SDK against a real embedded server (uvicorn subprocess): push, pull, cache, delta pulls, resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from deltazoo import BadRequestError, Client, IntegrityError, NotFoundError, UsageError
from deltazoo.models import Ref
from tests.checkpoints import CheckpointPair, file_sha256, finetune_of, make_checkpoint, random_tensors


def _client(url: str, cache: Path) -> Client:
    return Client(url, cache_dir=cache)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _same_files(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for n in names:
        assert file_sha256(a / n) == file_sha256(b / n), n


@pytest.fixture
def pushed(embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path):
    with _client(embedded_server, tmp_path / "pusher-cache") as c:
        base = c.push(checkpoint_pair.base, f"{unique_org}/base", quiet=True)
        tuned = c.push(checkpoint_pair.finetune, f"{unique_org}/tuned", base=base.ref, quiet=True)
    assert base.status == "ready" and tuned.status == "ready"
    assert tuned.parent == base.ref
    return base, tuned


def test_state_dict_is_bit_exact(
    embedded_server: str, checkpoint_pair: CheckpointPair, pushed, tmp_path: Path
):
    base, tuned = pushed
    with _client(embedded_server, tmp_path / "cache") as c:
        sd = c.state_dict(tuned.ref, quiet=True)
    assert sd.keys() == checkpoint_pair.finetune_tensors.keys()
    for name, t in checkpoint_pair.finetune_tensors.items():
        assert sd[name].dtype == t.dtype and torch.equal(_bits(sd[name]), _bits(t)), name


def test_pull_is_exact_and_a_second_pull_downloads_nothing(
    embedded_server: str, checkpoint_pair: CheckpointPair, pushed, tmp_path: Path
):
    base, _ = pushed
    cache = tmp_path / "cache"
    with _client(embedded_server, cache) as c:
        out = c.pull(base.ref, tmp_path / "one", quiet=True)
        assert c.bytes_downloaded >= sum(f.size for f in base.files if f.kind == "safetensors")
    _same_files(checkpoint_pair.base, out)
    with _client(embedded_server, cache) as c:
        out2 = c.pull(base.name, tmp_path / "two", quiet=True)  # @latest: asks the server, fetches no data
        assert c.bytes_downloaded == 0
        c.pull(base.ref, tmp_path / "three", quiet=True)  # @rev held whole: no request at all
        assert c.bytes_downloaded == 0 and c.api_bytes > 0
    _same_files(checkpoint_pair.base, out2)


def test_pull_of_a_finetune_whose_base_is_cached_moves_only_the_delta(
    embedded_server: str, unique_org: str, tmp_path: Path
):
    # tensors large enough that the safetensors header is well under 1 % of the delta
    shapes = {"a.weight": (256, 256), "b.weight": (256, 128), "norm.weight": (256,)}
    base_t = random_tensors(shapes, seed=3)
    tuned_t = finetune_of(base_t, seed=4, unchanged="norm.weight")
    base_dir = make_checkpoint(tmp_path / "base", base_t)
    tuned_dir = make_checkpoint(tmp_path / "tuned", tuned_t)
    cache = tmp_path / "cache"
    with _client(embedded_server, cache) as c:
        base = c.push(base_dir, f"{unique_org}/big-base", quiet=True)
        tuned = c.push(tuned_dir, f"{unique_org}/big-tuned", base=base.ref, quiet=True)
        c.pull(base.ref, quiet=True)
    with _client(embedded_server, cache) as c:
        out = c.pull(tuned.ref, tmp_path / "out", quiet=True)
        got = c.bytes_downloaded
    _same_files(tuned_dir, out)
    dense = sum(f.size for f in tuned.files)
    assert 0 < tuned.stored_bytes < dense
    assert got <= tuned.stored_bytes * 1.01, (got, tuned.stored_bytes, dense)


def test_a_delta_pull_over_a_damaged_cached_base_installs_nothing(
    embedded_server: str, unique_org: str, tmp_path: Path
):
    """A cached parent damaged on disk after it was indexed, its size and mtime unchanged (an edit shows
    in the mtime and is caught earlier): the delta-only pull rebuilds a wrong tensor, says so, and
    installs nothing."""
    base_t = random_tensors({"a.weight": (256, 256), "b.weight": (128, 64)}, seed=5)
    base_dir = make_checkpoint(tmp_path / "base", base_t)
    tuned_dir = make_checkpoint(tmp_path / "tuned", finetune_of(base_t, seed=6))
    cache = tmp_path / "cache"
    with _client(embedded_server, cache) as c:
        base = c.push(base_dir, f"{unique_org}/damaged-base", quiet=True)
        tuned = c.push(tuned_dir, f"{unique_org}/damaged-tuned", base=base.ref, quiet=True)
        c.pull(base.ref, quiet=True)
        weights = next(f for f in base.files if f.path.endswith(".safetensors"))
        c.cache.tensor_index(weights)  # indexed while intact: the damage below is then not noticed by it
        blob = c.cache.blob_path(weights.sha256)
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[-100] ^= 0x40  # a weight of the last tensor: the fine-tune's delta decodes against it
        before = blob.stat()
        blob.write_bytes(bytes(data))
        os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))  # bit rot: size and mtime unchanged
    with _client(embedded_server, cache) as c:
        with pytest.raises(IntegrityError, match="sha256"):
            c.pull(tuned.ref, tmp_path / "out", quiet=True)
        rebuilt = next(f for f in tuned.files if f.path.endswith(".safetensors"))
        assert not c.cache.blob_path(rebuilt.sha256).exists()


def test_interrupted_pull_resumes_with_a_range_request(
    embedded_server: str, checkpoint_pair: CheckpointPair, pushed, tmp_path: Path
):
    base, _ = pushed
    cache = tmp_path / "cache"
    weights = next(f for f in base.files if f.path == "model.safetensors")
    original = (checkpoint_pair.base / weights.path).read_bytes()
    with _client(embedded_server, cache) as c:
        part = c.cache.incomplete_path(weights.sha256)
        part.parent.mkdir(parents=True)
        part.write_bytes(original[: len(original) // 3])
        c.pull(base.ref, tmp_path / "out", quiet=True)
        sent = c.bytes_downloaded
    assert not part.exists()
    others = sum(f.size for f in base.files if f.path != weights.path)
    assert sent - others == len(original) - len(original) // 3  # only the missing tail travelled
    _same_files(checkpoint_pair.base, tmp_path / "out")


def test_corrupt_partial_download_is_refused_then_replaced(
    embedded_server: str, checkpoint_pair: CheckpointPair, pushed, tmp_path: Path
):
    base, _ = pushed
    cache = tmp_path / "cache"
    weights = next(f for f in base.files if f.path == "model.safetensors")
    with _client(embedded_server, cache) as c:
        part = c.cache.incomplete_path(weights.sha256)
        part.parent.mkdir(parents=True)
        part.write_bytes(b"\0" * 64)  # not a prefix of the real file
        with pytest.raises(IntegrityError, match="expected"):
            c.pull(base.ref, quiet=True)
        assert not part.exists() and not c.cache.has_blob(weights.sha256)
        c.pull(base.ref, tmp_path / "out", quiet=True)
    _same_files(checkpoint_pair.base, tmp_path / "out")


def test_errors_are_typed(
    embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path
):
    with _client(embedded_server, tmp_path / "cache") as c:
        with pytest.raises(FileNotFoundError) as info:
            c.version_info(f"{unique_org}/missing")
        assert isinstance(info.value, NotFoundError) and info.value.status == 404
        with pytest.raises(NotFoundError) as info:
            c.push(checkpoint_pair.base, f"{unique_org}/orphan", base=f"{unique_org}/nope", quiet=True)
        assert info.value.code == "base_not_found"
        with pytest.raises(BadRequestError):
            c.push(checkpoint_pair.base, f"{unique_org}/badrel", relation="sideways", quiet=True)
        with pytest.raises(UsageError):
            c.push(checkpoint_pair.base, f"{unique_org}/x@2", quiet=True)
        with pytest.raises(FileNotFoundError):
            c.pull(f"{unique_org}/missing@1", tmp_path / "x", quiet=True)


def test_listing_lineage_and_stats(embedded_server: str, pushed, unique_org: str, tmp_path: Path):
    base, tuned = pushed
    with _client(embedded_server, tmp_path / "cache") as c:
        models = c.list_models(unique_org)
        assert {m.name for m in models.items} == {base.name, tuned.name}
        lineage = c.lineage(tuned.name)
        assert base.ref in lineage.ancestors
        assert any(e.parent == base.ref and e.child == tuned.ref for e in lineage.edges)
        info = c.version_info(tuned.ref)
        assert {t.encoding for t in info.tensors} <= {"same", "delta", "delta-rows", "plain"}
        assert "same" in {t.encoding for t in info.tensors}
        assert info.chain[:2] == (tuned.ref, base.ref)
        assert c.stats().logical_bytes >= base.logical_bytes + tuned.logical_bytes
        assert Ref.parse(tuned.ref).rev == str(tuned.revision)


def test_push_sends_only_files_the_server_lacks(
    embedded_server: str, checkpoint_pair: CheckpointPair, pushed, unique_org: str, tmp_path: Path
):
    base, _ = pushed
    with _client(embedded_server, tmp_path / "cache") as c:
        again = c.push(checkpoint_pair.base, f"{unique_org}/base", quiet=True)
        assert again.revision == base.revision + 1
        assert c.bytes_uploaded < sum(f.size for f in base.files)


def test_load_model_builds_the_transformers_model(
    embedded_server: str, checkpoint_pair: CheckpointPair, pushed, tmp_path: Path
):
    import deltazoo

    _, tuned = pushed
    with _client(embedded_server, tmp_path / "cache") as c:
        model = deltazoo.load_model(tuned.ref, client=c)
    weight = model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(
        _bits(weight), _bits(checkpoint_pair.finetune_tensors["model.layers.0.mlp.up_proj.weight"])
    )


def test_fetch_delta_returns_the_packed_artifact(
    embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path
):
    from deltazoo.compression.packed import PackedArtifact

    profile = "deltadq:n=1,m=32,bits=4"
    with _client(embedded_server, tmp_path / "cache") as c:
        base = c.push(checkpoint_pair.base, f"{unique_org}/b", quiet=True)
        tuned = c.push(
            checkpoint_pair.finetune, f"{unique_org}/t", base=base.ref, profiles=[profile], quiet=True
        )
        assert tuned.artifact(profile) is not None and tuned.artifact(profile).status == "ready"
        art = c.fetch_delta(tuned.ref, profile)
        path = c.fetch_delta_file(tuned.ref, profile)
        fetched = c.bytes_downloaded
        c.fetch_delta(tuned.ref, profile)  # cached: no second download
        assert c.bytes_downloaded == fetched == path.stat().st_size
        with pytest.raises(FileNotFoundError):
            c.fetch_delta(tuned.ref, "deltadq:n=1,m=16,bits=4")
    assert isinstance(art, PackedArtifact) and art.profile == profile and art.packed
    rebuilt = art.apply_to(checkpoint_pair.base_tensors)
    assert rebuilt.keys() == checkpoint_pair.finetune_tensors.keys()
    for name, d in art.packed.items():
        assert d.shape == tuple(checkpoint_pair.finetune_tensors[name].shape)
