"""The ``llama3-lab`` command's errors (one or two lines, exit status 2, ``--debug`` for the traceback),
``fetch --repair`` and ``plan`` (no model is loaded: every case fails or plans before that)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama3_lab import cli

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    """``(exit status, stdout, stderr lines)`` of ``llama3-lab ARGV`` run in this process."""
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err.splitlines()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_a_gpu_that_is_not_there_is_one_line_with_the_fix(capsys) -> None:
    status, _, err = run(["generate", "x", "--device", "cuda"], capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith("error: argument --device: cuda asked for") and "--device cpu" in err[0]


def test_a_dtype_the_model_cannot_compute_in_is_one_line(capsys) -> None:
    status, _, err = run(["generate", "x", "--dtype", "int32"], capsys)
    assert status == 2 and len(err) == 1 and "'int32' is not a dtype" in err[0] and "bfloat16" in err[0]


def test_a_broken_config_is_one_line(tmp_path: Path, capsys) -> None:
    config = json.loads((ROOT / "config.json").read_text())
    config["num_key_value_heads"] = 5  # does not divide 32 query heads
    (tmp_path / "config.json").write_text(json.dumps(config))
    status, _, err = run(["explain", str(tmp_path / "config.json")], capsys)
    assert status == 2 and len(err) <= 2 and err[0].startswith("error: ") and "num_key_value_heads" in err[0]
    (tmp_path / "config.json").write_text("{'hidden_size': 64,")
    status, _, err = run(["explain", str(tmp_path / "config.json")], capsys)
    assert status == 2 and len(err) <= 2 and "JSON" in err[0]


def test_an_unexpected_error_names_its_type_and_debug_shows_the_traceback(monkeypatch, capsys) -> None:
    def broken(path):
        raise RuntimeError("something nobody foresaw\non two lines")

    monkeypatch.setattr(cli, "explain_path", broken)
    status, _, err = run(["explain", "config.json"], capsys)
    assert status == 1 and err == [
        "error: unexpected RuntimeError: something nobody foresaw on two lines",
        "run with --debug for the traceback: llama3-lab --debug <command> ...",
    ]
    status, _, err = run(["--debug", "explain", "config.json"], capsys)
    assert status == 1 and err[0] == "Traceback (most recent call last):" and "in broken" in "\n".join(err)
    assert err[-1] == "error: unexpected RuntimeError: something nobody foresaw on two lines"


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"),
        AssertionError("Torch not compiled with CUDA enabled"),
    ],
)
def test_torch_saying_there_is_no_gpu_is_a_known_error(monkeypatch, capsys, error: Exception) -> None:
    def fails(path):
        raise error

    monkeypatch.setattr(cli, "explain_path", fails)
    status, _, err = run(["explain", "config.json"], capsys)
    assert status == 2 and len(err) == 1 and "no usable CUDA GPU" in err[0] and "--device cpu" in err[0]


def test_errors_of_our_own_and_missing_files_are_known(monkeypatch, capsys) -> None:
    from llama3_lab.hook_points import HookNameError
    from llama3_lab.memory import MemoryBudgetError

    for error in (
        FileNotFoundError("no such file: x.gguf"),
        MemoryBudgetError("over the budget: pass budget_bytes", 2048, 1024),
        HookNameError("unknown hook 'blocks.0.hook_patern'; did you mean blocks.0.attn.hook_pattern?"),
    ):
        monkeypatch.setattr(cli, "explain_path", lambda path, error=error: (_ for _ in ()).throw(error))
        status, _, err = run(["explain", "config.json"], capsys)
        assert status == 2 and err == [f"error: {cli.error_message(error)}"]
        assert not err[0].startswith("error: '")  # a KeyError's message without the quotes str() adds


def test_argument_errors_are_one_line_not_the_whole_usage(capsys) -> None:
    status, _, err = run(["plan"], capsys)
    assert status == 2 and err == [
        "error: the following arguments are required: --gpus (llama3-lab plan --help lists the options)"
    ]
    assert run(["--help"], capsys)[0] == 0


def test_the_installed_command_prints_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llama3_lab", "generate", "x", "--dtype", "int32"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: argument --dtype")


def test_fetch_repair_runs_the_cache_repair(monkeypatch, capsys) -> None:
    import llama3_lab.loading

    calls = []

    def repair(progress=True):
        calls.append(progress)
        return ["smollm2-135m-instruct.gguf: ok", "models/smollm2-135m-instruct: rebuilt (stale stamp)"]

    monkeypatch.setattr(llama3_lab.loading, "repair", repair)
    status, out, _ = run(["fetch", "--repair", "--quiet"], capsys)
    assert status == 0 and calls == [False]
    assert out == "smollm2-135m-instruct.gguf: ok\nmodels/smollm2-135m-instruct: rebuilt (stale stamp)\n"
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["fetch"].format_help()
    assert "verify the whole cache by content" in " ".join(help_text.split())


def test_plan_of_the_repository_config_on_two_80gb_gpus(capsys) -> None:
    status, out, err = run(["plan", str(ROOT / "config.json"), "--gpus", "2x80GB"], capsys)
    assert status == 0 and err == []
    lines = out.splitlines()
    assert lines[0].endswith("8,030,261,248 parameters, 15.0 GiB of bfloat16 weights, on 2x80GB")
    assert lines[1].split() == ["device", "layers", "weights", "budget", "KV/token", "patterns@8192"]
    # 16 layers each; per token 2 (K, V) · 8 KV heads · 128 · 2 bytes · 16 layers = 64 KiB per GPU;
    # every pattern at 8192: 16 layers · 32 heads · 8192² · 2 bytes = 64 GiB per GPU
    assert lines[2].split() == [
        "cuda:0",
        "0-15",
        "(16)",
        "7.5",
        "GiB",
        "70.8",
        "GiB",
        "64.0",
        "KiB",
        "64.0",
        "GiB",
    ]
    assert lines[3].split() == [
        "cuda:1",
        "16-31",
        "(16)",
        "7.5",
        "GiB",
        "70.8",
        "GiB",
        "64.0",
        "KiB",
        "64.0",
        "GiB",
    ]
    assert "KV cache (batch 1, bfloat16): 128.0 KiB per token; at 8,192 tokens 1.0 GiB" in out
    assert "(cuda:0 512.0 MiB, cuda:1 512.0 MiB)" in out


def test_plan_of_a_known_model_and_its_refusal(capsys) -> None:
    status, out, _ = run(
        ["plan", "llama3.1-405b", "--gpus", "8x80GB", "--dtype", "fp16", "--cpu", "512GB"], capsys
    )
    assert status == 0 and out.startswith("llama3.1-405b: 405,853,388,800 parameters")
    assert "cpu " in out and "compute on cuda:0" in out  # what the GPUs cannot hold goes to the CPU
    status, _, err = run(["plan", "llama3-70b", "--gpus", "1x80GB"], capsys)
    assert status == 2 and len(err) == 1 and "do not fit" in err[0] and "Ways out" in err[0]
    status, _, err = run(["plan", "llama3-70b", "--gpus", "2x80GB", "--context", "9000"], capsys)
    assert status == 2 and err == [
        "error: --context 9,000 is beyond llama3-70b's context of 8,192 tokens: give --context 8192 or less."
    ]
    status, _, err = run(["plan", "llama3.1-7b", "--gpus", "2x80GB"], capsys)
    assert status == 2 and "neither a config file nor a known model" in err[0] and "llama3.1-8b" in err[0]
