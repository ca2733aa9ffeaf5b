"""`python -m sp24.study`: the seconds-long micro study end to end (every run, JSON, table, plot), and
the public FFN options the ablations use (relu2_ffn's gradient= and sparse_backward=)."""

from __future__ import annotations

import json

import pytest
import torch

import sp24
from sp24 import reference

pytest.importorskip("matplotlib", reason="the study's plot needs matplotlib (pip install matplotlib)")
pytest.importorskip("tqdm", reason="the study's progress bar needs tqdm (pip install tqdm)")

from sp24 import study  # noqa: E402


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_micro")
    threads = torch.get_num_threads()
    doc = study.main(["--config", "micro", "--out", str(out), "--threads", "1"])
    assert torch.get_num_threads() == threads, "main() must restore the thread count"
    return out, doc


def test_micro_study_writes_every_run(micro, capsys):
    out, doc = micro
    names = [r.name for r in study.runs_for(study.CONFIGS["micro"])]
    assert list(doc["runs"]) == names
    on_disk = json.loads((out / "study.json").read_text(), parse_constant=lambda c: pytest.fail(f"not plain JSON: {c}"))
    assert list(on_disk["runs"]) == names
    assert (out / "study.png").stat().st_size > 10_000
    md = (out / "study.md").read_text()
    assert all(f"| {n} |" in md for n in names)
    cfg = doc["config"]
    for n, r in doc["runs"].items():
        assert r["final_eval_loss"] is not None and 0 < r["final_eval_loss"] < 6, n
        assert r["tokens"] == cfg["steps"] * cfg["batch_size"] * cfg["seq_len"]
        assert len(r["final_layers"]) == cfg["n_layer"]
        assert all(0.0 <= la["zero_fraction"] <= 1.0 for la in r["final_layers"])
    # the runs really differ where they should: dense never sparse, no_warmup sparse from step 0
    assert doc["runs"]["dense_s0"]["ms_per_step_sparse"] is None
    assert doc["runs"]["no_warmup"]["ms_per_step_dense"] is None
    assert doc["runs"]["no_warmup"]["stats"][0]["sparse"]
    assert not doc["runs"]["default_s0"]["stats"][0]["sparse"] and doc["runs"]["default_s0"]["stats"][-1]["sparse"]
    assert doc["runs"]["dense_s0"]["final_eval_loss"] != doc["runs"]["dense_s1"]["final_eval_loss"]  # seeds matter
    s = doc["summary"]
    assert s["ratio_to_dense"]["dense_s0"] == pytest.approx(doc["runs"]["dense_s0"]["final_eval_loss"] / s["dense_mean"])
    # --table renders the same table from the JSON
    study.main(["--table", str(out / "study.json")])
    assert capsys.readouterr().out == md


def test_forked_runs_equal_runs_from_step_0(micro, tmp_path):
    """The runs that switch 2:4 on at the warm-up step continue from the dense run of their seed (the
    default): the same bits as training them from step 0 (--no-fork), record for record."""
    _, forked = micro
    scratch = study.main(["--config", "micro", "--out", str(tmp_path), "--threads", "1", "--no-fork"])
    cfg = study.CONFIGS["micro"]
    sharing = [r.name for r in study.runs_for(cfg) if study.shares_prefix(r, cfg)]
    assert sharing == ["default_s0", "default_s1", "no_split", "no_permutation", "ste", "fwd_only", "fp8"]
    for name, r in forked["runs"].items():
        assert (r.get("forked_from") is not None) == (name in sharing), name
        assert "forked_from" not in scratch["runs"][name]
        for key in ("train_loss", "eval_loss", "stats", "final_eval_loss"):
            assert r[key] == scratch["runs"][name][key], (name, key)
    assert forked["runs"]["ste"]["forked_from"] == {"run": "dense_s0", "step": cfg.warmup,
                                                    "wall_s": forked["runs"]["ste"]["forked_from"]["wall_s"]}
    # the FP8 2:4 run shares the FP8 dense run's prefix, not the bf16/fp32 one's
    assert forked["runs"]["fp8"]["forked_from"]["run"] == "fp8_dense"
    assert forked["runs"]["fp8_dense"]["final_eval_loss"] != forked["runs"]["dense_s0"]["final_eval_loss"]
    assert forked["forked"] and not scratch["forked"] and not forked["partial"]
    # a 2:4 run diverges from its dense prefix after the fork: the fork is not a copy of the dense run
    assert forked["runs"]["default_s0"]["train_loss"] != forked["runs"]["dense_s0"]["train_loss"]
    assert "Shared dense prefix" in study.table(forked) and "Shared dense prefix" not in study.table(scratch)


