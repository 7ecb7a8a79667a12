"""The test vectors of tests/vectors/: each decodes to its exact bits, each refusal is refused, and the
generator reproduces every committed file byte for byte (docs/format.md section 11)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

import tensorcodec as tc
from tests.vectors import reference
from tests.vectors.make_vectors import HERE, code_tables, describe, files, frames_of, tables_markdown

VALID = sorted(p.stem for p in HERE.glob("*.json") if not p.stem.startswith("refuse_") and p.stem != "tables")
REFUSED = sorted(p.stem for p in HERE.glob("refuse_*.json"))


def _vector(name: str) -> tuple[dict[str, Any], bytes]:
    return json.loads((HERE / f"{name}.json").read_text()), (HERE / f"{name}.bin").read_bytes()


def _stream(data: bytes, limits: tc.Limits, copy: bool = True) -> Any:
    """A stream vector the way format.md section 11 says: every frame fed in order, then the result."""
    decoder = tc.StreamDecoder(limits=limits, copy=copy)
    for frame in frames_of(data):
        decoder.feed(frame)
    return decoder.result()


def test_vectors_exist() -> None:
    assert len(VALID) >= 60 and len(REFUSED) >= 60


@pytest.mark.parametrize("name", VALID)
def test_vector_decodes_to_its_bits(name: str) -> None:
    meta, data = _vector(name)
    limits = tc.Limits(**meta.get("limits", {}))
    if meta["kind"] == "stream":
        results = [_stream(data, limits), _stream(data, limits, copy=False), tc.load(io.BytesIO(data), limits=limits)]
    else:
        cut = len(data) // 2
        results = [tc.decode(data, limits=limits), tc.decode([data[:cut], data[cut:]], limits=limits)]
        results.append(tc.decode(data, limits=limits, copy=False))
    for value in results:
        assert describe(value) == meta["value"]


def _refused(meta: dict[str, Any], data: bytes) -> None:
    limits = tc.Limits(**meta.get("limits", {}))
    if meta["kind"] == "stream":
        with pytest.raises(tc.DecodeError):
            _stream(data, limits)
        return
    for source in (data, [data[:20], data[20:]]):
        with pytest.raises(tc.DecodeError):
            tc.decode(source, limits=limits)
        with pytest.raises(tc.DecodeError):
            tc.decode(source, limits=limits, copy=False)


@pytest.mark.parametrize(
    "name",
    REFUSED,
)
def test_refusal_vector_raises_decode_error(name: str) -> None:
    meta, data = _vector(name)
    assert meta["refuse"] is True and meta["about"]
    _refused(meta, data)


def test_generator_reproduces_every_file() -> None:
    wanted = files()
    committed = {p.name for p in HERE.iterdir() if p.suffix in (".bin", ".json")}
    assert committed == set(wanted)
    for name, data in wanted.items():
        assert (HERE / name).read_bytes() == data, f"{name} differs: run python tests/vectors/make_vectors.py"


def test_code_tables_are_the_kernels_and_the_docs() -> None:
    assert json.loads((HERE / "tables.json").read_text()) == code_tables()
    page = (Path(__file__).parents[1] / "docs" / "codecs.md").read_text()
    assert tables_markdown() in page, (
        "docs/codecs.md's code tables differ: python tests/vectors/make_vectors.py --tables"
    )


CODED = [n for n in VALID if n.split("_")[0] in ("cast", "fp8", "blockwise8", "nf4", "fp4", "chain") or "minmax" in n]


@pytest.mark.parametrize("name", CODED)
def test_a_decoder_from_the_docs_alone_gets_the_same_bits(name: str) -> None:
    """tests/vectors/reference.py, which follows docs/codecs.md's formulas and imports no tensorcodec."""
    meta, data = _vector(name)
    (x,) = reference.tensors(data)
    (key, expected) = meta["value"]["$map"][0]
    assert key == "x"
    got = describe(x.reshape(expected["$tensor"]["shape"]))
    assert got["$tensor"]["bits"] == expected["$tensor"]["bits"]
