"""FedAvg with compressed client updates: test accuracy against bytes per round, on CPU (by hand).

    .venv/bin/python benchmarks/fedavg.py               # 2 tasks x 22 configs x 3 seeds x 50 rounds (~1 min, 2 cores)
    .venv/bin/python benchmarks/fedavg.py --quick       # smoke run: seed 0, 10 rounds (seconds)
    .venv/bin/python benchmarks/fedavg.py --write-doc   # also the section of docs/federated.md and its two pictures

Two tasks, 10 clients each: scikit-learn's digits (standardized, 20 % held out, label skew over
the clients from a Dirichlet(0.5) draw per class) and FedProx's Synthetic(1, 1) (60 features,
10 classes, client sizes lognormal(4, 2) + 50 capped at 1000, 20 % of each held out). The model
is a numpy MLP (in -> 64 -> 10, ReLU, softmax cross-entropy). Every round every client starts
from the global model, runs local epochs of minibatch SGD and sends its update (local - global
weights) as one tensorcodec message: the four parameters concatenated into one flat float32
vector under the name "update", encoded with ``tc.Policy({"*": precision}, min_elements=0)``
(and an ``ErrorFeedback`` per client where the config says "+ EF"). The server averages the
decoded updates weighted by the clients' sample counts (``tc.aggregate`` where the library has
it) and adds the mean to the global model. Bytes are ``len(message)`` of the uplink, framing and
header included; the downlink (the global model) is not counted. A few sparse configs also run
with a 4x wider hidden layer (``WIDE``). Stochastic codecs (stochastic minmax, random-k) get a
fresh seed per seed, round and client: with one fixed seed they would draw the same noise (or
the same indices) every round.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import tensorcodec as tc
from tensorcodec.accounting import report

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "federated.md"
IMG = ROOT / "docs" / "img"
HEADING = "## Compressed updates: the FedAvg experiment"
BEGIN, END = "<!-- fedavg:begin -->", "<!-- fedavg:end -->"

CLIENTS = 10
HIDDEN = 64  # the main model; WIDE_HIDDEN for the wide one
CLASSES = 10
BATCH = 32
TASKS = {"digits": "digits (sklearn), Dirichlet(0.5) label skew", "synthetic": "Synthetic(1, 1) (FedProx)"}


@dataclass(frozen=True)
class Config:
    label: str
    precision: Callable[[int], Any] | None  # noise seed -> precision; None: lossless fp32
    feedback: bool = False
    noisy: bool = False  # draws random numbers: a fresh noise seed per seed, round and client


CONFIGS = [
    Config("fp32", None),
    Config("bf16", lambda s: "bf16"),
    Config("blockwise8", lambda s: "blockwise8"),
    Config("nf4", lambda s: "nf4"),
    Config("minmax4", lambda s: tc.MinMax(4)),
    Config("minmax4 stochastic", lambda s: tc.MinMax(4, stochastic=True, seed=s), noisy=True),
    Config("minmax2", lambda s: tc.MinMax(2)),
    Config("minmax2 stochastic", lambda s: tc.MinMax(2, stochastic=True, seed=s), noisy=True),
    Config("minmax1", lambda s: tc.MinMax(1)),
    Config("minmax1 stochastic", lambda s: tc.MinMax(1, stochastic=True, seed=s), noisy=True),
    Config("minmax1", lambda s: tc.MinMax(1), feedback=True),
    Config("minmax1 stochastic", lambda s: tc.MinMax(1, stochastic=True, seed=s), feedback=True, noisy=True),
    Config("sign", lambda s: tc.ScaledSign()),
    Config("sign", lambda s: tc.ScaledSign(), feedback=True),
    Config("topk 1%", lambda s: tc.TopK(0.01)),
    Config("topk 1%", lambda s: tc.TopK(0.01), feedback=True),
    Config("bf16 > topk 1%", lambda s: ["bf16", tc.TopK(0.01)], feedback=True),
    Config("bf16 > topk 0.5%", lambda s: ["bf16", tc.TopK(0.005)], feedback=True),
    Config("topk 0.1%", lambda s: tc.TopK(0.001)),
    Config("topk 0.1%", lambda s: tc.TopK(0.001), feedback=True),
    Config("randk 1%", lambda s: tc.RandK(0.01, seed=s), noisy=True),
    Config("randk 1%", lambda s: tc.RandK(0.01, seed=s), feedback=True, noisy=True),
]

WIDE = ["fp32", "sign + EF", "topk 1% + EF", "bf16 > topk 1% + EF", "bf16 > topk 0.5% + EF", "topk 0.1% + EF"]
"""The configs also run with a 4x wider hidden layer, where a message's fixed overhead weighs less."""
WIDE_HIDDEN = 256

