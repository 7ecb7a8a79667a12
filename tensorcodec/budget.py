"""A policy that spends a budget: per tensor, the precision that costs the model least error.

``budget_policy(model, bits=4.25)`` measures, for every floating tensor and every candidate
precision, the exact bytes the tensor would take in the message (``predict``) and its squared
error (on the tensor, or on an evenly spread sample of whole 4096-element blocks of a large one).
Choosing one candidate per tensor under a total is a multiple-choice knapsack; it is solved by
marginal returns: each tensor starts at its cheapest candidate, the candidates off the lower
convex hull of (bytes, error) are dropped, and the upgrade that removes the most error per added
byte is taken while the budget holds. With ``max_rel_mse`` the same upgrades run until the
model's relative error is under the target, which gives the fewest bytes for it.

The result is an ordinary ``Policy`` of exact names, reusable for every round of a training
run; its ``rows`` say what was chosen and why.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import dtypes
from .accounting import inspect, predict
from .core import decode, encode
from .leaves import leaf_from_torch, values
from .policy import Policy, Precision
from .wire.tree import named_leaves

__all__ = ["BudgetPolicy", "BudgetRow", "budget_policy", "DEFAULT_CANDIDATES"]

DEFAULT_CANDIDATES: tuple[Precision, ...] = (
    "minmax1",
    "minmax2",
    "fp4",
    "nf4",
    "fp8_e4m3",
    "blockwise8",
    "fp16",
    "bf16",
    None,
)
"""What ``budget_policy`` chooses from by default, lossless (None) included."""

SAMPLE_BLOCK = 4096
"""Samples are whole runs of this many elements: a multiple of every built-in block size."""


@dataclass
class BudgetRow:
    """What the budget chose for one tensor."""

    name: str
    precision: str
    """The chosen precision ("raw" for lossless)."""
    elements: int
    wire_bytes: int
    """The tensor's bytes in the message: payload, meta and its own framing."""
    rel_mse: float
    """Its squared error over its squared values, as measured (0 for lossless)."""


class BudgetPolicy(Policy):
    """A ``Policy`` of exact tensor names, with what was chosen and the totals it reaches.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> model = {"w": np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32)}
        >>> policy = tc.budget_policy(model, max_rel_mse=1e-3)
        >>> [(row.name, row.precision) for row in policy.rows], round(policy.bits, 2)
        ([('w', 'blockwise8')], 8.03)
        >>> policy.rel_mse < 1e-3
        True
    """

    def __init__(self, rules: dict[str, Precision], rows: list[BudgetRow], bits: float, rel_mse: float) -> None:
        super().__init__(rules, min_elements=0)
        self.rows = rows
        self.bits = bits
        """Bits per element of the whole message (every tensor, all framing), from ``predict``."""
        self.rel_mse = rel_mse
        """The model's squared error over its squared values (floating tensors), as measured."""


@dataclass
class _Option:
    precision: Precision
    nbytes: int
    error: float


