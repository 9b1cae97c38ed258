"""Online training: schedule, trainer properties on synthetic data, the live stream, and the CLI on a tiny model."""

from __future__ import annotations

import argparse
import json
import math
import random

import pytest
import torch

from sae_hooks.run import RunConfig, train
from sae_hooks.sae import load_sae, make_sae
from sae_hooks.trainer import Target, TrainConfig, Trainer, default_dead_window, held_out_metrics, lr_factor

# ---- schedule and config ------------------------------------------------------------------


def test_lr_schedule_warms_up_then_decays_to_final_fraction():
    cfg = TrainConfig(warmup_frac=0.1, final_lr_frac=0.1)
    f = [lr_factor(s, 100, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # monotone decay after warm-up
    assert f[-1] == pytest.approx(0.1)
    assert all(lr_factor(s, 100, TrainConfig(decay="constant", warmup_frac=0.0)) == 1.0 for s in range(100))


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("decay", "step"), ("warmup_frac", 1.5), ("b_dec_init", "x"),
                                         ("dead_window_tokens", 0), ("autocast", "int8"),
                                         ("concurrent", 1)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_dead_window_scales_with_the_run():
    assert default_dead_window(400_000) == 20_000
    assert default_dead_window(10**10) == 10_000_000


# ---- trainer on synthetic data -------------------------------------------------------------


def _synthetic(n, d=32, n_feat=96, seed=0, scale=7.0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    codes = (torch.rand(n, n_feat, generator=g) < 0.05) * torch.rand(n, n_feat, generator=g)
    return (codes @ dirs) * scale + 3.0  # an offset and a non-unit scale, which the trainer must absorb


def _trainer(arch="topk", steps=60, **cfg):
    sae = make_sae(arch, 32, 128, k=6, seed=0)
    t = Trainer([Target("s", "h", sae)], TrainConfig(lr=cfg.pop("lr", 3e-3), **cfg), total_steps=steps,
                total_tokens=steps * 256)
    return t, sae


def _four(concurrent, steps=6, seed=0):
    """Four SAEs of different architectures and hooks, trained on the same synthetic batches."""
    archs = [("topk", "a"), ("batchtopk", "a"), ("matryoshka", "b"), ("matching_pursuit", "a")]
    targets = [Target(f"{arch}_{hook}", hook, make_sae(arch, 32, 128, k=6, seed=i, **(
        {"widths": (32, 128)} if arch == "matryoshka" else {}))) for i, (arch, hook) in enumerate(archs)]
    t = Trainer(targets, TrainConfig(lr=3e-3, concurrent=concurrent), total_steps=steps, total_tokens=steps * 512)
    x, y = _synthetic(512 * steps, seed=seed), _synthetic(512 * steps, seed=seed + 1)
    stats = [t.step({"a": a, "b": b}) for a, b in zip(x.split(512), y.split(512))]
    return t, stats


def test_concurrent_sae_steps_match_sequential_and_are_deterministic():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (seq, s_stats), (con, c_stats), (con2, _) = _four(False), _four(True), _four(True)
        assert seq.workers() == 1 and con.workers() == 2
        assert torch.get_num_threads() == 2  # the pool threads' share did not leak into the caller
    finally:
        torch.set_num_threads(threads)
    assert list(c_stats[-1]) == [t.name for t in con.targets]  # stats keep the targets' order
    assert set(con.step_seconds) == set(c_stats[-1]) and all(v > 0 for v in con.step_seconds.values())
    for a, b, c in zip(seq.targets, con.targets, con2.targets):
        for (name, p), q, r in zip(a.sae.named_parameters(), b.sae.parameters(), c.sae.parameters()):
            assert torch.equal(q, r), (a.name, name)  # concurrent runs repeat exactly
            # vs one after another: the same computation, reductions split over threads differently
            torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=f"{a.name}.{name}")
        assert c_stats[-1][a.name].fvu == pytest.approx(s_stats[-1][a.name].fvu, rel=1e-3)


def test_concurrent_step_waits_for_every_sae_then_raises_the_first_error(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t, _ = _four(True, steps=2)
        bad = t.targets[1].sae

        def broken(*a, **kw):
            raise RuntimeError("boom in batchtopk")

        monkeypatch.setattr(bad, "training_loss", broken)
        before = {x.name: x.sae.W_dec.detach().clone() for x in t.targets}
        batch = _synthetic(512, seed=9)
        with pytest.raises(RuntimeError, match="boom in batchtopk"):
            t.step({"a": batch, "b": batch})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    changed = {x.name: not torch.equal(before[x.name], x.sae.W_dec) for x in t.targets}
    assert changed == {"topk_a": True, "batchtopk_a": False, "matryoshka_b": True, "matching_pursuit_a": True}
    assert t.step_count == 2  # the failed step is not counted


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping, and not
def test_clip_grad_norm_equals_torch(max_norm):
    from sae_hooks.trainer import clip_grad_norm

    g = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.zeros(s)) for s in ((64, 32), (32,), (7, 5))]
    ref = [torch.nn.Parameter(torch.zeros(s)) for s in ((64, 32), (32,), (7, 5))]
    for a, b in zip(ours, ref):
        a.grad = torch.randn(a.shape, generator=g)
        b.grad = a.grad.clone()
    ref.append(torch.nn.Parameter(torch.zeros(3)))  # no gradient: skipped by both
    n_ours, n_ref = clip_grad_norm(ours, max_norm), torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert torch.equal(n_ours, n_ref)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, ref))
    assert (float(ours[0].grad.norm()) < 1e-2) == (max_norm < 1)


