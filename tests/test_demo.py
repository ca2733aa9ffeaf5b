"""The main job, `python -m sp24.demo`: end-to-end with the micro config (seconds), the corpus rules,
the GPU config's size, and clear messages for bad flags."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("matplotlib", reason="the demo's plot needs matplotlib (pip install matplotlib)")
pytest.importorskip("tqdm", reason="the demo's progress bar needs tqdm (pip install tqdm)")

from sp24 import demo  # noqa: E402

TOP_KEYS = {"torch_version", "python_version", "device", "commit", "command", "config_name", "seed", "config", "n_params",
            "corpus", "final_eval_loss_dense", "final_eval_loss_sparse", "eval_loss_rel_gap", "runs", "plot"}
RUN_KEYS = {"mode", "train_loss", "eval_loss", "stats", "step_ms", "sparse_enabled_at_step", "wall_s",
            "final_eval_loss", "sparse_flags", "n_params", "ms_per_step_dense", "ms_per_step_sparse"}
STAT_KEYS = {"zero_fraction", "drop_rowwise", "drop_tokenwise"}


def _strict_json(path):
    def no_constants(c):
        raise AssertionError(f"{path} is not plain JSON: it contains {c}")
    return json.loads(path.read_text(), parse_constant=no_constants)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_micro")
    threads = torch.get_num_threads()
    summary = demo.main(["--config", "micro", "--out", str(out), "--seed", "3", "--device", "cpu", "--threads", "1"])
    assert torch.get_num_threads() == threads, "main() must restore the thread count"
    return out, summary


def test_micro_writes_json_and_png(micro):
    out, summary = micro
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    js = _strict_json(out / "summary.json")
    assert TOP_KEYS <= set(js), TOP_KEYS - set(js)
    assert js["torch_version"] == torch.__version__ and js["plot"] == "curves.png"
    assert js["command"].startswith("python -m sp24.demo --config micro --out ")
    assert js["config_name"] == "micro" and js["seed"] == 3 and js["config"]["steps"] == demo.CONFIGS["micro"].steps
    assert js["corpus"]["files_train"] > 0 and js["corpus"]["files_eval"] > 0
    for mode in ("dense", "sparse"):
        assert RUN_KEYS <= set(js["runs"][mode]), RUN_KEYS - set(js["runs"][mode])
    assert js["final_eval_loss_sparse"] == js["runs"]["sparse"]["final_eval_loss"]


def test_micro_loss_decreases(micro):
    _, s = micro
    for mode in ("dense", "sparse"):
        run = s["runs"][mode]
        train = [v for _, v in run["train_loss"]]
        assert all(math.isfinite(v) for v in train)
        assert sum(train[-5:]) / 5 < sum(train[:5]) / 5 - 0.5, (mode, train)
        evals = [v for _, v in run["eval_loss"]]
        assert evals[-1] < evals[0] and evals[-1] < math.log(256), (mode, evals)


def test_micro_sparse_switches_on_after_warmup(micro):
    _, s = micro
    warmup = s["config"]["warmup"]
    dense, sparse = s["runs"]["dense"], s["runs"]["sparse"]
    assert dense["sparse_enabled_at_step"] is None and not any(dense["sparse_flags"])
    assert sparse["sparse_enabled_at_step"] == warmup
    assert sparse["sparse_flags"] == [True] * s["config"]["n_layer"]
    for e in sparse["stats"]:
        assert e["sparse"] == (e["step"] >= warmup)
        assert len(e["layers"]) == s["config"]["n_layer"]
        for layer in e["layers"]:
            assert set(layer) == STAT_KEYS and all(0.0 <= v <= 1.0 for v in layer.values())
    assert sparse["ms_per_step_sparse"] is not None and dense["ms_per_step_sparse"] is None
    # same seed, same batches: identical until the switch, then the 2:4 path changes the trajectory
    td = dict((k, v) for k, v in dense["train_loss"])
    ts = dict((k, v) for k, v in sparse["train_loss"])
    for step in range(warmup):
        assert ts[step] == pytest.approx(td[step], rel=1e-5, abs=1e-6), step
    assert any(abs(ts[k] - td[k]) > 1e-6 for k in range(warmup + 1, s["config"]["steps"]))


def test_bf16_parameters_run_sparse(tmp_path):
    # the gpu config trains in bf16; its dtype path (2:4 kernels in bf16, forward and backward) runs here too
    s = demo.main(["--config", "micro", "--dtype", "bfloat16", "--steps", "8", "--warmup", "4",
                   "--out", str(tmp_path), "--device", "cpu", "--threads", "1"])
    run = s["runs"]["sparse"]
    assert s["config"]["dtype"] == "bfloat16" and run["sparse_enabled_at_step"] == 4 and all(run["sparse_flags"])
    assert all(math.isfinite(v) for _, v in run["train_loss"]) and math.isfinite(run["final_eval_loss"])


def test_gpu_config_size():
    cfg = demo.CONFIGS["gpu"]
    assert cfg.steps >= 2000 and 0 < cfg.warmup < cfg.steps and cfg.dtype == "bfloat16"
    with torch.device("meta"):
        n = sum(p.numel() for p in demo.GPT(cfg).parameters())
    assert n >= 20_000_000, n


def test_corpus_rules(tmp_path):
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "encodings").mkdir()
    (tmp_path / "asyncio" / "sub").mkdir(parents=True)
    # crc32 % 10: a.py 2, b.py 6, asyncio/x.py and asyncio/sub/y.py non-zero, k.py 0 (held out)
    files = {"a.py": b"print(1)\n", "b.py": b"x = 2\x00\n", "k.py": b"held\n", "notes.txt": b"no",
             "encodings/cp1.py": b"table", "asyncio/x.py": b"import os\n", "asyncio/sub/y.py": b"y\n",
             "pkg/z.py": b"z", "pkg/tests/t.py": b"t"}
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "asyncio" / "test").mkdir()
    (tmp_path / "asyncio" / "test" / "t.py").write_bytes(b"t")
    assert demo.corpus_files(tmp_path) == ["a.py", "asyncio/sub/y.py", "asyncio/x.py", "b.py", "k.py"]
    assert [demo.is_eval_file(f) for f in demo.corpus_files(tmp_path)] == [False, False, False, False, True]
    train, evl, info = demo.load_corpus(str(tmp_path))
    assert (info["files_train"], info["files_eval"]) == (4, 1)
    assert bytes(evl.tolist()) == b"held\n\x00"
    assert train.numel() == len(b"print(1)\n" b"x = 2\n" b"import os\n" b"y\n") + 4
    assert int((train == 0).sum()) == info["files_train"] and int((evl == 0).sum()) == info["files_eval"]
    assert demo.load_corpus(str(tmp_path))[2]["sha256"] == info["sha256"]
    (tmp_path / "k.py").unlink()
    with pytest.raises(RuntimeError, match="held-out eval split of the corpus .* is empty"):
        demo.load_corpus(str(tmp_path))


def test_real_corpus_split_is_disjoint_and_stable():
    import sysconfig
    from pathlib import Path

    files = demo.corpus_files(Path(sysconfig.get_paths()["stdlib"]))
    assert files == sorted(files) and len(files) > 100
    held = [f for f in files if demo.is_eval_file(f)]
    assert 0.03 < len(held) / len(files) < 0.2
    assert not any(f.split("/")[0] == "encodings" or "/test/" in f or "/tests/" in f for f in files)


@pytest.mark.parametrize("argv, message", [
    (["--config", "micro", "--warmup", "30"], "--warmup must be smaller than --steps"),
    (["--steps", "10", "--warmup", "10"], "got --warmup 10 with --steps 10"),
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--steps", "many"], "--steps must be an integer, got 'many'"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--threads", "0"], "--threads must be positive, got 0"),
    (["--config", "huge"], "invalid choice: 'huge'"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
    (["--device", "banana"], "is not a torch device"),
    (["--device", "meta"], "--device must be a cpu or cuda device, got 'meta'"),
    pytest.param(["--device", "cuda"], "CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    pytest.param(["--config", "gpu"], "--config gpu is sized for a CUDA GPU and none is available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_flags(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        demo.main(argv + ["--out", str(tmp_path / "never")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m sp24.demo" in err, err
    assert not (tmp_path / "never").exists()