def budget_policy(
    model: Any,
    *,
    bits: float | None = None,
    max_rel_mse: float | None = None,
    candidates: Sequence[Precision] = DEFAULT_CANDIDATES,
    sample_elements: int = 1 << 20,
) -> BudgetPolicy:
    """The per-tensor policy of least error within ``bits`` per element, or of fewest bytes within ``max_rel_mse``.

    ``model`` is a tree of tensors (a state dict); give exactly one of ``bits`` (bits per
    element of the whole message: every tensor's elements, all bytes) and ``max_rel_mse``.
    Tensors above ``sample_elements`` are measured on a sample of whole blocks, which
    estimates per-tensor-range codecs (minmax) optimistically. Raises ValueError when no
    choice of candidates fits ``bits``, naming the smallest budget that would.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> rng = np.random.default_rng(0)
        >>> model = {"a": rng.standard_normal(1 << 16).astype(np.float32),
        ...          "b": rng.standard_normal(1 << 16).astype(np.float32) * 1e-3}
        >>> policy = tc.budget_policy(model, bits=6)
        >>> policy.bits <= 6
        True
        >>> [(row.name, row.precision) for row in policy.rows]
        [('a', 'blockwise8'), ('b', 'minmax2')]
        >>> small = tc.encode(model, policy=policy)
    """
    if (bits is None) == (max_rel_mse is None):
        raise ValueError("give exactly one of bits= and max_rel_mse=")
    if None not in candidates:
        candidates = [*candidates, None]
    leaves = named_leaves(model, lambda node: hasattr(node, "dtype") and hasattr(node, "shape"))
    spec: dict[str, Any] = {}
    first_name: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, value in leaves:
        spec[name] = value
        if id(value) in first_name:
            tied[name] = first_name[id(value)]
        else:
            first_name[id(value)] = name
    options: dict[str, list[_Option]] = {}
    energy: dict[str, float] = {}
    for name, value in spec.items():
        if name in tied:
            continue
        options[name], energy[name] = _measure(name, value, candidates, sample_elements)
    total_elements = sum(math.prod(int(d) for d in value.shape) for value in spec.values())
    signal = sum(e for e in energy.values() if math.isfinite(e))
    overhead = predict(spec).message_framing_bytes  # preamble, tree and names: the same for every choice
    chosen = _solve(options, bits, max_rel_mse, total_elements, signal, overhead)
    while True:
        policy = _policy(chosen, options, tied, energy, spec)
        policy.bits = 8 * predict(spec, policy=policy).message_bytes / max(1, total_elements)
        if bits is None or policy.bits <= bits:
            break
        if not _step_back(chosen, options):  # the per-tensor estimates missed the message framing
            raise ValueError(f"no choice of {list(candidates)} fits {bits} bits per element")
    error = sum(options[n][chosen[n]].error for n in chosen)
    policy.rel_mse = error / signal if signal > 0 else 0.0
    return policy


def _as_numpy(value: Any) -> np.ndarray[Any, Any]:
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value).reshape(-1)
    leaf = leaf_from_torch(value)
    if leaf is None:
        raise TypeError(f"a tensor of dtype {value.dtype} cannot be measured")
    return values(leaf).reshape(-1)


