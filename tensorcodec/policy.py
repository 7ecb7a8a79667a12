"""Which precision each tensor gets: rules by name pattern, dtype and size.

A policy maps tensor names (the dotted path of dict keys and list indices,
e.g. ``model.layers.0.mlp.weight``) to precisions with shell-style patterns,
first match wins. Whatever the rules say, a tensor travels losslessly when the
codec cannot take its dtype (integers, bool, complex), when it has fewer than
``min_elements`` elements, or when the codec would not make it smaller (fp16
of a bf16 tensor).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import dtypes
from .codecs import Codec, MinMax, RandK, precision_chain
from .dtypes import DType

__all__ = ["Policy", "DEFAULT_MIN_ELEMENTS"]

DEFAULT_MIN_ELEMENTS = 4096
"""Below this many elements a tensor (a bias, a norm) is sent losslessly unless a rule says otherwise."""

Precision = str | Codec | Sequence[str | Codec] | None
"""A precision name (a chain name such as "hnf4" too), a Codec, a chain of them (e.g. ``["bf16", "blockwise8"]``),
or None for lossless."""


class Policy:
    """Per-tensor precision rules.

    ``Policy({"*.weight": "nf4", "*norm*": None, "*": "bf16"})`` sends every
    weight in nf4, norms losslessly and the rest in bf16. ``min_elements``
    keeps small tensors lossless (set 0 to quantize everything).

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> policy = tc.Policy({"*.weight": "nf4", "*": None}, min_elements=0)
        >>> float32 = next(row for row in tc.DTYPES if row.name == "float32")
        >>> policy.choose("fc.weight", float32, 64), policy.choose("fc.bias", float32, 64)
        ([Quant4(quant_type='nf4', blocksize=64, double_quant=True)], None)
        >>> layer = {"fc.weight": np.ones(64, np.float32), "fc.bias": np.ones(2, np.float32)}
        >>> out = tc.decode(tc.encode(layer, policy=policy))
        >>> out["fc.bias"]
        array([1., 1.], dtype=float32)
    """

    def __init__(self, rules: Mapping[str, Precision] | None = None, *, min_elements: int = DEFAULT_MIN_ELEMENTS):
        if min_elements < 0:
            raise ValueError("min_elements must be >= 0")
        self.rules: list[tuple[str, list[Codec] | None]] = []
        for pattern, precision in (rules or {}).items():
            if not isinstance(pattern, str):
                raise TypeError(f"policy pattern {pattern!r} is not a str")
            self.rules.append((pattern, _chain(precision)))
        self.min_elements = min_elements
        self._compiled = [(re.compile(fnmatch.translate(p)), c) for p, c in self.rules]
        self._keyed = [c is not None and any(_keyed_by_name(x) for x in c) for _, c in self.rules]
        self._catch_all = bool(self.rules) and self.rules[0][0] == "*"
        self._worth: dict[tuple[int, str, int], bool] = {}
        """Whether rule i's chain makes a tensor of this dtype and count smaller: codecs are immutable."""

    @property
    def needs_names(self) -> bool:
        """Whether ``choose`` reads tensor names: not when the first rule matches everything and
        no rule keys stochastic noise by name (then encode skips building the names)."""
        return not self._catch_all or any(self._keyed)

    @classmethod
    def of(cls, precision: Precision = None, policy: Policy | Mapping[str, Precision] | None = None) -> Policy | None:
        """The policy meant by ``encode``'s ``precision`` / ``policy`` arguments (None: all lossless)."""
        if precision is not None and policy is not None:
            raise ValueError("pass either precision= or policy=, not both")
        if isinstance(policy, Policy):
            return policy
        if policy is not None:
            return cls(policy)
        if precision is not None:
            return cls({"*": precision})
        return None

    def matches(self, name: str) -> bool:
        """Whether any of the rules' patterns matches the dotted tensor name."""
        return self._catch_all or any(pattern.match(name) for pattern, _ in self._compiled)

    def choose(self, name: str, dtype: DType, count: int) -> list[Codec] | None:
        """The codec chain for one tensor, or None to send it losslessly."""
        if self._catch_all:
            index = 0
        else:
            index = next((i for i, (pattern, _) in enumerate(self._compiled) if pattern.match(name)), -1)
            if index < 0:
                return None
        chain = self._compiled[index][1]
        if chain is None or count < self.min_elements:
            return None
        key = (index, dtype.name, count)
        worth = self._worth.get(key)
        if worth is None:
            worth = _worth(chain, dtype, count)
            if len(self._worth) >= _MAX_REMEMBERED:
                self._worth.clear()
            self._worth[key] = worth
        if not worth:
            return None
        if self._keyed[index]:
            return [_keyed_twin(c, name) for c in chain]
        return chain

    def __repr__(self) -> str:
        rules = {p: c for p, c in self.rules}
        return f"Policy({rules!r}, min_elements={self.min_elements})"

    def describe(self) -> dict[str, Any]:
        rules = [[p, None if cs is None else [[c.codec_id, c.get_config()] for c in cs]] for p, cs in self.rules]
        return {"rules": rules, "min_elements": self.min_elements}


_MAX_REMEMBERED = 1 << 16


def _worth(chain: list[Codec], dtype: DType, count: int) -> bool:
    """Whether ``chain`` takes ``dtype`` stage by stage and its output is smaller than the tensor."""
    stage_dtype: DType | None = dtype
    for codec in chain[:-1]:
        if stage_dtype is None or stage_dtype.name not in codec.sources:
            return False
        stage_dtype = codec.output_dtype(stage_dtype)
    last = chain[-1]
    if stage_dtype is None or stage_dtype.name not in last.sources:
        return False
    return last.bits_per_element(stage_dtype, count) < 8 * dtype.itemsize


def _chain(precision: Precision) -> list[Codec] | None:
    if precision is None:
        return None
    if isinstance(precision, (str, Codec)):
        return precision_chain(precision)
    chain = [codec for p in precision for codec in precision_chain(p)]
    if not chain:
        raise ValueError("an empty precision chain; use None for lossless")
    for codec in chain[:-1]:
        if all(codec.output_dtype(dtypes.BY_NAME[name]) is None for name in codec.sources):
            raise ValueError(
                f"{codec!r} hands no array to the next stage, so it can only end a chain;"
                f" put it last (e.g. {[*(c for c in chain if c is not codec), codec]!r})"
            )
    return chain


def _keyed_by_name(codec: Codec) -> bool:
    """Whether the codec draws random numbers keyed by the tensor's name (``with_stream``)."""
    return (isinstance(codec, MinMax) and codec.stochastic) or isinstance(codec, RandK)


def _keyed_twin(codec: Codec, name: str) -> Codec:
    """The codec with its random numbers keyed by the tensor's name, where it draws any."""
    if isinstance(codec, (MinMax, RandK)) and _keyed_by_name(codec):
        return codec.with_stream(name)
    return codec
