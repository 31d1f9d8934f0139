"""The pieces the server and the SDK share, each written once: the chain decoder (``compression.chain``),
the stored form of non-tensor files (``compression.other_files``) and the syntax of names and revisions
(``deltazoo.refs``, which the server answers with a 422)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import zstandard
from deltazoo.compression.chain import Chunk, Step, decode_chain
from deltazoo.compression.codecs import CodecError, encode_tensor
from deltazoo.compression.other_files import compress_stream, decompress, decompress_range, decompress_stream

from deltazoo.refs import Ref, RefError, check_tag_name, parse_ref, parse_revision

SHAPE = (64, 32)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _chain() -> tuple[list[bytes], list[Step], dict[str, bytes]]:
    """Three bf16-sized tensors, each a small change of the one before, stored as plain -> delta -> delta
    (the top one in two chunks); returns their raw bytes, the steps and the blobs by sha256."""
    rng = np.random.default_rng(3)
    first = rng.standard_normal(SHAPE).astype(np.float16)
    raws = [first.tobytes()]
    for _ in range(2):
        prev = np.frombuffer(raws[-1], dtype=np.float16).reshape(SHAPE)
        raws.append((prev + rng.standard_normal(SHAPE).astype(np.float16) * np.float16(0.01)).tobytes())
    blobs: dict[str, bytes] = {}

    def put(payload: bytes) -> str:
        blobs[_sha(payload)] = payload
        return _sha(payload)

    plain = encode_tensor(raws[0], "F16", SHAPE)
    delta = encode_tensor(raws[1], "F16", SHAPE, raws[0], "F16", SHAPE)
    steps = [
        Step(plain.encoding, put(plain.payload), "F16", SHAPE, _sha(raws[0])),
        Step(delta.encoding, put(delta.payload), "F16", SHAPE, _sha(raws[1])),
    ]
    half = SHAPE[0] * SHAPE[1] // 2
    chunks = []
    for begin, end in ((0, half), (half, 2 * half)):
        part, parent_part = raws[2][begin * 2 : end * 2], raws[1][begin * 2 : end * 2]
        coded = encode_tensor(part, "F16", [end - begin], parent_part, "F16", [end - begin])
        chunks.append(Chunk(begin, end, coded.encoding, put(coded.payload), _sha(part)))
    steps.append(Step("delta", None, "F16", SHAPE, _sha(raws[2]), tuple(chunks)))
    return raws, steps, blobs


def test_a_chain_decodes_from_its_bottom_or_from_bytes_already_held() -> None:
    raws, steps, blobs = _chain()
    fetched: list[str] = []

    def fetch(sha: str) -> bytes:
        fetched.append(sha)
        return blobs[sha]

    kept: dict[str, bytes] = {}
    assert decode_chain(fetch, steps, keep=kept.__setitem__) == raws[2]
    assert kept == {steps[0].sha256: raws[0], steps[1].sha256: raws[1]}  # checked steps below the top
    fetched.clear()
    assert decode_chain(fetch, steps, start=2, raw=raws[1]) == raws[2]  # the parent held: its chunks only
    assert fetched == [c.blob for c in steps[2].chunks]
    assert decode_chain(fetch, steps[:2]) == raws[1]


def test_a_chain_refuses_bytes_that_do_not_match_their_sha256() -> None:
    raws, steps, blobs = _chain()
    with pytest.raises(CodecError):  # decoded against the wrong parent: refused, never returned
        decode_chain(blobs.__getitem__, steps, start=2, raw=raws[0])
    wrong = [steps[0], Step(steps[1].encoding, steps[1].blob, "F16", SHAPE, "0" * 64), steps[2]]
    with pytest.raises(CodecError, match="recorded sha256"):
        decode_chain(blobs.__getitem__, wrong)
    with pytest.raises(ValueError, match="raw bytes of the step below"):
        decode_chain(blobs.__getitem__, steps, start=1)


def test_a_download_checks_only_the_top_of_a_chain_and_still_refuses_a_wrong_parent() -> None:
    """``verify_below=False`` (a download) hashes the top step only: a wrong step below it decodes a
    wrong top, which its sha256 refuses; nothing unchecked is kept."""
    raws, steps, blobs = _chain()
    hashed: list[int] = []
    real_sha256 = hashlib.sha256

    def counting(data: bytes = b"") -> hashlib._Hash:
        hashed.append(len(data))
        return real_sha256(data)

    kept: dict[str, bytes] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hashlib, "sha256", counting)
        assert decode_chain(blobs.__getitem__, steps, verify_below=False, keep=kept.__setitem__) == raws[2]
    assert sum(hashed) == len(raws[2]) and kept == {}  # the top's two chunks, nothing below
    wrong_below = [steps[0], Step(steps[1].encoding, steps[0].blob, "F16", SHAPE, steps[1].sha256), steps[2]]
    with pytest.raises(CodecError):  # the middle step decoded from the wrong blob: the top refuses it
        decode_chain(blobs.__getitem__, wrong_below, verify_below=False)


def test_a_chunked_step_must_cover_its_elements_in_order() -> None:
    """Its chunks are checked one by one instead of the step as a whole, so they must tile it."""
    raws, steps, blobs = _chain()
    first, second = steps[2].chunks
    for chunks in ((first,), (second, first), (first, first, second)):
        gap = Step("delta", None, "F16", SHAPE, steps[2].sha256, chunks)
        with pytest.raises(CodecError, match="do not cover"):
            decode_chain(blobs.__getitem__, [*steps[:2], gap])


def test_the_server_and_the_sdk_decode_with_the_same_function() -> None:
    from deltazoo.services import storage

    from deltazoo import delta_pull

    assert storage.chain.decode_chain is delta_pull.decode_chain is decode_chain


def test_non_tensor_files_are_one_zstd_frame_written_and_read_here() -> None:
    data = b"".join(f'"token{i}": {i},\n'.encode() for i in range(20_000))
    pieces = [data[i : i + 65_536] for i in range(0, len(data), 65_536)]
    stored = b"".join(compress_stream(pieces))
    streaming = zstandard.ZstdCompressor(level=9).compressobj()  # what stores have always held
    assert stored == b"".join([*(streaming.compress(p) for p in pieces), streaming.flush()])
    assert zstandard.ZstdDecompressor().decompress(stored, max_output_size=len(data)) == data
    assert decompress(stored, len(data)) == data
    stored_pieces = [stored[i : i + 4096] for i in range(0, len(stored), 4096)]
    assert b"".join(decompress_stream(stored_pieces)) == data
    assert b"".join(decompress_range(stored_pieces, 1000, 250_000)) == data[1000:250_000]
    assert b"".join(decompress_range(stored_pieces, 0, len(data))) == data


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("acme/base", Ref("acme", "base", "latest")),
        (" acme/base@3 ", Ref("acme", "base", "3")),
        ("acme/base@latest", Ref("acme", "base", "latest")),
        ("acme/b.1_x-2@main", Ref("acme", "b.1_x-2", "main")),
        ("acme/base@prod", Ref("acme", "base", "prod")),
        ("acme/base@" + "ab" * 20, Ref("acme", "base", "ab" * 20)),
    ],
)
def test_names_and_revisions_parse_one_way(text: str, ref: Ref) -> None:
    assert Ref.parse(text) == ref
    assert parse_ref(text.strip()) == ref


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("base", "invalid_name"),
        ("acme/", "invalid_name"),
        ("-acme/base", "invalid_name"),
        ("acme/base/x", "invalid_name"),
        ("acme/" + "x" * 101, "invalid_name"),
        ("acme/base@0", "invalid_revision"),
        ("acme/base@99999999999", "invalid_revision"),
        ("acme/base@²", "invalid_revision"),
        ("acme/base@a b", "invalid_revision"),
        ("acme/base@", "invalid_revision"),
        ("acme/base\n@1", "invalid_name"),  # "$" in a pattern matches before a final newline; "\Z" does not
    ],
)
def test_malformed_names_are_value_errors_in_the_sdk_and_422_on_the_server(text: str, code: str) -> None:
    from deltazoo.registry.errors import Unprocessable
    from deltazoo.services.refs import parse_ref as server_parse_ref

    with pytest.raises(RefError) as info:
        Ref.parse(text)
    assert info.value.code == code and isinstance(info.value, ValueError)
    with pytest.raises(Unprocessable) as answered:
        server_parse_ref(text)
    assert answered.value.code == code and answered.value.status == 422


def test_the_cli_answers_a_malformed_name_with_exit_2_and_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from deltazoo.cli import main

    assert main(["rm", "acme/base@0", "--yes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'acme/base@0' is not ORG/NAME or ORG/NAME@REV") and err.count("\n") == 1


def test_revisions_and_tags() -> None:
    assert parse_revision("") is None and parse_revision("latest") is None
    assert parse_revision("12") == 12 and parse_revision(7) == 7
    assert Ref.parse("acme/base@12").revision == 12 and Ref.parse("acme/base").revision is None
    assert not Ref.parse("acme/base@12").moving and Ref.parse("acme/base@prod").moving
    assert check_tag_name("v1.2") == "v1.2"
    for bad in ("12", "latest", "main", "a" * 40, "-x", "a/b", "prod\n"):
        with pytest.raises(RefError) as info:
            check_tag_name(bad)
        assert info.value.code == "invalid_tag"