def test_fp16_autocast_scales_the_loss_and_skips_overflowing_steps():
    def standard(autocast):
        sae = make_sae("standard", 32, 128, seed=0)
        return Trainer([Target("s", "h", sae)], TrainConfig(lr=3e-3, autocast=autocast), total_steps=8,
                       total_tokens=8 * 256), sae

    x = _synthetic(256 * 8)
    t, sae = standard("fp16")
    bf, _ = standard("bf16")
    assert t.scalers["s"].is_enabled() and not bf.scalers["s"].is_enabled()
    batches = x.split(256)
    t.step({"h": batches[0]})
    # A scale so large that the fp16 gradients of the dense products overflow: the step is skipped
    # (parameters and Adam state untouched) and the scale backs off.
    t.scalers["s"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40, backoff_factor=2.0 ** -30)
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    t.step({"h": batches[1]})
    assert all(torch.equal(before[n], p) for n, p in sae.named_parameters())
    assert t.scalers["s"].get_scale() == 2.0 ** 10
    fvus = [t.step({"h": b})["s"].fvu for b in batches[2:]]  # at the lower scale it trains
    assert any(not torch.equal(before[n], p) for n, p in sae.named_parameters())
    assert fvus[-1] < fvus[0]
    state = t.state_dict()
    t2, _ = standard("fp16")
    t2.load_state_dict(state)
    assert t2.scalers["s"].get_scale() == t.scalers["s"].get_scale() == 2.0 ** 10


