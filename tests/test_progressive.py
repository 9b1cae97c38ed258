"""Progressive coding: importance and its fits, RSA, pruned views, the sweep and `sae-hooks progressive`."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from sae_hooks.data import TokenBatch
from sae_hooks.evaluate import evaluate
from sae_hooks.progressive import (
    MaskedLatents,
    SweepConfig,
    aggregate,
    default_sizes,
    fit_exponential,
    fit_power_law,
    latent_importance,
    matryoshka_sweep,
    prune_sweep,
    reduce_sae,
    rsa,
    sweep,
    write_outputs,
)
from sae_hooks.sae import make_sae

from .conftest import TINY_VOCAB, make_tiny

HOOK = "resid_post.1"
# Fields of an EvalReport that are numbers of the evaluation (not the SAE's name or the tensors).
NUMBERS = ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "recaptured_zero", "recaptured_mean",
           "delta_ce", "kl", "fvu", "l0", "dead_frac", "dense_frac", "tokens", "act_tokens")


def _tokens(seed: int, n: int = 6, ctx: int = 16) -> TokenBatch:
    ids = torch.randint(3, TINY_VOCAB, (n, ctx), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    return TokenBatch(ids, mask)


def _saes():
    """Two vanilla TopK 'seeds', a ReLU SAE and a Matryoshka SAE of one width, made with some spread in
    the decoder norms so that importances differ from frequencies."""
    out = {"topk_a": make_sae("topk", 64, 96, k=8, seed=0), "topk_b": make_sae("topk", 64, 96, k=8, seed=1),
           "relu": make_sae("standard", 64, 96, seed=2)}
    for i, sae in enumerate(out.values()):
        with torch.no_grad():
            scale = torch.linspace(0.3, 3.0, 96)[torch.randperm(96, generator=torch.Generator().manual_seed(i))]
            sae.W_dec.mul_(scale[:, None])
    mat = make_sae("matryoshka", 64, 96, k=8, widths=(16, 48, 96), seed=3)
    mat.set_threshold(0.05)
    return out, {"mat": mat}


# ---------------------------------------------------------------------------------------------
# Importance and fits


def test_importance_matches_its_definition():
    sae = make_sae("topk", 16, 48, k=4, seed=0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 48)[:, None])
    x = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))
    imp = latent_importance(sae, x, batch=33)
    z = sae.encode(x)
    assert torch.allclose(imp.importance, (z * sae.W_dec.norm(dim=-1)).pow(2).mean(0), rtol=1e-5, atol=1e-7)
    assert torch.allclose(imp.frequency, (z != 0).float().mean(0))
    assert imp.frequency.sum().item() == pytest.approx(4.0)


def test_fits_recover_a_known_exponent_and_rate():
    rank = torch.arange(1, 2001, dtype=torch.float64)
    shuffle = torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    power = 3.0 * rank ** -1.5
    p = fit_power_law(power[shuffle])  # order does not matter: the values are sorted
    assert p.exponent == pytest.approx(1.5, abs=1e-9) and p.intercept == pytest.approx(math.log(3.0), abs=1e-9)
    assert p.r2 == pytest.approx(1.0, abs=1e-12) and (p.n, p.rank_lo, p.rank_hi) == (2000, 1, 2000)
    expo = 2.0 * torch.exp(-0.004 * rank)
    e = fit_exponential(expo[shuffle])
    assert e.rate == pytest.approx(0.004, rel=1e-9) and e.intercept == pytest.approx(math.log(2.0), abs=1e-9)
    assert e.r2 == pytest.approx(1.0, abs=1e-12)
    # Each law is told apart from the other by R² over the same ranks.
    assert fit_power_law(power).r2 > fit_exponential(power).r2 + 0.1
    assert fit_exponential(expo).r2 > fit_power_law(expo).r2 + 0.1
    # Multiplicative noise: the exponent is still recovered within the noise's reach.
    noisy = power * torch.exp(0.2 * torch.randn(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert fit_power_law(noisy).exponent == pytest.approx(1.5, abs=0.05)
    # A rank range fits one regime of a broken power law (α = 0.5 up to rank 100, 2 after it).
    broken = torch.where(rank <= 100, rank ** -0.5, 100 ** 1.5 * rank ** -2.0)
    assert fit_power_law(broken, (1, 100)).exponent == pytest.approx(0.5, abs=1e-9)
    assert fit_power_law(broken, (101, 2000)).exponent == pytest.approx(2.0, abs=1e-9)
    # Zeros (dead latents) are dropped and counted out.
    with_dead = torch.cat([power[:100], torch.zeros(20, dtype=torch.float64)])
    assert fit_power_law(with_dead).n == 100 and fit_power_law(with_dead).rank_hi == 100


def test_fits_refuse_what_they_cannot_fit():
    with pytest.raises(ValueError, match="at least 3 positive"):
        fit_power_law(torch.tensor([1.0, 0.0, 0.0]), (1, 3))
    with pytest.raises(ValueError, match=r"1 <= lo < hi <= 10"):
        fit_exponential(torch.rand(10), (5, 20))
    with pytest.raises(ValueError, match="rank range"):
        fit_power_law(torch.rand(10), (0, 5))


# ---------------------------------------------------------------------------------------------
# RSA


def _rsa_reference(a, b):
    """Dense reference: Pearson correlation of the two condensed distance vectors."""
    da, db = torch.pdist(a.double()), torch.pdist(b.double())
    return float(torch.corrcoef(torch.stack([da, db]))[0, 1])


def test_rsa_self_is_one_and_rotation_invariant():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(70, 8, generator=g)
    b = a + 0.7 * torch.randn(70, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    assert rsa(a, a) == pytest.approx(1.0, abs=1e-12)
    # Rotating both leaves every distance as it was (up to float64 rounding of the products).
    assert rsa(a.double() @ q, b.double() @ q) == pytest.approx(rsa(a, b), abs=1e-10)
    assert rsa(a, 3 * a.double() @ q + 1) == pytest.approx(1.0, abs=1e-10)  # rotation, scale, shift of one
    assert rsa(a, b) == pytest.approx(_rsa_reference(a, b), abs=1e-10)
    assert rsa(a, b[:, :3]) == pytest.approx(_rsa_reference(a, b[:, :3]), abs=1e-10)  # widths may differ
    # Rows in blocks: any block size gives the same sums up to rounding.
    assert rsa(a, b, block=1) == pytest.approx(rsa(a, b, block=1000), abs=1e-12)
    assert abs(rsa(a, torch.randn(70, 8, generator=g))) < 0.3
    assert math.isnan(rsa(a, torch.zeros(70, 8)))  # no spread: undefined, not 0 or 1
    with pytest.raises(ValueError, match="same N >= 3"):
        rsa(a, a[:10])
    with pytest.raises(ValueError, match="block"):
        rsa(a, a, block=0)


# ---------------------------------------------------------------------------------------------
# Pruned views and the full-width identities


def test_views_keep_what_their_mode_says():
    sae = _saes()[0]["topk_a"]
    x = torch.randn(200, 64, generator=torch.Generator().manual_seed(3))
    order = torch.randperm(96, generator=torch.Generator().manual_seed(4))
    z = sae.encode(x)
    mask = reduce_sae(sae, order, 20, "mask")
    keep = order[:20].sort().values
    assert isinstance(mask, MaskedLatents) and mask.cfg.d_sae == 20
    assert torch.equal(mask.encode(x), z[:, keep])  # the full SAE's codes of the kept latents
    assert ((mask.encode(x) != 0).sum(-1) <= 8).all()
    reselect = reduce_sae(sae, order, 20, "reselect")
    # TopK picks k of the G survivors (then ReLU): at least as many active latents as the mask keeps.
    pre = sae._pre(x)[:, keep]
    top = pre.topk(8, dim=-1)
    assert torch.equal(reselect.encode(x), torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()))
    assert ((reselect.encode(x) != 0).sum(-1) >= (mask.encode(x) != 0).sum(-1)).all()
    assert ((reduce_sae(sae, order, 5, "reselect").encode(x) != 0).sum(-1) <= 5).all()
    relu = _saes()[0]["relu"]  # no competition between latents: both modes are one dictionary
    assert torch.equal(reduce_sae(relu, order, 30, "mask").encode(x), reduce_sae(relu, order, 30, "reselect").encode(x))
    for bad in (0, 97):
        with pytest.raises(ValueError, match=r"in \[1, d_sae=96\]"):
            reduce_sae(sae, order, bad, "mask")
    with pytest.raises(ValueError, match="valid: mask, reselect"):
        reduce_sae(sae, order, 4, "top")


def test_full_width_views_reproduce_the_saes_evaluations_exactly(tiny_hf):
    """Mask or reselect at G = d_sae, and a Matryoshka prefix at its full width, are the SAE: one
    evaluation alone each, same shapes and inputs, so every number is bitwise equal."""
    vanilla, mats = _saes()
    tokens = _tokens(0)
    sae, mat = vanilla["topk_a"], mats["mat"]
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0))
    ref = evaluate(tiny_hf, sae, tokens, hook=HOOK)
    for mode in ("mask", "reselect"):
        got = evaluate(tiny_hf, reduce_sae(sae, order, 96, mode), tokens, hook=HOOK)
        assert {f: getattr(got, f) for f in NUMBERS} == {f: getattr(ref, f) for f in NUMBERS}, mode
        assert torch.equal(got.fire_freq, ref.fire_freq)
    ref_m = evaluate(tiny_hf, mat, tokens, hook=HOOK)
    got_m = evaluate(tiny_hf, mat.prefix(96), tokens, hook=HOOK)
    assert {f: getattr(got_m, f) for f in NUMBERS} == {f: getattr(ref_m, f) for f in NUMBERS}


# ---------------------------------------------------------------------------------------------
# The sweep


def test_sweep_rows_summary_and_outputs(tiny_hf, tmp_path):
    vanilla, mats = _saes()
    tokens, imp_tokens = _tokens(0), _tokens(1)
    cfg = SweepConfig(sizes=(8, 16, 48, 96), rsa_tokens=40, batch_size=4)
    rep = sweep(tiny_hf, vanilla, mats, tokens, imp_tokens, hook=HOOK, config=cfg)
    assert len(rep.rows) == 3 * 2 * 4 + 3 and rep.sizes == (8, 16, 48, 96) and rep.hook == HOOK
    assert {(r.mode, r.size) for r in rep.rows if r.arch == "matryoshka"} == {("prefix", w) for w in (16, 48, 96)}
    assert rep.importance_tokens == int(imp_tokens.mask.sum()) and rep.rsa_tokens == 40
    for r in rep.rows:
        assert math.isfinite(r.l0) and math.isfinite(r.fvu) and -1 <= r.rsa_full <= 1 + 1e-9
        if r.size == 96:
            assert r.rsa_full == pytest.approx(1.0, abs=1e-9)
    # The full-size rows are the SAEs themselves; evaluated together with the others (stacked head
    # products of other shapes), so equal to evaluating them alone within rounding, not bitwise.
    for name, sae in {**vanilla, **mats}.items():
        ref = evaluate(tiny_hf, sae, tokens, hook=HOOK)
        for r in (r for r in rep.rows if r.sae == name and r.size == 96):
            assert r.fvu == pytest.approx(ref.fvu, rel=1e-6) and r.l0 == ref.l0
            assert r.ce_spliced == pytest.approx(ref.ce_spliced, rel=1e-6)
    # ReLU latents do not compete: reselect gives the mask's codes everywhere and is evaluated once.
    relu = {(r.mode, r.size): r for r in rep.rows if r.sae == "relu"}
    for size in (8, 16, 48):
        assert relu[("reselect", size)].same_codes_as == "mask"
        assert relu[("reselect", size)].fvu == relu[("mask", size)].fvu
    assert not any(r.same_codes_as for r in rep.rows if r.arch != "standard")
    topk_mask = [r for r in rep.rows if r.sae == "topk_a" and r.mode == "mask"]
    assert [r.l0 for r in topk_mask] == sorted(r.l0 for r in topk_mask)  # fewer kept latents, fewer active
    for size in (8, 16, 48):  # reselect keeps up to k active; the mask loses the pruned ones
        row = {r.mode: r for r in rep.rows if r.sae == "topk_a" and r.size == size}
        assert row["mask"].l0 <= row["reselect"].l0 <= 8
    # Summary: the two TopK SAEs are two seeds of one group.
    s = {(e["arch"], e["mode"], e["size"]): e for e in rep.summary()}
    pair = [r.fvu for r in rep.rows if r.arch == "topk" and r.mode == "mask" and r.size == 16]
    assert s[("topk", "mask", 16)]["n"] == 2 and s[("topk", "mask", 16)]["fvu"]["mean"] == pytest.approx(sum(pair) / 2)
    assert s[("topk", "mask", 16)]["fvu"]["sd"] == pytest.approx(abs(pair[0] - pair[1]) / math.sqrt(2))
    assert [f.sae for f in rep.fits] == ["topk_a", "topk_b", "relu"] and all(f.power_law.n > 2 for f in rep.fits)
    # Ranking: the pruned SAE keeps the G most important latents (measured on the importance tokens).
    order = rep.importances["relu"].importance.sort(descending=True, stable=True).indices
    assert torch.equal(reduce_sae(vanilla["relu"], order, 16, "mask").keep, order[:16].sort().values)
    out = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert out["summary"] and out["rows"][0]["l0"] is not None and "definitions" in out
    paths = write_outputs(rep, tmp_path / "prog")
    assert sorted(p.name for p in (tmp_path / "prog").iterdir()) == sorted(paths)
    for name in ("against_size.png", "against_l0.png", "importance.png"):
        assert (tmp_path / "prog" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| topk | mask | 16 | 2 |" in (tmp_path / "prog" / "report.md").read_text()
    with pytest.raises(ValueError, match="--overwrite"):
        write_outputs(rep, tmp_path / "prog")


def test_sweep_refuses_bad_inputs_before_running(tiny_hf):
    vanilla, mats = _saes()
    tokens = _tokens(0)
    with pytest.raises(ValueError, match=r"G=97 .* in \[1, d_sae=96\]"):
        sweep(tiny_hf, vanilla, mats, tokens, tokens, hook=HOOK, config=SweepConfig(sizes=(8, 97)))
    with pytest.raises(ValueError, match="int >= 1"):
        SweepConfig(sizes=(0,))
    with pytest.raises(ValueError, match="has no nested prefixes"):
        sweep(tiny_hf, {}, {"not_mat": vanilla["topk_a"]}, tokens, tokens, hook=HOOK)
    with pytest.raises(ValueError, match="different widths"):
        sweep(tiny_hf, {"small": make_sae("topk", 64, 48, k=8)}, mats, tokens, tokens, hook=HOOK)
    a, b = make_sae("topk", 64, 96, k=8, metadata={"hook_name": "resid_post.1"}), \
        make_sae("topk", 64, 96, k=8, metadata={"hook_name": "resid_post.2"})
    with pytest.raises(ValueError, match="different hook points"):
        sweep(tiny_hf, {"a": a, "b": b}, {}, tokens, tokens)
    empty = TokenBatch(tokens.input_ids, torch.zeros_like(tokens.mask))
    with pytest.raises(ValueError, match="no evaluated position"):
        sweep(tiny_hf, vanilla, mats, empty, tokens, hook=HOOK)


def test_sizes_and_aggregates():
    assert default_sizes(2304, (256, 576, 1152, 2304), 6) == (72, 144, 256, 288, 576, 1152, 2304)
    assert default_sizes(96, (), 3) == (24, 48, 96)
    a = aggregate([0.1, 0.2, float("nan"), 0.3])
    assert (a.mean, a.n) == (pytest.approx(0.2), 3) and a.sd == pytest.approx(0.1)
    assert math.isnan(aggregate([1.0]).sd) and aggregate([]).n == 0


def test_old_sweep_helpers(tiny_hf, tiny_ids):
    acts = tiny_hf.capture(tiny_ids, [HOOK])[HOOK][:, 1:].reshape(-1, 64)
    sae = make_sae("topk", 64, 96, k=8, seed=0)
    imp = latent_importance(sae, acts)
    res = prune_sweep(tiny_hf, sae, tiny_ids, [8, 32, 96], imp.importance, hook=HOOK)
    assert [g for g, _ in res] == [8, 32, 96] and [r.d_sae for _, r in res] == [8, 32, 96]
    mat = make_sae("matryoshka", 64, 96, k=8, widths=(16, 48, 96), seed=0)
    out = matryoshka_sweep(tiny_hf, mat, tiny_ids, hook=HOOK)
    assert [w for w, _ in out] == [16, 48, 96] and out[0][1].ce_clean == out[2][1].ce_clean
    with pytest.raises(ValueError, match=r"in \[1, d_sae=96\]"):
        prune_sweep(tiny_hf, sae, tiny_ids, [200], imp.importance, hook=HOOK)
    with pytest.raises(ValueError, match="nested prefixes"):
        matryoshka_sweep(tiny_hf, sae, tiny_ids, hook=HOOK)


# ---------------------------------------------------------------------------------------------
# The command line, on a tiny model saved to a folder


WORDS = [chr(97 + i) for i in range(26)] + [f"w{i}" for i in range(29, TINY_VOCAB)]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tiny_model")
    make_tiny("llama").save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    g = torch.Generator().manual_seed(5)
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    paras = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (60,), generator=g)) for _ in range(40)]
    path.write_text("\n\n".join(paras))
    return path


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as `sae-hooks train` leaves it: run.json and saes/<name>/, two hooks."""
    vanilla, mats = _saes()
    entries = []
    for hook in ("resid_post.1", "resid_post.2"):
        for name, sae in {**vanilla, **mats}.items():
            sae.metadata = {"hook_name": hook}
            full = f"{name}_{hook}"
            sae.save(tmp_path / "run" / "saes" / full)
            entries.append({"name": full, "arch": sae.architecture, "hook": hook, "d_sae": 96})
    (tmp_path / "run" / "run.json").write_text(json.dumps({"settings": {"ctx": 16}, "saes": entries}))
    return tmp_path / "run"