def test_partial_json_after_each_run(tmp_path, monkeypatch):
    """study.json is rewritten after every finished run ("partial": true), so a stopped study keeps them."""
    seen = []
    real = study._write

    def spy(args, cfg, corpus, runs, t0, load_before, partial):
        doc = real(args, cfg, corpus, runs, t0, load_before, partial)
        on_disk = json.loads((tmp_path / "study.json").read_text())
        seen.append((on_disk["partial"], list(on_disk["runs"])))
        return doc

    monkeypatch.setattr(study, "_write", spy)
    study.main(["--config", "micro", "--out", str(tmp_path), "--runs", "dense_s0,ste", "--steps", "4"])
    assert seen == [(True, ["dense_s0"]), (False, ["dense_s0", "ste"])]


def test_table_of_a_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    for content, what in (("not json", "JSONDecodeError"), ('{"runs": {}}', "KeyError")):
        bad.write_text(content)
        with pytest.raises(SystemExit, match=f"is not a readable study.json .*{what}"):
            study.main(["--table", str(bad)])
    with pytest.raises(SystemExit, match="is not a readable study.json"):
        study.main(["--table", str(tmp_path / "missing.json")])


def test_run_subset_and_bad_names(tmp_path):
    doc = study.main(["--config", "micro", "--out", str(tmp_path), "--runs", "dense_s0,ste", "--steps", "4"])
    assert list(doc["runs"]) == ["dense_s0", "ste"]
    with pytest.raises(SystemExit):
        study.parse_args(["--runs", "dense_s0,nope"])
    with pytest.raises(SystemExit):
        study.parse_args(["--steps", "4", "--warmup", "4"])


# ---- the public options of relu2_ffn the ablations need --------------------------------------------

def _inputs(T=64, d=16, F=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, d, generator=g).requires_grad_()
    w1 = (torch.randn(F, d, generator=g) * 0.3).requires_grad_()
    w2 = (torch.randn(d, F, generator=g) * 0.2).requires_grad_()
    return x, w1, w2, torch.randn(T, d, generator=g)


def _oracle(x, w1, w2, gy, mask_gradient: bool):
    """Autograd of the 2:4 forward with the mask fixed: masked gradient ("24sparse"), or the
    forward masked and the gradient passed straight through ("ste")."""
    y2 = torch.relu(x @ w1.t()).square()
    m = reference.select_mask(y2.detach(), "largest")
    y2m = y2 * m if mask_gradient else y2 + (y2 * m - y2).detach()
    out = y2m @ w2.t()
    return (out, *torch.autograd.grad(out, (x, w1, w2), gy))