def test_training_reduces_fvu_and_export_takes_raw_activations():
    x = _synthetic(256 * 60)
    held = _synthetic(2048, seed=1)
    t, sae = _trainer()
    before = held_out_metrics(t.export()["s"], held)["fvu"]
    for batch in x.split(256):
        stats = t.step({"h": batch})
    after = held_out_metrics(t.export()["s"], held)
    assert after["fvu"] < 0.5 * before and after["l0"] <= 6
    s = t.scales["h"]
    assert s != 1.0
    # The exported SAE on raw x gives the trained SAE's codes on scaled x, and x_hat in raw units.
    exp = t.export()["s"]
    torch.testing.assert_close(exp.encode(held[:64]), sae.encode(held[:64] * s), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(exp(held[:64]).x_hat, sae(held[:64] * s).x_hat / s, rtol=1e-4, atol=1e-4)
    assert set(stats["s"].parts) >= {"mse"} and stats["s"].l0 <= 6


def test_bf16_autocast_trains_as_well_as_fp32():
    """--autocast bf16 (what auto picks on AVX512-BF16/AMX CPUs): same quality, fp32 weights."""
    from sae_hooks.trainer import native_bf16

    x, held = _synthetic(256 * 60), _synthetic(2048, seed=1)
    fvu = {}
    for mode in ("none", "bf16"):
        t, sae = _trainer(autocast=mode)
        for batch in x.split(256):
            t.step({"h": batch})
        fvu[mode] = held_out_metrics(t.export()["s"], held)["fvu"]
        assert sae.W_enc.dtype == torch.float32 and t.autocast == mode
    assert fvu["bf16"] < 1.1 * fvu["none"] + 0.01, fvu
    auto, _ = _trainer(autocast="auto")
    assert auto.autocast == ("bf16" if native_bf16("cpu") else "none")
    assert not native_bf16("meta")


def test_dead_latents_are_counted_in_tokens_and_fed_to_auxk():
    t, sae = _trainer(steps=10, dead_window_tokens=512)
    x = _synthetic(2560)
    with torch.no_grad():
        sae.b_enc[:64] = -1e4  # latents 0..63 can never fire
    seen = []
    for batch in x.split(256):
        seen.append(t.step({"h": batch})["s"])
    assert (t.since_fired["s"][:64] >= 512).all()
    assert seen[-1].dead_frac >= 0.5 and "auxk" in seen[-1].parts
    assert seen[0].dead_frac == 0.0 and "auxk" not in seen[0].parts


def test_several_saes_share_a_batch_and_stay_independent():
    x = _synthetic(1024)
    a = make_sae("topk", 32, 128, k=6, seed=0)
    b = make_sae("topk", 32, 128, k=6, seed=0)
    c = make_sae("matching_pursuit", 32, 64, k=6, seed=1)
    # Sequential, so that "a" steps with all threads as "b" does alone: concurrent steps give each SAE a
    # share of the threads, and products split over other thread counts may round differently.
    multi = Trainer([Target("a", "h", a), Target("c", "h", c)], TrainConfig(concurrent=False), total_steps=4,
                    total_tokens=1024)
    alone = Trainer([Target("b", "h", b)], TrainConfig(), total_steps=4, total_tokens=1024)
    for batch in x.split(256):
        multi.step({"h": batch})
        alone.step({"h": batch})
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_step_stats_fvu_is_the_batch_fvu_before_the_update():
    """Each SAE's reported FVU = Σ‖x·s − x̂‖² / Σ‖x·s − mean‖² on its scaled batch, before its update
    (the variance is computed once per hook and shared by the SAEs that read it)."""
    import copy

    x = _synthetic(512)
    saes = [make_sae("topk", 32, 128, k=6, seed=0), make_sae("matryoshka", 32, 128, k=6, widths=(32, 128), seed=1)]
    t = Trainer([Target(f"s{i}", "h", sae) for i, sae in enumerate(saes)], TrainConfig(), total_steps=2,
                total_tokens=512)
    t.step({"h": x[:256]})
    before = [copy.deepcopy(sae) for sae in saes]
    stats = t.step({"h": x[256:]})
    xs = x[256:] * t.scales["h"]
    var = (xs - xs.mean(0)).pow(2).sum()
    for i, sae in enumerate(before):
        dead = t.since_fired[f"s{i}"] >= t.dead_window  # the mask the second step used
        x_hat = sae.training_loss(xs, dead).x_hat
        expected = float((x_hat - xs).pow(2).sum() / var)
        assert abs(stats[f"s{i}"].fvu - expected) <= 1e-5 * expected, (i, stats[f"s{i}"].fvu, expected)


def test_width_mismatch_names_both_widths():
    t, _ = _trainer()
    with pytest.raises(ValueError, match=r"d_in=32.*width 48"):
        t.step({"h": torch.randn(16, 48)})
    with pytest.raises(ValueError, match="absent"):
        t.step({"other": torch.randn(16, 32)})


def test_state_dict_roundtrip_continues_identically():
    x = _synthetic(256 * 8)
    t1, s1 = _trainer(steps=8)
    for batch in x.split(256)[:4]:
        t1.step({"h": batch})
    state = t1.state_dict()
    t2, s2 = _trainer(steps=8)
    t2.load_state_dict(state)
    for batch in x.split(256)[4:]:
        t1.step({"h": batch})
        t2.step({"h": batch})
    for p, q in zip(s1.parameters(), s2.parameters()):
        assert torch.equal(p, q)


def test_held_out_metrics_perfect_reconstruction():
    sae = make_sae("topk", 8, 8, k=8, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(8))
        sae.W_dec.copy_(torch.eye(8))
    x = torch.rand(100, 8) + 0.1
    m = held_out_metrics(sae, x)
    assert m["fvu"] < 1e-10 and m["l0"] == 8 and m["dead_frac"] == 0


# ---- live stream ---------------------------------------------------------------------------


def test_stream_keeps_masked_rows_in_fp32(tiny_hf, tiny_ids):
    from sae_hooks.activations import stream_activations
    from sae_hooks.data import TokenBatch

    ids = tiny_ids if tiny_ids.dim() == 2 else tiny_ids[None]
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    out = list(stream_activations(tiny_hf, ["resid_post.1", "resid_post.0"], [TokenBatch(ids, mask)] * 2,
                                  world_size=2, start_sequences=10))
    ref = tiny_hf.capture(ids, ["resid_post.1"])["resid_post.1"][mask]
    assert out[0].acts["resid_post.1"].dtype == torch.float32 and out[0].tokens == int(mask.sum())
    torch.testing.assert_close(out[0].acts["resid_post.1"], ref.float())
    assert [b.sequences for b in out] == [10 + 2 * ids.shape[0], 10 + 4 * ids.shape[0]]


class _NaNAdapter:
    def canonical(self, h):
        return h

    def capture(self, ids, names, stop=True):
        x = torch.randn(*ids.shape, 4)
        x[0, 1] = float("nan")
        return {n: x for n in names}


def test_nonfinite_rows_skipped_with_count_or_raise():
    from sae_hooks.activations import NonFiniteActivations, stream_activations
    from sae_hooks.data import TokenBatch

    ids = torch.zeros(50, 8, dtype=torch.long)
    batch = TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))
    with pytest.warns(UserWarning, match="Skipping 1 NaN"):
        b = next(stream_activations(_NaNAdapter(), ["h"], [batch]))
    assert b.nonfinite_rows == 1 and b.tokens == 399 and torch.isfinite(b.acts["h"]).all()
    with pytest.raises(NonFiniteActivations, match="nonfinite='skip'"):
        next(stream_activations(_NaNAdapter(), ["h"], [batch], nonfinite="raise"))
    small = TokenBatch(ids[:2], torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(NonFiniteActivations, match="max_skip_frac"):
        next(stream_activations(_NaNAdapter(), ["h"], [small]))


# ---- a run on a tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory, tiny_tokenizer):
    from tests.conftest import make_tiny

    root = tmp_path_factory.mktemp("tiny_train")
    model_dir = root / "model"
    make_tiny("llama").save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    paras = [" ".join(f"w{rng.randrange(29, 128)}" for _ in range(rng.randrange(20, 80))) for _ in range(400)]
    corpus.write_text("\n\n".join(paras))
    return {"model": str(model_dir), "corpus": str(corpus), "root": root}


TINY = dict(ctx=32, batch_tokens=256, tokens=8192, d_sae=128, k=4, dtype="fp32", eval_tokens=256, eval_ce_tokens=256,
            eval_every=10, checkpoint_every=8, progress="off", hooks=("resid_post.1",))
"""The tiny run the tests vary (a 3-layer d=64 llama, 32-token sequences, 8 sequences per step)."""


def tiny_config(env, out, **kw) -> RunConfig:
    return RunConfig(**{"model": env["model"], "corpus": env["corpus"], "out": str(out), **TINY, **kw})


def train_argv(env, out, *extra):
    """The flags of ``tiny_config(env, out)`` for ``sae-hooks train``, then ``extra``."""
    return ["--model", env["model"], "--corpus", env["corpus"], "--ctx", "32", "--batch-tokens", "256",
            "--tokens", "8192", "--d-sae", "128", "--k", "4", "--dtype", "fp32", "--eval-tokens", "256",
            "--eval-ce-tokens", "256", "--eval-every", "10", "--checkpoint-every", "8", "--progress", "off",
            "--out", str(out), "--json", *extra, *([] if "--hook" in extra or "--sae" in extra
                                                   else ["--hook", "resid_post.1"])]


def cli_config(argv) -> RunConfig:
    """The RunConfig ``sae-hooks train ARGV`` builds."""
    from sae_hooks.cli import train as cli_train
    from sae_hooks.cli._flags import config_from_args

    p = argparse.ArgumentParser()
    cli_train.add_arguments(p)
    p.add_argument("--json", action="store_true")
    return config_from_args(RunConfig, p.parse_args(argv))


def test_cli_flags_map_onto_run_config_and_take_its_defaults(tiny_env, tmp_path):
    import dataclasses

    from sae_hooks.cli._flags import field_docs

    assert cli_config([]) == RunConfig()  # every flag's default is the field's default
    assert cli_config(train_argv(tiny_env, tmp_path)) == tiny_config(tiny_env, tmp_path)
    many = cli_config(["--arch", "topk", "--arch", "standard", "--hook", "resid_post.0", "--no-shuffle", "--l1", "3",
                       "--sae", "topk:resid_post.1:k=8", "--dead-window", "500", "--resume", "--sequential"])
    assert many == RunConfig(archs=("topk", "standard"), hooks=("resid_post.0",), shuffle=False, l1_coef=3.0,
                             saes=("topk:resid_post.1:k=8",), dead_window=500, resume=True, sequential=True)
    docs = field_docs(RunConfig)
    assert all(docs.get(f.name) for f in dataclasses.fields(RunConfig))  # each field's docstring is its --help


def test_fingerprint_is_what_is_trained_in_canonical_spelling():
    import dataclasses

    a = RunConfig(hooks=("blocks.1.hook_resid_post",), saes=("topk:layers.1:k=8",), out="x", device="cpu",
                  eval_every=3, sequential=True, progress="off")
    b = RunConfig(hooks=["resid_post.1"], saes="topk:resid_post.1:k=8", lr=2e-3)
    assert a.fingerprint() == b.fingerprint()
    assert set(a.fingerprint()) == {f.name for f in dataclasses.fields(RunConfig)} - set(RunConfig.NOT_FINGERPRINTED)
    assert a.fingerprint()["shuffle"] is True and RunConfig(shuffle=False).fingerprint()["shuffle"] is False
    assert RunConfig(seed=1).fingerprint() != RunConfig().fingerprint()
    # run.json files written before the refactor name fields after their flags and predate shuffling
    legacy = {**{k: v for k, v in RunConfig(shuffle=False).fingerprint().items()
                 if k not in ("hooks", "archs", "saes", "l1_coef", "shuffle")},
              "hook": None, "arch": ["topk"], "sae": None, "l1": 5.0}
    assert RunConfig.upgrade_fingerprint(legacy) == RunConfig(shuffle=False).fingerprint()


@pytest.mark.parametrize("kw, message", [
    ({"d_sae": 0}, r"RunConfig.d_sae=0; it must be an int >= 1"),
    ({"ctx": 2}, r"RunConfig.ctx=2 leaves no next-token prediction to score"),
    ({"ctx": 1, "eval_ce_tokens": 0}, r"RunConfig.ctx=1; it must be an int >= 2"),
    ({"tokens": 100, "ctx": 128}, r"RunConfig.tokens=100 is less than one sequence"),
    ({"batch_tokens": 64}, r"RunConfig.batch_tokens=64 is less than one sequence of ctx=128"),
    ({"archs": ("tpk",)}, r"unknown SAE architecture 'tpk'"),
    ({"hooks": ("resid_psot.1",)}, r"Unknown hook kind 'resid_psot'"),
    ({"saes": ("topk",)}, r"ARCH:HOOK"),
    ({"saes": ("topk:resid_post.1:d_sae=0",)}, r"d_sae=0; it must be >= 1"),
    ({"lr": 0.0}, r"TrainConfig.lr=0.0"),
    ({"dtype": "int8"}, r"RunConfig.dtype='int8'; valid: auto, bf16, fp32, fp16"),
    ({"device": "gpu0"}, r"RunConfig.device='gpu0' is not a device"),
    ({"shuffle": "yes"}, r"RunConfig.shuffle='yes'; it must be True or False"),
    ({"keep_checkpoints": 0}, r"RunConfig.keep_checkpoints=0"),
])
def test_run_config_refuses_bad_values_naming_the_field(kw, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**kw)


def test_run_writes_a_complete_run_folder(tiny_env, tmp_path):
    out = tmp_path / "run"
    seen = []
    r = train(tiny_config(tiny_env, out, archs=("topk", "matching_pursuit"), hooks=("resid_post.0", "resid_post.1"),
                          tokens=4096, eval_every=8, checkpoint_every=4), on_step=seen.append)
    names = sorted(s.name for s in r.saes)
    assert names == ["matching_pursuit_resid_post.0", "matching_pursuit_resid_post.1", "topk_resid_post.0",
                     "topk_resid_post.1"]
    assert r.tokens_per_s > 0 and r.tokens > 0 and r.seconds > 0 and r.resumed_from_step is None
    assert r.steps == math.ceil(4096 // 32 / 8)
    assert [i.step for i in seen] == list(range(1, r.steps + 1)) and seen[-1].total_steps == r.steps
    for s in r.saes:
        assert 0 <= s.fvu < 1.5 and s.l0 <= 4 + 1e-6 and 0 <= s.dead_frac <= 1 and s.recaptured_zero is not None
        sae = load_sae(s.path)
        assert sae.metadata["hook_name"] == f"blocks.{s.hook[-1]}.hook_resid_post"
        assert "partial" not in sae.metadata["sae_hooks_train"]
    for f in ("run.json", "metrics.json", "summary.txt", "curves.png", "metrics.jsonl"):
        assert (out / f).is_file(), f
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(r.to_dict()))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["settings"] == tiny_config(tiny_env, out, archs=(
        "topk", "matching_pursuit"), hooks=("resid_post.0", "resid_post.1"), tokens=4096).fingerprint()
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == r.steps and any("eval/topk_resid_post.1/fvu" in rec for rec in log)
    assert (out / "checkpoints").is_dir() and not (out / ".sae_hooks.lock").exists()


def test_cli_train_prints_the_run_result_as_json(tiny_env, tmp_path, capsys):
    from sae_hooks.cli import main

    assert main(["train", *train_argv(tiny_env, tmp_path / "run", "--tokens", "2048", "--eval-every", "0")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["saes"][0]["name"] == "topk_resid_post.1" and result["steps"] == 2048 // 256


def test_sequential_flag_trains_the_same_saes(tiny_env, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # concurrent steps need >= 2 threads
    kw = dict(archs=("topk", "batchtopk"), tokens=4096, eval_every=0, checkpoint_every=0)
    try:
        runs = [train(tiny_config(tiny_env, tmp_path / name, sequential=seq, **kw))
                for name, seq in (("con", False), ("seq", True))]
    finally:
        torch.set_num_threads(threads)
    assert [r.sae_workers for r in runs] == [2, 1]
    # How the steps run is not part of the run's identity: a resume may switch it.
    assert "sequential" not in json.loads((tmp_path / "con" / "run.json").read_text())["settings"]
    with pytest.raises(ValueError, match="is finished"):
        train(tiny_config(tiny_env, tmp_path / "con", resume=True, sequential=True, **kw))
    for a, b in zip(*(r.saes for r in runs)):
        assert a.name == b.name and a.fvu == pytest.approx(b.fvu, rel=1e-3, abs=1e-4)
        wa, wb = load_sae(a.path).W_dec, load_sae(b.path).W_dec
        torch.testing.assert_close(wa, wb, rtol=1e-3, atol=1e-4)


def test_refuses_a_folder_holding_another_run(tiny_env, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_env, out, tokens=2048))
    with pytest.raises(ValueError, match="already holds another run.*--resume.*--overwrite"):
        train(tiny_config(tiny_env, out, tokens=2048))
    with pytest.raises(ValueError, match="other settings.*tokens"):
        train(tiny_config(tiny_env, out, tokens=4096, resume=True))
    r = train(tiny_config(tiny_env, out, tokens=4096, overwrite=True))
    assert r.tokens > 2048


def test_too_many_tokens_needs_cycle(tiny_env, tmp_path):
    from sae_hooks.data import CorpusError

    with pytest.raises(CorpusError, match="cycle") as err:
        train(tiny_config(tiny_env, tmp_path / "a", tokens=400000, eval_every=0, batch_tokens=4096, checkpoint_every=0))
    assert "saved" in str(err.value)  # stopped cleanly: what was trained is kept
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert 0 < saved["tokens"] < 400000
    assert load_sae(saved["saes"][0]["path"]).cfg.d_sae == 128
    r = train(tiny_config(tiny_env, tmp_path / "b", tokens=32768, cycle=True, eval_every=0, checkpoint_every=0,
                          eval_ce_tokens=0, batch_tokens=4096))
    assert r.tokens > 30000 and r.saes[0].ce_clean is None


def test_bad_sae_options_are_refused_before_anything_is_written(tiny_env, tmp_path, capsys):
    from sae_hooks.cli import main

    with pytest.raises(ValueError, match="no option 'kk'"):
        tiny_config(tiny_env, tmp_path / "c", saes=("topk:resid_post.1:kk=3",))
    assert main(["train", *train_argv(tiny_env, tmp_path / "c", "--sae", "topk:resid_post.1:k=0")]) == 1
    assert "k" in capsys.readouterr().err and not (tmp_path / "c").exists()  # refused once the model says the width


@pytest.mark.parametrize("arch", ["standard", "topk", "batchtopk", "jumprelu", "matryoshka", "matching_pursuit"])
def test_every_architecture_trains_from_the_cli(tiny_env, tmp_path, arch, capsys):
    from sae_hooks.cli import main

    argv = train_argv(tiny_env, tmp_path / arch, "--arch", arch, "--tokens", "1024", "--eval-every", "0",
                      "--checkpoint-every", "0", "--eval-ce-tokens", "64")
    assert main(["train", *argv]) == 0, capsys.readouterr().err
    saved = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["saes"][0]
    sae = load_sae(saved["path"])
    assert sae.architecture == arch and sae.cfg.d_sae == 128 and math.isfinite(saved["fvu"])


# ---- the training stream: shuffled by default (issue 20) -----------------------------------


@pytest.fixture(scope="module")
def smol_tokenizer():
    """The embedded model's tokenizer alone (the stdlib corpus is text a real BPE tokenizer reads back)."""
    from transformers import AutoTokenizer

    from sae_hooks.models import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir())


def _first_batch(cfg: RunConfig, tok) -> torch.Tensor:
    from sae_hooks.run import training_batches

    return next(training_batches(cfg, tok)).input_ids


def _pieces(ids: torch.Tensor, tok, min_tokens: int = 24) -> list[str]:
    """The texts of a batch between separators, long ones only, trimmed by a token at each end (a row
    boundary may cut a multi-byte character)."""
    out = []
    for row in ids.tolist():
        piece: list[int] = []
        for t in [*row, tok.eos_token_id]:
            if t != tok.eos_token_id:
                piece.append(t)
                continue
            if len(piece) >= min_tokens:
                out.append(tok.decode(piece[1:-1]))
            piece = []
    return out


def test_default_stream_does_not_start_with_the_alphabetically_first_files(smol_tokenizer):
    from sae_hooks.data import CorpusConfig, iter_documents

    docs = list(iter_documents(CorpusConfig(split="train")))  # sorted path order
    first_tenth = docs[: len(docs) // 10]
    shuffled = _first_batch(RunConfig(), smol_tokenizer)
    in_order = _first_batch(RunConfig(shuffle=False), smol_tokenizer)
    assert all(any(p in d for d in first_tenth) for p in _pieces(in_order, smol_tokenizer))  # the check finds them
    pieces = _pieces(shuffled, smol_tokenizer)
    found = [any(p in d for d in first_tenth) for p in pieces]
    # The batch starts elsewhere, and spans documents from all over the split: about a tenth of its pieces
    # may come from the first tenth of the files by chance (seed 0: 2 of 35), not all of them.
    assert len(pieces) >= 8 and not found[0] and sum(found) < len(found) / 3, found


def test_same_seed_same_order_other_seed_other_order(smol_tokenizer):
    a = _first_batch(RunConfig(seed=3), smol_tokenizer)
    assert torch.equal(a, _first_batch(RunConfig(seed=3), smol_tokenizer))
    assert not torch.equal(a, _first_batch(RunConfig(seed=4), smol_tokenizer))


def test_no_shuffle_reproduces_the_stream_order_of_before(smol_tokenizer):
    """--no-shuffle feeds the batches that sae-hooks train fed before documents were shuffled."""
    import itertools

    from sae_hooks.data import CorpusConfig, iter_batches
    from sae_hooks.run import training_batches

    cfg = RunConfig(shuffle=False)
    before = iter_batches(smol_tokenizer, CorpusConfig(source="stdlib", ctx=128), 32, max_tokens=1_000_000)
    for a, b in itertools.islice(zip(training_batches(cfg, smol_tokenizer), before), 3):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.mask, b.mask)
    cli_cfg = cli_config(["--no-shuffle"])
    assert cli_cfg == cfg and cli_cfg.fingerprint()["shuffle"] is False


def test_held_out_block_is_never_shuffled(smol_tokenizer):
    from sae_hooks.data import load_token_tensor
    from sae_hooks.run import held_out_corpus

    blocks = [load_token_tensor(smol_tokenizer, held_out_corpus(RunConfig(shuffle=sh, seed=seed)), 2048).input_ids
              for sh, seed in ((False, 0), (True, 0), (True, 7))]
    assert all(torch.equal(blocks[0], b) for b in blocks[1:])
    assert held_out_corpus(RunConfig(seed=7)).split == "eval" and not held_out_corpus(RunConfig()).shuffle_docs


@pytest.mark.slow
def test_real_model_short_run(tmp_path):
    """End to end on SmolLM2 at the default hook: a short run already explains most variance."""
    r = train(RunConfig(tokens=16384, d_sae=1152, eval_tokens=2048, eval_ce_tokens=512, eval_every=0, progress="off",
                        out=str(tmp_path / "run")))
    s = r.saes[0]
    assert s.hook == "resid_post.6" and s.arch == "topk" and s.l0 == pytest.approx(32)
    assert s.fvu < 0.9 and s.dead_frac < 0.5
    assert 1.0 < s.ce_clean < 4.0 and s.recaptured_zero > 0.0


def test_thread_pools_are_shared_per_process_name_and_size():
    from sae_hooks._threads import thread_pool

    a = thread_pool("test", 2)
    assert thread_pool("test", 2) is a and thread_pool("test", 3) is not a and thread_pool("other", 2) is not a
    assert sorted(a.map(lambda i: i * i, range(5))) == [0, 1, 4, 9, 16]