def _cli(capsys, argv):
    from sae_hooks.cli import main

    rc = main(argv + ["--json"])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def test_cli_help_lists_the_flags(capsys):
    from sae_hooks.cli import main

    with pytest.raises(SystemExit) as e:
        main(["progressive", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and all(f in text for f in ("--run", "--vanilla", "--matryoshka", "--modes", "--fit-ranks"))


def test_cli_on_a_run_folder(capsys, tiny_model_dir, corpus, run_dir, tmp_path):
    common = ["--model", str(tiny_model_dir), "--corpus", str(corpus), "--split", "all", "--tokens", "320",
              "--importance-tokens", "320", "--rsa-tokens", "64", "--batch-size", "4"]
    out_dir = tmp_path / "prog"
    rc, out, _ = _cli(capsys, ["progressive", "--run", str(run_dir), "--hook", "resid_post.2", *common,
                               "--sizes", "8", "48", "96", "--modes", "mask", "--out", str(out_dir)])
    assert rc == 0, out
    # 20 sequences of 16; position 0 and special tokens are not evaluated.
    assert out["hook"] == "resid_post.2" and out["ctx"] == 16 and 250 < out["act_tokens"] <= 20 * 15
    assert sorted(out["vanilla"]) == ["relu_resid_post.2", "topk_a_resid_post.2", "topk_b_resid_post.2"]
    assert len(out["rows"]) == 3 * 3 + 3 and {r["mode"] for r in out["rows"]} == {"mask", "prefix"}
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(out["files"])
    # Several hook points in the run and none chosen: one clear error, nothing written.
    rc, err, stderr = _cli(capsys, ["progressive", "--run", str(run_dir), *common, "--out", str(tmp_path / "x")])
    assert rc == 1 and "several hook points" in err["error"] and not (tmp_path / "x").exists()
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert errors == [f"sae-hooks progressive: error: {err['error']}"]


def test_cli_bad_inputs_each_one_error_and_nothing_written(capsys, tiny_model_dir, corpus, tmp_path):
    vanilla, mats = _saes()
    for name, sae in {**vanilla, **mats}.items():
        sae.metadata = {"hook_name": HOOK}
        sae.save(tmp_path / name)
    other = make_sae("topk", 64, 96, k=8, metadata={"hook_name": "resid_post.2"})
    other.save(tmp_path / "other_hook")
    narrow = make_sae("topk", 64, 48, k=8, metadata={"hook_name": HOOK})
    narrow.save(tmp_path / "narrow")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    common = ["--model", str(tiny_model_dir), "--corpus", str(corpus), "--split", "all", "--ctx", "16",
              "--tokens", "160", "--importance-tokens", "160", "--rsa-tokens", "32"]
    good = ["--vanilla", str(tmp_path / "topk_a"), "--matryoshka", str(tmp_path / "mat")]
    cases = {
        "G = 0": (good + ["--sizes", "0", "8"], "G=0"),
        "G > d_sae": (good + ["--sizes", "8", "97"], r"G=97 .* in \[1, d_sae=96\]"),
        "not Matryoshka": (["--vanilla", str(tmp_path / "topk_a"), "--matryoshka", str(tmp_path / "relu")],
                           "has no nested prefixes"),
        "other hook": (good + ["--vanilla", str(tmp_path / "other_hook")], "different hook points"),
        "other width": (good + ["--vanilla", str(tmp_path / "narrow")], "different widths"),
        "empty corpus": (good + ["--corpus", str(empty)], "empty.txt"),
        "no SAE": ([], "No SAE given"),
    }
    for i, (case, (argv, expected)) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        rc, err, stderr = _cli(capsys, ["progressive", *common, *argv, "--out", str(out)])
        assert rc == 1, case
        assert re.search(expected, err["error"]), (case, err["error"])
        assert [line for line in stderr.splitlines() if "error" in line] == \
            [f"sae-hooks progressive: error: {err['error']}"], (case, stderr)
        assert not out.exists(), case


PY = ["def f(a, b):\n    # add\n    return a + b\n", "class K:\n    \"\"\"Doc.\"\"\"\n    x = 1\n",
      "import os\nfor i in range(3):\n    if i:\n        print(i)\n"]


def test_cli_interp_scores_for_every_size(capsys, tiny_model_dir, tmp_path):
    """With --interp-tokens every reduced SAE gets the offline interpretability scores (Python labels)."""
    vanilla, mats = _saes()
    for name in ("topk_a", "mat"):
        sae = {**vanilla, **mats}[name]
        sae.metadata = {"hook_name": HOOK}
        sae.save(tmp_path / name)
    path = tmp_path / "py.jsonl"
    path.write_text("".join(json.dumps({"text": PY[i % 3] * (1 + i % 4)}) + "\n" for i in range(160)))
    rc, out, _ = _cli(capsys, ["progressive", "--vanilla", str(tmp_path / "topk_a"),
                               "--matryoshka", str(tmp_path / "mat"), "--model", str(tiny_model_dir),
                               "--corpus", str(path), "--split", "all", "--ctx", "32", "--tokens", "640",
                               "--importance-tokens", "320", "--rsa-tokens", "64", "--sizes", "16", "96",
                               "--modes", "mask", "--interp-tokens", "1280", "--out", str(tmp_path / "prog")])
    assert rc == 0, out
    for row in out["rows"]:
        assert 0 <= row["interp"]["best_latent_f1"] <= 1 and "probe_f1_1" in row["interp"], row
    assert "interp_best_latent_f1" in out["summary"][0]
    assert "best_latent_f1" in (tmp_path / "prog" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# The tutorial, end to end on the real embedded model (slow; still run in CI)


@pytest.mark.slow
def test_tutorial_small_runs_end_to_end(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tutorials" / "progressive_coding.py"
    env = dict(os.environ, PYTHONPATH=str(script.parents[1]))
    proc = subprocess.run([sys.executable, str(script), "--small", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    data = json.loads((out / "claims.json").read_text())
    assert [(c["claim"], c["hook"]) for c in data["claims"]] == [(str(i), "resid_post.6") for i in range(1, 5)]
    assert all(c["reproduced"] in ("yes", "no", "not measured") for c in data["claims"])
    report = json.loads((out / "progressive_resid_post.6" / "report.json").read_text())
    assert {f["arch"] for f in report["fits"]} == {"topk", "standard"} and len(report["fits"]) == 4  # 2 seeds
    full = [r for r in report["rows"] if r["size"] == report["d_sae"] and r["arch"] == "topk"]
    assert full and all(r["l0"] == pytest.approx(16.0) and r["rsa_full"] == pytest.approx(1.0) for r in full)
    for name in ("against_size.png", "against_l0.png", "importance.png", "report.md"):
        assert (out / "progressive_resid_post.6" / name).is_file(), name
    assert "| claim | paper's statement |" in (out / "claims.md").read_text()
    # A second run reuses the finished training run instead of training again.
    again = subprocess.run([sys.executable, str(script), "--small", "--out", str(out)], capture_output=True, text=True,
                           env=env, timeout=3600)
    assert again.returncode == 0 and "reusing the finished training run" in again.stdout
