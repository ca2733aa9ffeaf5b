"""What the tools tell a newcomer: where the demo and the benchmarks write, the hint about CPU run
times, and the one-line summary of the GPU skips."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_tests_conftest():
    # by path: `import conftest` gets whichever conftest module was imported last (tests/emu has one)
    spec = importlib.util.spec_from_file_location("sp24_tests_conftest", ROOT / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


conftest = _load_tests_conftest()


def test_demo_default_output_is_untracked():
    from sp24 import demo

    args, _, _ = demo.parse_args(["--device", "cpu"])
    assert args.out == Path("out") / "demo_cpu"
    args, _, _ = demo.parse_args(["--config", "micro", "--device", "cpu"])
    assert args.out == Path("out") / "demo_micro"
    args, _, _ = demo.parse_args(["--out", "bench/results/demo_cpu", "--device", "cpu"])
    assert args.out == Path("bench/results/demo_cpu")  # committed results: only when asked for
    if (ROOT / ".git").exists():
        r = subprocess.run(["git", "check-ignore", "-q", "out/demo_cpu/summary.json"], cwd=ROOT)
        assert r.returncode == 0, "out/ must be git-ignored: the demo's default output would dirty the tree"


def test_bench_says_where_it_wrote(tmp_path, capsys):
    from sp24.bench import cli

    out = tmp_path / "res"
    assert cli.main(["sparsify", "--tiny", "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert f"sp24.bench sparsify: wrote {out / 'sparsify.json'}, {out / 'sparsify.md'}" in said.out
    assert (out / "sparsify.json").is_file() and (out / "sparsify.md").is_file()
    assert "--tiny" not in said.err  # no CPU hint for a tiny run
    cli.main(["report", str(out), "--out", str(out / "status.md")])
    assert f"sp24.bench report: wrote {out / 'status.md'}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, hint", [
    (["--out", "X"], True),
    (["--out", "X", "--tiny"], False),
    (["--out", "X", "--shape", "64,128"], False),
])
def test_bench_cpu_hint_about_tiny(argv, hint, tmp_path, capsys, monkeypatch):
    from sp24.bench import cli, common

    monkeypatch.chdir(tmp_path)
    args = cli.parser().parse_args(["sparsify", "--device", "cpu", *argv])
    common.resolve(args)
    err = capsys.readouterr().err
    assert ("use --tiny" in err) == hint, err
    if hint:
        assert err.startswith("sp24.bench sparsify: running the GPU-sized default shapes on the CPU")


def _skip(reason: str, gpu: bool = False):
    return SimpleNamespace(longrepr=("tests/x.py", 1, f"Skipped: {reason}"), keywords={"gpu": 1} if gpu else {},
                           skipped=True)


def test_skip_summary_groups_gpu_skips_in_one_line():
    reps = ([_skip("no CUDA device on this machine", gpu=True)] * 1600
            + [_skip("no CUDA device on this machine")] * 40
            + [_skip("cuSPARSELt refuses float32 output here", gpu=True)] * 2
            + [_skip("README.md:200 needs peft (optional extra, not installed)")] * 3)
    lines = conftest.skip_summary(reps)
    assert lines[0] == ("1642 GPU tests skipped (no CUDA device on this machine: 1640; cuSPARSELt refuses float32 "
                        "output here: 2); on a GPU machine: bash bench/gpu_check.sh OUT")
    assert lines[1:] == ["3 skipped: README.md:200 needs peft (optional extra, not installed)"]
    assert conftest.skip_summary([_skip("no CUDA device on this machine", gpu=True)] * 5) == [
        "5 GPU tests skipped (no CUDA device on this machine); on a GPU machine: bash bench/gpu_check.sh OUT"]
    assert conftest.skip_summary([]) == []


def test_skip_summary_in_a_real_run(tmp_path):
    """pytest on a small file with GPU-style skips prints one summary line and no per-test lines."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('i', range(7))\n"
        "def test_gpu(i):\n    pytest.skip('no CUDA device on this machine')\n"
        "def test_other():\n    pytest.skip('needs peft')\n"
        "def test_ok():\n    pass\n")
    import sys
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfExX", "-p", "no:cacheprovider", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "7 GPU tests skipped (no CUDA device on this machine)" in out
    assert "1 skipped: needs peft" in out
    assert "SKIPPED [" not in out and "1 passed, 8 skipped" in out
