"""Error feedback: what quantization dropped from an update is added to the next one (``encode(feedback=)``).

A client that sends ``C(x + e)`` and keeps ``e' = x + e - decode(C(x + e))`` delivers the mass
a 1 %-sparse or 1-bit codec drops one round later instead of never, and such updates then train
about as well as full ones. This converges when the codec is *contractive*,
``||y - C(y)|| <= δ ||y||`` with ``δ < 1`` (``Codec.contractive``): lossless codecs, the absmax
codes with an exact zero (blockwise8, nf4/fp4, nf2 to nf6, MX, NVFP4, fp8 and the casts), rotations
before them, top-k, random-k and scaled sign. Min/max is not (its levels need not include 0, so a
vector of small values beside two outliers moves by up to half a step each), and 1-bit min/max
with error feedback diverges in practice: ``encode`` refuses every chain with a stage that does
not declare itself contractive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .codecs import Codec, Quantized, decode_segments, encode_chain
from .dtypes import DType
from .policy import Policy
from .reference import References, delta_of, flat_values, is_delta, is_tensor, rebuild
from .wire.tree import map_tensors

__all__ = ["ErrorFeedback", "FeedbackRound", "check_contractive"]

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})


def check_contractive(chain: list[Codec], name: str) -> None:
    """ValueError naming the tensor and the stage unless every stage of ``chain`` is contractive."""
    for codec in chain:
        if not (codec.contractive or codec.lossless):
            raise ValueError(
                f"tensor {name!r}: error feedback is not sound with {codec!r} (not contractive: its error"
                " can exceed the tensor itself, and the residual then grows every round); use 'sign',"
                " 'topk1%', 'nf4' or 'blockwise8', or encode without feedback"
            )


class ErrorFeedback:
    """The residuals an encoder carries from one update to the next, by dotted tensor name.

    Pass it to ``encode`` (or ``encode_frames``, ``encode_into``, ``encode_stream``) with a
    precision or policy: every float tensor that the policy quantizes is sent as ``C(x + e)`` and
    its residual becomes ``x + e - x̂`` (float32, float64 for float64 tensors), committed only once
    the whole message has been encoded, so a failed encode changes nothing. A tensor seen for the
    first time, or with a new shape or dtype, starts from zero; residuals of tensors absent from an
    update, or sent losslessly this time, are kept for when they are quantized again. ``state()``
    is a plain ``{name: array}`` dict, so ``tc.encode(fb.state())`` saves it and
    ``ErrorFeedback(tc.decode(saved))`` restores it.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> fb = tc.ErrorFeedback()
        >>> update = {"w": np.array([0.5, -3.0, 0.25, 0.75], np.float32)}
        >>> policy = tc.Policy({"*": tc.TopK(0.5)}, min_elements=0)
        >>> tc.decode(tc.encode(update, policy=policy, feedback=fb))["w"].tolist()
        [0.0, -3.0, 0.0, 0.75]
        >>> fb.residual("w").tolist()  # what was dropped, added to the next update
        [0.5, 0.0, 0.25, 0.0]
        >>> tc.decode(tc.encode(update, policy=policy, feedback=fb))["w"].tolist()
        [1.0, -3.0, 0.0, 0.0]
        >>> restored = tc.ErrorFeedback(tc.decode(tc.encode(fb.state())))
        >>> restored.residual("w").tolist()
        [0.0, 0.0, 0.5, 0.75]
    """

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self._residuals: dict[str, np.ndarray[Any, Any]] = {}
        for name, value in (state or {}).items():
            arr = np.asarray(value)
            if not isinstance(name, str) or arr.dtype not in (np.float32, np.float64):
                raise ValueError(
                    f"an ErrorFeedback state maps tensor names to float32/float64 arrays; {name!r} holds {arr.dtype}"
                )
            self._residuals[name] = np.array(arr, copy=True)

    def __len__(self) -> int:
        return len(self._residuals)

    def __repr__(self) -> str:
        return f"ErrorFeedback({len(self)} residuals)"

    def names(self) -> list[str]:
        """The tensors that have a residual, in the order they got one."""
        return list(self._residuals)

    def residual(self, name: str) -> np.ndarray[Any, Any] | None:
        """A copy of the residual of ``name`` (in the tensor's shape), or None."""
        got = self._residuals.get(name)
        return None if got is None else got.copy()

    def reset(self, name: str | None = None) -> None:
        """Forgets every residual, or only the one of ``name``."""
        if name is None:
            self._residuals.clear()
        else:
            self._residuals.pop(name, None)

    def state(self) -> dict[str, np.ndarray[Any, Any]]:
        """The residuals as ``{name: array}`` copies: a tree ``encode`` sends losslessly."""
        return {name: r.copy() for name, r in self._residuals.items()}

    def round(self, refs: References | None = None) -> FeedbackRound:
        """The residual updates of one message, applied by ``FeedbackRound.commit``."""
        return FeedbackRound(self, refs)


class FeedbackRound:
    """One message's worth of error feedback: corrected tensors out, new residuals held until ``commit``."""

    def __init__(self, feedback: ErrorFeedback, refs: References | None) -> None:
        self._feedback = feedback
        self._refs = refs
        self._pending: dict[str, np.ndarray[Any, Any]] = {}

    def apply(self, tree: Any, policy: Policy | None) -> Any:
        """``tree`` with every tensor the policy quantizes replaced by the ``Quantized`` of ``x + e``."""
        if policy is None:
            return tree

        def change(node: Any, path: str) -> Any:
            got = flat_values(node)
            if got is None:
                return node
            flat, row, shape = got
            chain = policy.choose(path, row, flat.size)
            framework = "numpy" if isinstance(node, np.ndarray) else "torch"
            sent = self.tensor(flat, row, shape, framework, path, chain)
            return node if sent is None else sent

        return map_tensors(tree, is_tensor, change)

    def tensor(
        self,
        flat: np.ndarray[Any, Any],
        row: DType,
        shape: tuple[int, ...],
        framework: str,
        name: str,
        chain: list[Codec] | None,
    ) -> Quantized | None:
        """The ``Quantized`` of one corrected tensor (a delta where the reference holds it), or None: send it as is."""
        if chain is None or row.name not in _FLOATS:
            return None
        check_contractive(chain, name)
        wide: type[np.floating[Any]] = np.float64 if row.name == "float64" else np.float32
        target: np.ndarray[Any, Any] = flat.astype(wide)  # a copy: the caller's tensor is never touched
        residual = self._feedback._residuals.get(name)
        if residual is not None and residual.shape == shape and residual.dtype == wide:
            target += residual.reshape(-1)
        sent = target.astype(row.numpy) if row.numpy != wide else target
        try:
            quantized = None
            if self._refs is not None:
                quantized = delta_of(sent, row, shape, framework, name, self._refs, chain)
            if quantized is None:
                stages, segments = encode_chain(list(chain), sent)
                quantized = Quantized(row.name, shape, [(s[0], s[1], s[2]) for s in stages], segments, framework)
        except (TypeError, ValueError) as e:
            raise type(e)(f"tensor {name!r}: {e}") from None
        target -= _decoded(quantized, self._refs).astype(wide)
        self._pending[name] = target.reshape(shape)
        return quantized

    def commit(self) -> None:
        """Stores the residuals of this message (call it once the message is complete)."""
        self._feedback._residuals.update(self._pending)
        self._pending = {}


def _decoded(quantized: Quantized, refs: References | None) -> np.ndarray[Any, Any]:
    """What the receiver will get for ``quantized``, flat."""
    stages = tuple(quantized.stages)
    segments = {name: arr for name, (_, arr) in quantized.segments.items()}
    if is_delta(stages):
        return rebuild(stages, segments, quantized.dtype, quantized.shape, refs)
    return decode_segments(stages, segments, quantized.dtype, quantized.count)