def _sample(x: np.ndarray[Any, Any], limit: int) -> np.ndarray[Any, Any]:
    """``x``, or evenly spread whole blocks of it adding up to about ``limit`` elements."""
    blocks = x.size // SAMPLE_BLOCK
    if x.size <= limit or blocks == 0:
        return x
    picked = np.unique(np.linspace(0, blocks - 1, max(1, limit // SAMPLE_BLOCK)).astype(np.int64))
    return np.concatenate([x[b * SAMPLE_BLOCK : (b + 1) * SAMPLE_BLOCK] for b in picked.tolist()])


def _measure(name: str, value: Any, candidates: Sequence[Precision], limit: int) -> tuple[list[_Option], float]:
    """Every candidate's (exact bytes, squared error scaled to the whole tensor), and the tensor's energy."""
    x = _as_numpy(value)
    row = dtypes.from_numpy(x.dtype)
    count = x.size
    sample = _sample(x, limit)
    reference = sample.astype(np.float64) if row is not None and row.is_floating and not row.is_complex else None
    scale = count / max(1, sample.size)
    energy = float(np.sum(reference * reference)) * scale if reference is not None else 0.0
    found: list[_Option] = []
    for precision in candidates:
        rule = Policy({"*": precision}, min_elements=0)
        try:
            nbytes, raw = _wire_bytes(name, value, rule)
        except (ValueError, TypeError):
            continue
        if precision is not None and raw:
            continue  # the codec cannot take this tensor or would not make it smaller: lossless covers it
        error = 0.0
        if precision is not None and reference is not None:
            try:
                back = decode(encode({"x": sample}, policy=rule), framework="numpy")["x"]
            except (ValueError, TypeError):  # the codec refuses these values (NaN for minmax, ...)
                continue
            diff = back.astype(np.float64) - reference
            error = float(np.sum(diff * diff)) * scale
            if not math.isfinite(error):
                continue
        found.append(_Option(precision, nbytes, error))
    return _hull(found), energy


def _wire_bytes(name: str, value: Any, rule: Policy) -> tuple[int, bool]:
    """The tensor's own bytes in a message (payload, meta, its framing; exact) and whether it goes raw."""
    try:
        row = predict({name: value}, policy=rule).rows[0]
    except ValueError:  # data-dependent sizes: encode it to know
        row = inspect(encode({name: value}, policy=rule)).rows[0]
    return row.wire_bytes, row.codec == "raw"


def _hull(options: list[_Option]) -> list[_Option]:
    """The options on the lower convex hull of (bytes, error), cheapest first: the only ones worth choosing."""
    options = sorted(options, key=lambda o: (o.nbytes, o.error))
    frontier: list[_Option] = []
    for o in options:
        if frontier and o.error >= frontier[-1].error:
            continue  # costs more and is no better
        while len(frontier) >= 2 and _slope(frontier[-2], o) <= _slope(frontier[-2], frontier[-1]):
            frontier.pop()  # the middle one is above the line from its neighbours
        frontier.append(o)
    return frontier


def _slope(a: _Option, b: _Option) -> float:
    """Error removed per added byte going from ``a`` to ``b`` (negated: smaller is better)."""
    if math.isinf(a.error):
        return -math.inf
    return (b.error - a.error) / max(1, b.nbytes - a.nbytes)


def _solve(
    options: dict[str, list[_Option]],
    bits: float | None,
    max_rel_mse: float | None,
    elements: int,
    signal: float,
    overhead: int,
) -> dict[str, int]:
    chosen = {name: 0 for name in options}
    spent = overhead + sum(opts[0].nbytes for opts in options.values())
    error = sum(opts[0].error for opts in options.values())
    allowed_bytes = math.inf if bits is None else bits * elements / 8
    allowed_error = -1.0 if max_rel_mse is None else max_rel_mse * signal
    if spent > allowed_bytes:
        least = 8 * spent / max(1, elements)
        raise ValueError(f"the cheapest candidates take {least:.3f} bits per element, over the budget of {bits}")
    heap = [(_slope(opts[0], opts[1]), name) for name, opts in options.items() if len(opts) > 1]
    heapq.heapify(heap)
    while heap and error > allowed_error:
        _, name = heapq.heappop(heap)
        opts, at = options[name], chosen[name]
        added = opts[at + 1].nbytes - opts[at].nbytes
        if spent + added > allowed_bytes:
            continue  # later steps of this tensor's hull cost even more
        spent += added
        error += opts[at + 1].error - opts[at].error
        chosen[name] = at + 1
        if at + 2 < len(opts):
            heapq.heappush(heap, (_slope(opts[at + 1], opts[at + 2]), name))
    return chosen


def _step_back(chosen: dict[str, int], options: dict[str, list[_Option]]) -> bool:
    """Undo the upgrade that bought the least error per byte; False when nothing is left to undo."""
    upgraded = [name for name, at in chosen.items() if at > 0]
    if not upgraded:
        return False
    worst = max(upgraded, key=lambda n: _slope(options[n][chosen[n] - 1], options[n][chosen[n]]))
    chosen[worst] -= 1
    return True


def _escape(name: str) -> str:
    """``name`` as a pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _policy(
    chosen: dict[str, int],
    options: dict[str, list[_Option]],
    tied: dict[str, str],
    energy: dict[str, float],
    spec: dict[str, Any],
) -> BudgetPolicy:
    rules: dict[str, Precision] = {}
    rows = []
    for name in spec:
        owner = tied.get(name, name)
        option = options[owner][chosen[owner]]
        rules[_escape(name)] = option.precision
        if name in tied:
            continue
        e = energy[name]
        rows.append(
            BudgetRow(
                name=name,
                precision="raw" if option.precision is None else _label(option.precision),
                elements=math.prod(int(d) for d in spec[name].shape),
                wire_bytes=option.nbytes,
                rel_mse=option.error / e if e > 0 else 0.0,
            )
        )
    return BudgetPolicy(rules, rows, bits=math.nan, rel_mse=math.nan)


def _label(precision: Precision) -> str:
    if isinstance(precision, str):
        return precision
    if isinstance(precision, (list, tuple)):
        return " > ".join(_label(p) for p in precision)
    return repr(precision)