CURVES = ["fp32", "nf4", "minmax1", "minmax1 stochastic", "sign", "sign + EF", "topk 1%", "topk 1% + EF"]
CURVES += ["topk 0.1% + EF"]
"""The configs drawn in the accuracy-per-round picture."""


def name_of(config: Config) -> str:
    return config.label + (" + EF" if config.feedback else "")


# ---------------------------------------------------------------- data


@dataclass
class Task:
    clients: list[tuple[np.ndarray, np.ndarray]]  # (features float32, labels int64) per client
    test: tuple[np.ndarray, np.ndarray]


def dirichlet_split(labels: np.ndarray, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices per client: each class's samples split by a Dirichlet(alpha) draw (redrawn until every client has 10)."""
    while True:
        parts: list[list[int]] = [[] for _ in range(CLIENTS)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(CLIENTS, alpha)))[:-1] * idx.size).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k] += chunk.tolist()
        if min(len(p) for p in parts) >= 10:
            return [np.array(p) for p in parts]


def digits_task(seed: int) -> Task:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train).astype(np.float32), scaler.transform(x_test).astype(np.float32)
    parts = dirichlet_split(y_train, 0.5, np.random.default_rng(seed))
    return Task([(x_train[p], y_train[p]) for p in parts], (x_test, y_test))


def synthetic_task(seed: int, alpha: float = 1.0, beta: float = 1.0, dim: int = 60) -> Task:
    """FedProx's Synthetic(alpha, beta): a softmax-linear labeller and a feature mean of its own per client."""
    rng = np.random.default_rng(10_000 + seed)
    sizes = np.minimum(rng.lognormal(4, 2, CLIENTS).astype(int) + 50, 1000)
    std = np.arange(1, dim + 1) ** -0.6  # covariance diag(j^-1.2)
    clients, tests = [], []
    for n in sizes:
        u, big_b = rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))
        w, b = rng.normal(u, 1, (CLASSES, dim)), rng.normal(u, 1, CLASSES)
        v = rng.normal(big_b, 1, dim)
        x = (v + std * rng.standard_normal((n, dim))).astype(np.float32)
        y = np.argmax(x @ w.T + b, axis=1)
        cut = round(0.8 * n)
        clients.append((x[:cut], y[:cut]))
        tests.append((x[cut:], y[cut:]))
    test = (np.concatenate([t[0] for t in tests]), np.concatenate([t[1] for t in tests]))
    return Task(clients, test)


@cache
def task_of(name: str, seed: int) -> Task:
    return digits_task(seed) if name == "digits" else synthetic_task(seed)


# ---------------------------------------------------------------- model


def shapes(features: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        "fc1.weight": (hidden, features),
        "fc1.bias": (hidden,),
        "fc2.weight": (CLASSES, hidden),
        "fc2.bias": (CLASSES,),
    }


def parameters(features: int, hidden: int) -> int:
    return sum(int(np.prod(s)) for s in shapes(features, hidden).values())


def views(flat: np.ndarray, features: int, hidden: int) -> dict[str, np.ndarray]:
    """The parameters as a dict of float32 arrays that are views into one flat vector."""
    out, start = {}, 0
    for name, shape in shapes(features, hidden).items():
        size = int(np.prod(shape))
        out[name] = flat[start : start + size].reshape(shape)
        start += size
    return out


