"""The worked example of docs/codecs.md (``tests/example_codec.py``): round trips, the doc quotes it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _codec_helpers import (
    ROOT,
    SOURCES,
    SignScale,
    check,
    fixed_cases,
    load_example,
    tensors,
)
from hypothesis import given
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import wire
from tensorcodec.codecs import (
    Codec,
)
from tensorcodec.testing import check_codec


@given(norm=st.sampled_from(["l1", "l2"]), x=tensors(cap=1e100))
def test_example_codec_round_trip(norm: str, x: Any) -> None:
    check(SignScale(norm), x)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", [SignScale(), SignScale("l2")], ids=repr)
@pytest.mark.parametrize("dtype", SOURCES)
def test_fixed_cases(codec: Codec, dtype: str) -> None:
    fixed_cases(codec, dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", [SignScale(), SignScale("l2")], ids=repr)
def test_check_codec(codec: Codec) -> None:
    """The shared contract checker (``tensorcodec.testing.check_codec``) passes."""
    check_codec(codec)


# ---------------------------------------------------------------------------- the worked example


def _doc_example() -> str:
    text = (ROOT / "docs" / "codecs.md").read_text()
    start = text.index("<!-- example: tests/example_codec.py -->")
    block = text[start:].split("```python\n", 1)[1].split("\n```", 1)[0]
    return block + "\n"


def _doc_block(marker: str) -> str:
    text = (ROOT / "docs" / "codecs.md").read_text()
    start = text.index(marker)
    return text[start:].split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"


def test_docs_usage_example_runs() -> None:
    """The "registering, checking and using it" block of docs/codecs.md, as a reader would run it."""
    load_example()  # the same module object as ``import example_codec`` below, so one registration
    sys.modules.setdefault("example_codec", sys.modules["tensorcodec_example_codec"])
    code = _doc_block("<!-- run: docs example -->")
    assert "check_codec(" in code and "tc.encode(" in code
    exec(compile(code, "docs/codecs.md", "exec"), {"__name__": "docs_example"})


def test_docs_example_is_the_tested_code() -> None:
    assert _doc_example() == Path(__file__).with_name("example_codec.py").read_text()


def test_example_codec_behaviour() -> None:
    x = np.array([0.5, -1.5, -0.0, 0.0, 3.0], dtype=np.float32)
    got = tc.decode(tc.encode({"g": x}, policy=tc.Policy({"*": SignScale()}, min_elements=0)))["g"]
    np.testing.assert_array_equal(got, [1.0, -1.0, -1.0, 1.0, 1.0])
    got = tc.decode(tc.encode({"g": x}, policy=tc.Policy({"*": SignScale("l2")}, min_elements=0)))["g"]
    assert np.sum(got.astype(np.float64) ** 2) == pytest.approx(np.sum(x.astype(np.float64) ** 2))
    with pytest.raises(ValueError, match=r"'g'.*NaN or Inf"):
        tc.encode({"g": np.array([1.0, np.nan])}, policy=tc.Policy({"*": SignScale()}, min_elements=0))
    # 1 bit per element plus a header float: a single element is not worth it and stays lossless.
    one = tc.encode({"g": np.array([2.0], np.float32)}, policy=tc.Policy({"*": SignScale()}, min_elements=0))
    assert not wire.parse_message(wire.Rope(one), wire.DEFAULT_LIMITS, verify=True).entries[0].stages


def test_example_codec_predict_matches_report() -> None:
    from tensorcodec.accounting import predict, report

    rng = np.random.default_rng(9)
    model = {"a": rng.standard_normal((40, 41)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float16)}
    policy = tc.Policy({"*": SignScale()}, min_elements=0)
    _, rep = report(model, policy=policy)
    assert predict(model, policy=policy) == rep