@pytest.mark.parametrize("gradient,sparse_backward", [("24sparse", False), ("ste", False), ("ste", True)])
def test_backward_options_match_autograd_oracle(gradient, sparse_backward):
    # dense_fraction=1 and no permutation: every weight-gradient GEMM dense, so the result is exact
    x, w1, w2, gy = _inputs()
    out = sp24.relu2_ffn(x, w1, w2, gradient=gradient, sparse_backward=sparse_backward, permute_tokens=False,
                         dense_fraction=1.0 if sparse_backward else 0.05)
    got = (out, *torch.autograd.grad(out, (x, w1, w2), gy))
    want = _oracle(x, w1, w2, gy, mask_gradient=gradient == "24sparse")
    for name, a, b in zip(("out", "dx", "dw1", "dw2"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_options_change_the_gradients_and_not_the_forward():
    x, w1, w2, gy = _inputs(T=256, F=128)
    base = sp24.relu2_ffn(x, w1, w2)
    gb = torch.autograd.grad(base, (x, w1, w2), gy)
    for kw in ({"gradient": "ste"}, {"sparse_backward": False}):
        out = sp24.relu2_ffn(x, w1, w2, **kw)
        assert torch.equal(out, base), kw
        g = torch.autograd.grad(out, (x, w1, w2), gy)
        assert not torch.equal(g[1], gb[1]), kw  # dW1 differs: the option does something
    # straight-through: dX differs (the dropped positions now pass a gradient)
    g = torch.autograd.grad(sp24.relu2_ffn(x, w1, w2, gradient="ste"), (x, w1, w2), gy)
    assert not torch.allclose(g[0], gb[0])


def test_bad_gradient_option():
    x, w1, w2, _ = _inputs()
    with pytest.raises(ValueError, match=r"sp24.relu2_ffn: gradient must be '24sparse'.*got 'nope'"):
        sp24.relu2_ffn(x, w1, w2, gradient="nope")
    with pytest.raises(ValueError, match=r"gradient must be '24sparse'"):
        sp24.relu2_ffn(x, w1, w2, sparse=False, gradient="STE")  # checked in dense mode too
    with pytest.raises(TypeError, match=r"sp24.relu2_ffn: sparse_backward must be a bool \(True or False\), got 'no'"):
        sp24.relu2_ffn(x, w1, w2, sparse_backward="no")


def test_module_passes_the_options():
    torch.manual_seed(0)
    m = sp24.nn.ReLU2FFN(16, 64, sparse=True)
    x = torch.randn(64, 16)
    m.gradient, m.sparse_backward = "ste", False
    m(x).square().sum().backward()
    got = m.w1.weight.grad.clone()
    m.zero_grad()
    want = torch.autograd.grad(sp24.relu2_ffn(x, m.w1.weight, m.w2.weight, gradient="ste", sparse_backward=False)
                               .square().sum(), m.w1.weight)[0]
    assert torch.equal(got, want)


def test_cpu_pack_indices_every_byte():
    # the CPU fast path of pack_indices / unpack_indices (int32 product, table) on all 256 patterns,
    # against the definition: byte = i0 | i1 << 2 | i2 << 4 | i3 << 6
    b = torch.arange(256)
    idx = torch.stack([b & 3, (b >> 2) & 3, (b >> 4) & 3, b >> 6], dim=1).to(torch.uint8).reshape(8, 128)
    packed = sp24.tensor.pack_indices(idx)
    assert torch.equal(packed.reshape(-1), b.to(torch.uint8))
    assert torch.equal(sp24.tensor.unpack_indices(packed), idx)


def test_bench_cpu_ffn_prints_the_ratio(tmp_path, capsys):
    from sp24.bench.cli import main as bench_main

    assert bench_main(["cpu-ffn", "--shapes", "64:16:64,32:8:32", "--reps", "2", "--warmup", "0",
                       "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "cpu_ffn.json").read_text())
    assert [(r["T"], r["d"], r["F"]) for r in doc["rows"]] == [(64, 16, 64), (32, 8, 32)]
    for r in doc["rows"]:
        assert len(r["dense_runs_ms"]) == len(r["sparse_runs_ms"]) == 2
        assert r["ratio"] == pytest.approx(r["sparse_ms"] / r["dense_ms"])
    assert "| 64, 16, 64 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="multiples of 8"):
        bench_main(["cpu-ffn", "--shapes", "64:12:64", "--out", str(tmp_path)])
    # --moe: routed experts, same interleaving, its own files
    assert bench_main(["cpu-ffn", "--shapes", "64:16:32", "--moe", "4:2", "--reps", "2", "--warmup", "0",
                       "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "cpu_moe.json").read_text())
    assert doc["moe"] == [4, 2] and (doc["rows"][0]["E"], doc["rows"][0]["k"]) == (4, 2)
    assert "relu2_experts (E=4, top-2)" in (tmp_path / "cpu_moe.md").read_text()
    with pytest.raises(SystemExit, match="--moe must be E:k"):
        bench_main(["cpu-ffn", "--shapes", "64:16:32", "--moe", "2:3", "--out", str(tmp_path)])


def test_moe_micro_study(tmp_path):
    # the MoE configuration end to end: the four runs, forked sparse runs equal to runs from step 0,
    # experts switched to 2:4 with the shared expert, per-expert stats, the routed-experts table
    doc = study.main(["--config", "moe_micro", "--out", str(tmp_path), "--threads", "1"])
    assert list(doc["runs"]) == ["dense_s0", "dense_s1", "default_s0", "default_s1"]
    cfg = study.CONFIGS["moe_micro"]
    model = study.demo.GPT(cfg)
    kinds = [type(m).__name__ for m in study.sp24_modules(model)]
    assert kinds == ["ReLU2Experts", "ReLU2FFN"] * cfg.n_layer
    for name, r in doc["runs"].items():
        assert r["final_eval_loss"] is not None and all(e["sparse"] == (name.startswith("default") and e["step"] >= cfg.warmup)
                                                         for e in r["stats"])
        per = [la["per_expert"] for la in r["final_layers"] if "per_expert" in la]
        assert len(per) == cfg.n_layer and all(sum(p["tokens"] for p in layer) > 0 for layer in per)
    assert doc["runs"]["default_s0"]["final_eval_loss"] != doc["runs"]["dense_s0"]["final_eval_loss"]
    scratch = study.main(["--config", "moe_micro", "--out", str(tmp_path / "nofork"), "--threads", "1", "--no-fork",
                          "--runs", "dense_s0,default_s0"])
    for k in study.RECORDS[:3]:
        assert scratch["runs"]["default_s0"][k] == doc["runs"]["default_s0"][k], k
    text = (tmp_path / "study.md").read_text()
    assert "Routed experts at the end" in text and "| default_s1 | 1 |" in text