def init_model(features: int, hidden: int, rng: np.random.Generator) -> np.ndarray:
    """He-normal weights, zero biases, as one flat float32 vector."""
    flat = np.zeros(parameters(features, hidden), np.float32)
    p = views(flat, features, hidden)
    p["fc1.weight"][:] = rng.normal(0, np.sqrt(2 / features), p["fc1.weight"].shape)
    p["fc2.weight"][:] = rng.normal(0, np.sqrt(2 / hidden), p["fc2.weight"].shape)
    return flat


def logits(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ p["fc1.weight"].T + p["fc1.bias"], 0) @ p["fc2.weight"].T + p["fc2.bias"]


def sgd_step(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float) -> None:
    """One step of softmax cross-entropy SGD, in place."""
    h = x @ p["fc1.weight"].T + p["fc1.bias"]
    a = np.maximum(h, 0)
    z = a @ p["fc2.weight"].T + p["fc2.bias"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    d = e / e.sum(axis=1, keepdims=True)
    d[np.arange(len(y)), y] -= 1
    d /= len(y)
    da = (d @ p["fc2.weight"]) * (h > 0)
    p["fc2.weight"] -= lr * (d.T @ a)
    p["fc2.bias"] -= lr * d.sum(axis=0)
    p["fc1.weight"] -= lr * (da.T @ x)
    p["fc1.bias"] -= lr * da.sum(axis=0)


def local_update(
    start: np.ndarray, x: np.ndarray, y: np.ndarray, hidden: int, epochs: int, lr: float, rng: np.random.Generator
) -> np.ndarray:
    """Local weights minus ``start`` after ``epochs`` of minibatch SGD."""
    local = start.copy()
    p = views(local, x.shape[1], hidden)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(y), BATCH):
            batch = order[i : i + BATCH]
            sgd_step(p, x[batch], y[batch], lr)
    return local - start


def accuracy(flat: np.ndarray, hidden: int, test: tuple[np.ndarray, np.ndarray]) -> float:
    x, y = test
    return float(np.mean(np.argmax(logits(views(flat, x.shape[1], hidden), x), axis=1) == y))


# ---------------------------------------------------------------- FedAvg


def policy_of(config: Config, noise_seed: int) -> tc.Policy | None:
    return None if config.precision is None else tc.Policy({"*": config.precision(noise_seed)}, min_elements=0)


def refusal(config: Config) -> str | None:
    """The ValueError ``encode(feedback=)`` raises for this config, or None when it accepts it."""
    if not config.feedback:
        return None
    try:
        tc.encode({"update": np.ones(8, np.float32)}, policy=policy_of(config, 0), feedback=tc.ErrorFeedback())
    except ValueError as e:
        return str(e)
    return None


def server_mean(messages: list[bytes], weights: list[int]) -> np.ndarray:
    if hasattr(tc, "aggregate"):
        return tc.aggregate(messages, weights=weights)["update"]
    decoded = np.stack([tc.decode(m)["update"] for m in messages])
    return np.average(decoded, axis=0, weights=weights).astype(np.float32)


def run_fedavg(job: tuple[str, int, int, int, int, int, float]) -> dict[str, Any]:
    """One FedAvg run: test accuracy after each round and the mean message bytes per client and round."""
    task_name, index, seed, hidden, rounds, epochs, lr = job
    config = CONFIGS[index]
    with threadpool_limits(1):  # one BLAS thread per worker process
        task = task_of(task_name, seed)
        weights = [len(y) for _, y in task.clients]
        model = init_model(task.test[0].shape[1], hidden, np.random.default_rng(seed))
        feedback = [tc.ErrorFeedback() if config.feedback else None for _ in task.clients]
        fixed = policy_of(config, 0)
        curve, sent, count = [], 0, 0
        for rnd in range(rounds):
            messages = []
            for k, (x, y) in enumerate(task.clients):
                update = local_update(model, x, y, hidden, epochs, lr, np.random.default_rng([seed, rnd, k]))
                policy = policy_of(config, (seed * 1000 + rnd) * 100 + k) if config.noisy else fixed
                messages.append(tc.encode({"update": update}, policy=policy, feedback=feedback[k]))
            sent, count = sent + sum(len(m) for m in messages), count + len(messages)
            model += server_mean(messages, weights)
            if not np.isfinite(model).all():  # diverged: no accuracy from here on
                curve += [float("nan")] * (rounds - rnd)
                break
            curve.append(accuracy(model, hidden, task.test))
    result = {"task": task_name, "index": index, "seed": seed, "hidden": hidden, "curve": curve}
    return result | {"bytes": sent / count}


# ---------------------------------------------------------------- report


def summarize(results: list[dict[str, Any]], hidden: int, chosen: list[int], refused: dict[int, str]) -> dict[str, Any]:
    """Per task, a row per chosen config (fp32 first): curves, final accuracy, gap to fp32, rounds to target, bytes."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task in TASKS:
        rows = []
        for index in chosen:
            config = CONFIGS[index]
            runs = [r for r in results if (r["task"], r["index"], r["hidden"]) == (task, index, hidden)]
            runs.sort(key=lambda r: r["seed"])
            row: dict[str, Any] = {"name": name_of(config), "config": config, "refused": refused.get(index)}
            if runs:
                curves = np.array([r["curve"] for r in runs])
                row |= {"curves": curves, "final": curves[:, -1], "bytes": float(np.mean([r["bytes"] for r in runs]))}
            rows.append(row)
        base = rows[0]
        target = 0.95 * float(np.mean(base["final"]))
        for row in rows:
            if "curves" not in row:
                continue
            diff = 100 * (row["final"] - base["final"])  # paired by seed: same data, split and initial model
            row |= {"gap": float(np.mean(diff)), "gap_std": float(np.std(diff)), "share": row["bytes"] / base["bytes"]}
            row["diverged"] = bool(np.isnan(row["final"]).any())
            hits = [] if row["diverged"] else np.flatnonzero(np.mean(row["curves"], axis=0) >= target)
            row["to_target"] = int(hits[0]) + 1 if len(hits) else None
        out[task] = rows
    return out


def table(rows: list[dict[str, Any]]) -> list[str]:
    target = 95 * float(np.mean(rows[0]["final"]))
    heads = ["config", "final accuracy %", "vs fp32 (points)", f"rounds to {target:.1f} %"]
    heads += ["bytes / client / round", "% of fp32"]
    lines = ["| " + " | ".join(heads) + " |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row["refused"]:
            lines.append(f"| {row['name']} | refused by the API (not contractive) | | | | |")
            continue
        final = row["final"]
        if row["diverged"]:
            acc, gap = f"diverged ({int(np.isnan(final).sum())} of {len(final)} seeds)", ""
        else:
            acc = f"{100 * final.mean():.1f} ± {100 * final.std():.1f}"
            gap = f"{row['gap']:+.1f} ± {row['gap_std']:.1f}"
        rounds = "—" if row["to_target"] is None else str(row["to_target"])
        lines.append(f"| {row['name']} | {acc} | {gap} | {rounds} | {row['bytes']:,.0f} | {100 * row['share']:.2f} |")
    return lines


TARGETS = [(0.05, 0.5, False), (0.01, 1.0, True)]
"""The issue's targets: (share of fp32's bytes at most, points below fp32 at most, sparse + error feedback only)."""


def verdicts(summary: dict[str, list[dict[str, Any]]], targets: list[tuple[float, float, bool]]) -> list[str]:
    """Per task and target: the configs that meet it, or the closest one."""
    lines = []
    for share, points, sparse_ef in targets:
        what = "sparse + error feedback" if sparse_ef else "any config"
        within = f"{points:g} point{'' if points == 1 else 's'}"
        head = f"≤ {100 * share:g} % of fp32's bytes per round, final accuracy within {within} of fp32 ({what})"
        for task, rows in summary.items():
            rows = [r for r in rows if "gap" in r and not r["diverged"]]
            if sparse_ef:
                rows = [r for r in rows if r["config"].feedback and ("topk" in r["name"] or "randk" in r["name"])]
            small = [r for r in rows if r["share"] <= share]
            met = sorted((r for r in small if r["gap"] >= -points), key=lambda r: r["bytes"])
            each = [f"{r['name']} ({100 * r['share']:.2f} %, {r['gap']:+.2f} points)" for r in met]
            if met:
                lines.append(f"- **MET** ({task}) — {head}: {', '.join(each)}.")
            elif small:
                best = max(small, key=lambda r: r["gap"])
                lines.append(
                    f"- **NOT MET** ({task}) — {head}: the closest is {best['name']} "
                    f"({100 * best['share']:.2f} %, {best['gap']:+.2f} points)."
                )
            else:
                least = min(rows, key=lambda r: r["bytes"])
                lines.append(
                    f"- **NOT MET** ({task}) — {head}: no such config sends that little; the smallest, "
                    f"{least['name']}, sends {100 * least['share']:.2f} % ({least['gap']:+.2f} points)."
                )
    return lines


def overhead(hidden: int) -> dict[str, int]:
    """Message sizes for a random digits-sized update: fp32, topk 0.1% (and its values + indices), and
    topk 1% sent flat or as the four parameters."""
    flat = np.random.default_rng(0).standard_normal(parameters(64, hidden)).astype(np.float32)
    sparse = tc.Policy({"*": tc.TopK(0.001)}, min_elements=0)
    message, rep = report({"update": flat}, policy=sparse)
    one = tc.Policy({"*": tc.TopK(0.01)}, min_elements=0)
    return {
        "fp32": len(tc.encode({"update": flat})),
        "topk": len(message),
        "kept": rep.rows[0].payload_bytes + rep.rows[0].meta_bytes,
        "flat": len(tc.encode({"update": flat}, policy=one)),
        "tree": len(tc.encode(views(flat, 64, hidden), policy=one)),
    }


def accuracy_chart(summary: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(summary), figsize=(11, 4.5), layout="constrained")
    for axes, (task, rows) in zip(panels, summary.items(), strict=True):
        for row in rows:
            if row["name"] in CURVES and "curves" in row and not row["diverged"]:
                mean = np.mean(row["curves"], axis=0)
                style = "--" if row["config"].feedback else "-"
                look = {"color": "black", "linewidth": 1.0, "zorder": 5} if row is rows[0] else {"linewidth": 1.4}
                axes.plot(np.arange(1, mean.size + 1), 100 * mean, style, label=row["name"], **look)
        axes.set_title(TASKS[task], fontsize=10)
        axes.set_xlabel("round")
        axes.set_ylabel("test accuracy % (mean of seeds)")
        axes.set_ylim(0, 100)
        axes.grid(alpha=0.25)
    panels[0].legend(frameon=False, fontsize=8, loc="lower right")
    figure.suptitle("FedAvg, 10 clients: test accuracy per round (dashed: with error feedback)", fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def bytes_chart(summary: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 110
    figure, panels = plt.subplots(1, len(summary), figsize=(11, 5.6), dpi=dpi)
    # a fixed layout: the labels are placed in pixels
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.1, top=0.9, wspace=0.15)
    for axes, (task, rows) in zip(panels, summary.items(), strict=True):
        base = rows[0]
        top = 100 * float(np.mean(base["final"]))
        floor = top - 12  # worse configs sit on the bottom edge, their accuracy in the label
        axes.set_xscale("log")
        axes.set_xlim(0.7 * 0.01 * base["bytes"], 3 * base["bytes"])
        axes.set_ylim(floor - 1, top + 3)
        drawn = sorted((r for r in rows if "final" in r and not r["diverged"]), key=lambda r: -r["bytes"])
        heights = [max(100 * float(np.mean(r["final"])), floor) for r in drawn]
        points = [axes.transData.transform((r["bytes"], y)) for r, y in zip(drawn, heights, strict=True)]
        placed = [(px - 5, py - 5, px + 5, py + 5) for px, py in points]  # boxes in pixels: markers, then labels
        for row, shown in zip(drawn, heights, strict=True):
            acc = 100 * float(np.mean(row["final"]))
            marker = "v" if acc < floor else "^" if row["config"].feedback else "o"
            color = "#c0504d" if row["config"].feedback else "#3b6ea8"
            axes.scatter(row["bytes"], shown, marker=marker, color=color, s=30, zorder=3)
            label = row["name"] if acc >= floor else f"{row['name']} ({acc:.0f} %)"
            px, py = axes.transData.transform((row["bytes"], shown))
            width, height = 5.4 * len(label), 10.0
            for dy in (0, 11, -11, 22, -22, 33, -33, 44, -44, 55, 66, 77):  # the nearest free height
                box = (px + 6, py + dy - height / 2, px + 6 + width, py + dy + height / 2)
                if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed):
                    break
            placed.append(box)
            axes.annotate(
                label,
                (row["bytes"], shown),
                xytext=(6 * 72 / dpi, dy * 72 / dpi),
                textcoords="offset points",
                fontsize=6.5,
                va="center",
                arrowprops={"arrowstyle": "-", "color": "#bbbbbb", "linewidth": 0.5} if dy else None,
            )
        for share in (0.05, 0.01):
            axes.axvline(share * base["bytes"], color="#8c8c8c", linewidth=0.8, linestyle=":")
        axes.axhline(top - 0.5, color="#8c8c8c", linewidth=0.8, linestyle=":")
        axes.set_title(TASKS[task], fontsize=10)
        axes.set_xlabel("bytes per client per round (log); dotted: 1 % and 5 % of fp32")
        axes.set_ylabel("final test accuracy % (mean of seeds)")
        axes.grid(alpha=0.25, which="both")
    figure.suptitle(
        "FedAvg: final accuracy against uplink bytes (circles: no feedback, triangles: error feedback, ▼: below"
        " the panel; dotted: fp32 - 0.5 points)",
        fontsize=10,
    )
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def render(main: dict[str, Any], wide: dict[str, Any] | None, args: argparse.Namespace, seconds: float) -> str:
    command = shlex.join([".venv/bin/python", "benchmarks/fedavg.py", *sys.argv[1:]])
    sizes = "; ".join(f"{t} {[len(y) for _, y in task_of(t, 0).clients]}" for t in TASKS)
    params = ", ".join(f"{parameters(task_of(t, 0).test[0].shape[1], HIDDEN):,} on {t}" for t in TASKS)
    sizes_of = overhead(HIDDEN)
    lines = [
        BEGIN,
        "",
        f"- **Date**: {datetime.date.today().isoformat()}; **machine**: {os.cpu_count()}-core CPU, no GPU, "
        f"Python {platform.python_version()}, numpy {np.__version__}, tensorcodec {tc.__version__}",
        f"- **Command**: `{command}` (total {seconds:.0f} s)",
        f"- **Setup**: {CLIENTS} clients per task, all of them in every round, {args.rounds} rounds, "
        f"{args.epochs} local epochs of minibatch SGD (batch {BATCH}, lr {args.lr:g}), seeds "
        f"{', '.join(map(str, args.seeds))}; MLP in → {HIDDEN} → {CLASSES} with ReLU (parameters: {params}). "
        f"Client training-set sizes, seed 0: {sizes}.",
        "",
        "*final accuracy*: test accuracy after the last round, mean ± std over seeds; *vs fp32*: the "
        "difference to fp32 of the same seed (same data, split and initial model), mean ± std; *rounds to*: "
        "the first round at which the mean-of-seeds curve reaches 95 % of fp32's final accuracy (— if never); "
        "*bytes*: `len(message)` of one client's update, mean over clients, rounds and seeds (a round sends "
        f"{CLIENTS} of them); *% of fp32*: of fp32's message.",
        "",
        "A message's fixed part (preamble, a header that names the codec chain and segments, 64-byte "
        "alignment of each segment) does not shrink with the precision. For a random digits-sized update, "
        f"topk 0.1% sends {sizes_of['kept']} bytes of values and indices in a {sizes_of['topk']}-byte message, "
        f"{100 * sizes_of['topk'] / sizes_of['fp32']:.2f} % of fp32's {sizes_of['fp32']:,} bytes; and topk 1% "
        f"takes {sizes_of['flat']} bytes as one flat vector but {sizes_of['tree']:,} as the four parameters "
        "(four entries, their segments aligned each), which is why the updates travel flat.",
        "",
    ]
    for task, rows in main.items():
        lines += [f"### {TASKS[task]}", "", *table(rows), ""]
    lines += ["### Targets", "", *verdicts(main, TARGETS), ""]
    lines += [
        "![test accuracy per round](img/fedavg_accuracy.png)",
        "",
        "![final accuracy against bytes per round](img/fedavg_bytes.png)",
        "",
    ]
    if wide:
        sizes_of = overhead(WIDE_HIDDEN)
        params = ", ".join(f"{parameters(task_of(t, 0).test[0].shape[1], WIDE_HIDDEN):,} on {t}" for t in TASKS)
        lines += [
            f"### A 4x wider model (in → {WIDE_HIDDEN} → {CLASSES})",
            "",
            f"The same runs for a few configs with {WIDE_HIDDEN} hidden units (parameters: {params}; fp32's "
            f"message {sizes_of['fp32']:,} bytes, topk 0.1%'s {sizes_of['topk']} bytes), where the fixed part "
            "of a message weighs less against 1 % of fp32.",
            "",
        ]
        for task, rows in wide.items():
            lines += [f"{TASKS[task]}:", "", *table(rows), ""]
        lines += ["Targets with the wider model:", "", *verdicts(wide, TARGETS[1:]), ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_doc(section: str) -> None:
    """Replaces the generated block of docs/federated.md, or appends the section with it."""
    text = DOC.read_text(encoding="utf-8")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n" + section
    DOC.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.1, help="local SGD learning rate")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="worker processes")
    parser.add_argument("--quick", action="store_true", help="smoke run: seed 0 only, 10 rounds")
    parser.add_argument("--no-wide", action="store_true", help="skip the runs with the wider model")
    parser.add_argument("--only", nargs="*", help="config names to run, e.g. 'sign + EF' (fp32 always runs)")
    parser.add_argument("--write-doc", action="store_true", help="write the section of docs/federated.md and pictures")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seeds = 10, [0]
    start = time.perf_counter()
    chosen = [i for i, c in enumerate(CONFIGS) if i == 0 or not args.only or name_of(c) in args.only]
    wide = [] if args.no_wide else [i for i in chosen if name_of(CONFIGS[i]) in WIDE]
    refused = {i: why for i in chosen if (why := refusal(CONFIGS[i]))}
    runs = [(i, WIDE_HIDDEN) for i in wide] + [(i, HIDDEN) for i in chosen if i not in refused]  # slow ones first
    jobs = [
        (task, i, seed, hidden, args.rounds, args.epochs, args.lr)
        for i, hidden in runs
        for task in TASKS
        for seed in args.seeds
    ]
    results = []
    with Pool(args.jobs) as pool:
        for done, result in enumerate(pool.imap_unordered(run_fedavg, jobs), 1):
            results.append(result)
            print(
                f"[{done}/{len(jobs)} {time.perf_counter() - start:4.0f} s] {result['task']:<9} "
                f"hidden {result['hidden']:<3} {name_of(CONFIGS[result['index']]):<24} seed {result['seed']}: "
                f"{100 * result['curve'][-1]:.1f} %, {result['bytes']:,.0f} B per client per round",
                flush=True,
            )
    for i, why in refused.items():
        print(f"{name_of(CONFIGS[i])}: refused: {why}")
    main_summary = summarize(results, HIDDEN, chosen, refused)
    wide_summary = summarize(results, WIDE_HIDDEN, wide, {}) if wide else None
    section = render(main_summary, wide_summary, args, time.perf_counter() - start)
    print(section)
    (ROOT / "benchmarks" / "out").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "out" / "fedavg.md").write_text(section, encoding="utf-8")
    if args.write_doc:
        accuracy_chart(main_summary, IMG / "fedavg_accuracy.png")
        bytes_chart(main_summary, IMG / "fedavg_bytes.png")
        write_doc(section)


if __name__ == "__main__":
    main()
