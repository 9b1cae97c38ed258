"""The hierarchical toy, its scorer, the toy experiment and `sae-hooks synth`; the digits loader."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch

from sae_hooks.synthetic import (HierarchicalToy, SynthConfig, ToyConfig, arch_options, match_directions,
                                 parse_condition, run_synth, score_codes, score_oracle)


@pytest.mark.parametrize("level", [0, 1, 2.5, 5, 9])
def test_sibling_cosines_equal_the_level_and_parents_are_orthogonal_to_children(level):
    toy = HierarchicalToy(ToyConfig(level=level, seed=3))
    d = toy.directions.double()
    g = d @ d.T
    assert torch.allclose(d.norm(dim=-1), torch.ones(20, dtype=torch.float64), atol=1e-6)
    for group in toy.sibling_groups():
        for i in group:
            for j in group:
                if i != j:
                    assert abs(float(g[i, j]) - 0.1 * level) < 1e-6, (i, j)
    for p, children in toy.children.items():
        assert float(g[p, children].abs().max()) < 1e-6
    # Every other pair (a child against another parent's children, leaves, ...) is orthogonal too.
    check = toy.check()
    assert check.other_max < 1e-6 and check.parent_child_max < 1e-6
    assert abs(check.sibling_min - 0.1 * level) < 1e-6 and abs(check.sibling_max - 0.1 * level) < 1e-6


def test_the_default_tree_is_the_papers():
    toy = HierarchicalToy()
    assert toy.cfg.n_features == 20 and toy.directions.shape == (20, 20)
    assert toy.parents == [0, 4, 8] and toy.children[4] == [5, 6, 7] and toy.leaves == list(range(12, 20))
    assert torch.allclose(toy.top_probs, torch.tensor([0.2] * 3 + [0.05] * 8, dtype=torch.float64))
    assert torch.allclose(toy.child_probs, torch.tensor([0.2, 0.2, 0.2, 0.4], dtype=torch.float64))


def test_feature_frequencies_match_the_tree_within_sampling_error():
    toy = HierarchicalToy(ToyConfig(level=2))
    n = 100_000
    b = toy.sample(n, torch.Generator().manual_seed(0))
    active = b.codes > 0
    freq = active.double().mean(0)
    p = toy.frequencies
    se = (p * (1 - p) / n).sqrt()
    assert bool(((freq - p).abs() < 5 * se).all()), (freq - p) / se
    # Exactly one top-level feature per sample; a child only ever with its own parent.
    assert bool((active[:, toy.top_level].sum(-1) == 1).all())
    for parent, children in toy.children.items():
        with_child = active[:, children].any(-1)
        assert bool(active[with_child, parent].all())
        assert bool((active[:, children].sum(-1) <= 1).all())
    # Mean L0 of the truth: 1 + 3 · 0.2 · 3 · 0.2 = 1.36.
    assert abs(float(active.sum(-1).double().mean()) - 1.36) < 5 * math.sqrt(0.36 * 0.64 / n)
    assert torch.equal(b.hierarchical, active[:, [c for cs in toy.children.values() for c in cs]].any(-1))


def test_magnitudes_noise_and_tied_magnitudes():
    n = 50_000
    b = HierarchicalToy(ToyConfig(sigma=0.5, magnitude_mean=2.0)).sample(n, torch.Generator().manual_seed(1))
    mags = b.codes[b.codes > 0]
    assert abs(float(mags.mean()) - 2.0) < 0.02 and abs(float(mags.std()) - 0.5) < 0.02
    assert torch.equal(b.x, b.signal)  # no noise asked for
    noisy = HierarchicalToy(ToyConfig(noise=0.3)).sample(n, torch.Generator().manual_seed(2))
    assert abs(float((noisy.x - noisy.signal).pow(2).sum(-1).mean()) - 0.09) < 0.005
    tied = HierarchicalToy(ToyConfig(tied_magnitudes=True)).sample(2_000, torch.Generator().manual_seed(3))
    rows = tied.hierarchical.nonzero().flatten()
    assert rows.numel() > 0
    assert torch.equal(tied.codes[rows, tied.top[rows]], tied.codes[rows, tied.child[rows]])


def test_sampling_is_reproducible_from_the_generator():
    toy = HierarchicalToy()
    a = toy.sample(500, torch.Generator().manual_seed(7))
    b = toy.sample(500, torch.Generator().manual_seed(7))
    assert torch.equal(a.x, b.x) and torch.equal(a.codes, b.codes)
    assert not torch.equal(HierarchicalToy(ToyConfig(seed=1)).directions, toy.directions)
    sizes = [bt.x.shape[0] for bt in toy.batches(1_050, 500, torch.Generator().manual_seed(0))]
    assert sizes == [500, 500, 50]


def test_superposition_gives_fewer_dimensions_than_features():
    toy = HierarchicalToy(ToyConfig(d_model=12, level=1))
    assert toy.directions.shape == (20, 12)
    assert torch.allclose(toy.directions.norm(dim=-1), torch.ones(20), atol=1e-6)
    assert toy.check().other_max > 0.01  # 20 directions in 12 dimensions cannot all be orthogonal
    assert toy.sample(10, torch.Generator().manual_seed(0)).x.shape == (10, 12)


@pytest.mark.parametrize("knobs, field", [
    ({"level": 10}, "level"), ({"level": -1}, "level"), ({"level": float("nan")}, "level"),
    ({"sigma": -0.1}, "sigma"), ({"magnitude_mean": 0}, "magnitude_mean"),
    ({"n_children": 0}, "n_children"), ({"n_parents": -1}, "n_parents"), ({"n_leaves": 1.5}, "n_leaves"),
    ({"parent_prob": 0.5}, "parent_prob"), ({"child_prob": 0.4}, "child_prob"), ({"child_prob": -0.1}, "child_prob"),
    ({"n_leaves": 0}, "parent_prob"), ({"d_model": 1}, "d_model"), ({"noise": -1.0}, "noise"),
    ({"tied_magnitudes": "yes"}, "tied_magnitudes"), ({"seed": 1.0}, "seed"),
])
def test_knobs_out_of_range_give_errors_naming_the_knob(knobs, field):
    with pytest.raises(ValueError, match=rf"ToyConfig\.{field}=.*valid"):
        ToyConfig(**knobs)


def test_too_small_a_top_level_is_refused():
    with pytest.raises(ValueError, match="n_parents \\+ n_leaves = 1"):
        ToyConfig(n_parents=0, n_leaves=1)
    ToyConfig(n_parents=2, n_leaves=0, parent_prob=0.5)  # every sample picks a parent: valid


def test_the_true_dictionary_scores_mcc_1_and_no_absorption():
    toy = HierarchicalToy(ToyConfig(level=4))
    b = toy.sample(5_000, torch.Generator().manual_seed(0))
    s = score_oracle(toy, b)
    assert s.mcc == pytest.approx(1.0, abs=1e-6)
    assert s.absorption == 0.0 and s.flat_err == 0.0 and s.hier_err == 0.0 and s.fvu == 0.0
    assert s.l0 == pytest.approx(float((b.codes > 0).sum(-1).double().mean()))
    # The truth's own geometry: siblings at 0.4, and the pairs a sample uses (parent, child) orthogonal.
    assert s.coherence == pytest.approx(0.4, abs=1e-5) and s.fired_coherence == pytest.approx(0.4, abs=1e-5)
    assert s.support_cos == pytest.approx(0.0, abs=1e-5)
    noisy = HierarchicalToy(ToyConfig(noise=0.2))
    nb = noisy.sample(5_000, torch.Generator().manual_seed(0))
    ns = score_oracle(noisy, nb)
    assert ns.mcc == pytest.approx(1.0, abs=1e-6) and ns.clean_err == 0.0 and ns.flat_err > 0


def test_two_swapped_atoms_still_score_mcc_1():
    toy = HierarchicalToy()
    b = toy.sample(3_000, torch.Generator().manual_seed(0))
    perm = torch.arange(20)
    perm[[4, 13]] = perm[[13, 4]]  # a parent and a leaf trade places
    s = score_codes(b.codes[:, perm], b.signal, toy.directions[perm], toy, b)
    assert s.mcc == pytest.approx(1.0, abs=1e-6) and s.absorption == 0.0
    m = match_directions(toy.directions[perm], toy.directions)
    assert m.latent[4] == 13 and m.latent[13] == 4


def test_mcc_below_1_for_wrong_directions_and_unmatched_features_count_zero():
    toy = HierarchicalToy()
    rand = torch.randn(20, 20, generator=torch.Generator().manual_seed(0))
    assert match_directions(rand, toy.directions).mcc < 0.7
    half = match_directions(toy.directions[:10], toy.directions)  # 10 latents for 20 features
    assert half.mcc == pytest.approx(0.5, abs=1e-6)
    assert int((half.latent >= 0).sum()) == 10
    flipped = match_directions(-toy.directions, toy.directions)  # signs matter: codes are >= 0
    assert flipped.mcc < 0.1


def test_absorption_counts_a_silent_parent_on_hierarchical_samples():
    toy = HierarchicalToy()
    b = toy.sample(4_000, torch.Generator().manual_seed(0))
    codes = b.codes.clone()
    hier = b.hierarchical
    codes[hier, b.top[hier]] = 0  # the parent's latent never fires when a child is present
    s = score_codes(codes, b.signal, toy.directions, toy, b)
    assert s.absorption == 1.0 and s.mcc == pytest.approx(1.0, abs=1e-6)
    only_first = codes.clone()
    only_first[hier, b.top[hier]] = b.codes[hier, b.top[hier]]
    parent0 = hier & (b.top == 0)
    only_first[parent0, 0] = 0  # only parent 0 absorbed
    s2 = score_codes(only_first, b.signal, toy.directions, toy, b)
    assert s2.absorption == pytest.approx(float(parent0.sum()) / float(hier.sum()))


def test_parse_condition_and_its_errors():
    name, cfg = parse_condition("sup:d_model=12,noise=0.1,tied_magnitudes=true")
    assert name == "sup" and cfg.d_model == 12 and cfg.noise == 0.1 and cfg.tied_magnitudes is True
    name, cfg = parse_condition("level=5", ToyConfig(sigma=0.5))
    assert cfg.level == 5 and cfg.sigma == 0.5 and "level=5" in name
    with pytest.raises(ValueError, match="KEY one of"):
        parse_condition("x:seed=3")  # seeds come from the run, not the condition
    with pytest.raises(ValueError, match="not a valid int"):
        parse_condition("x:n_leaves=two")
    with pytest.raises(ValueError, match="ToyConfig.level"):
        parse_condition("x:level=11")


def test_synth_config_and_arch_options():
    assert arch_options("matryoshka", 40, SynthConfig()) == {"k": 2, "widths": (4, 10, 20, 40)}
    assert arch_options("standard", 40, SynthConfig(l1_coef=0.5)) == {"l1_coef": 0.5}
    with pytest.raises(ValueError, match="unknown or unsupported"):
        SynthConfig(archs=("topk", "mlp"))
    with pytest.raises(ValueError, match="SynthConfig.k"):
        SynthConfig(k=0)
    with pytest.raises(ValueError, match="k=3 exceeds d_sae=2"):
        run_synth([("a", ToyConfig())], (2,), SynthConfig(k=3), seeds=1, workers=1)


def test_run_synth_trains_through_the_trainer_and_summarises(tmp_path):
    cfg = SynthConfig(archs=("topk", "matching_pursuit"), n_train=3_000, n_eval=1_000, batch_size=250)
    res = run_synth([("paper", ToyConfig()), ("sup", ToyConfig(d_model=12, noise=0.1))], (20,), cfg, seeds=2, workers=1)
    assert len(res.rows) == 2 * 2 * 3  # conditions × seeds × (oracle + 2 archs)
    summ = {(s.condition, s.arch): s for s in res.summary()}
    assert summ[("paper", "oracle")].mean["mcc"] == pytest.approx(1.0, abs=1e-6)
    assert summ[("paper", "oracle")].n_seeds == 2
    mp = summ[("sup", "matching_pursuit")]
    assert -1 <= mp.mean["mcc"] <= 1 and mp.mean["l0"] <= 2 + 1e-9 and mp.sd["mcc"] >= 0
    assert summ[("paper", "topk")].mean["l0"] <= 2 + 1e-9
    oracle_row = next(r for r in res.rows if r.arch == "oracle" and r.condition == "paper")
    assert oracle_row.fired_babel[0] == pytest.approx(0.1, abs=1e-5)  # the truth: siblings at cosine 0.1
    assert oracle_row.babel[1] == pytest.approx(0.2, abs=1e-5) and math.isnan(oracle_row.babel[25])  # 20 atoms
    assert summ[("paper", "oracle")].mean["fired_mu1_2"] == pytest.approx(0.2, abs=1e-5)
    table = res.table()
    assert "| paper | 20 | topk |" in table and "±" in table and "MCC =" in table
    res.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    json.dumps(res.to_dict())


def test_cli_synth_writes_table_plot_and_json(tmp_path, capsys):
    from sae_hooks.cli import main

    rc = main(["synth", "--arch", "standard", "--arch", "matching_pursuit", "--d-sae", "20", "--n-train", "2000",
               "--n-eval", "500", "--batch-size", "250", "--seeds", "1", "--workers", "1", "--condition", "a:level=2",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {s["arch"] for s in out["summary"]} == {"oracle", "standard", "matching_pursuit"}
    assert out["conditions"][0]["level"] == 2.0
    for name in ("results.json", "table.md", "plot.png"):
        assert (tmp_path / name).is_file()
    assert "wall" in (tmp_path / "table.md").read_text()


def test_cli_synth_bad_knob_is_one_clear_line(capsys):
    from sae_hooks.cli import main

    assert main(["synth", "--level", "12", "--seeds", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ToyConfig.level=12.0" in err[0] and "[0, 10)" in err[0]


def test_digits_load_offline(monkeypatch):
    from sae_hooks.synthetic.digits import load_digits_data

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    data = load_digits_data()
    assert data.train.shape == (1438, 64) and data.test.shape == (359, 64)
    assert float(data.train.min()) >= 0 and float(data.train.max()) <= 1
    assert set(data.test_labels.tolist()) == set(range(10))
    again = load_digits_data()
    assert torch.equal(again.test, data.test)  # the split is seeded
    with pytest.raises(ValueError, match="test_frac"):
        load_digits_data(test_frac=1.5)


def test_run_digits_small(tmp_path):
    from sae_hooks.synthetic.digits import DigitsConfig, run_digits

    cfg = DigitsConfig(d_sae=32, ks=(2, 4), l1_coefs=(1.0,), inference_ks=(1, 2, 4, 8), adaptive_from=2, epochs=2,
                       batch_size=128, s_max=8)
    res = run_digits(cfg, seeds=1)
    names = {r.name for r in res.rows}
    assert names == {"topk_k2", "topk_k4", "mp_k2", "mp_k4", "relu_l1=1"}
    adaptive = sorted((r for r in res.rows if r.infer_k is not None), key=lambda r: r.infer_k)
    for r in adaptive:
        assert r.l0 <= r.infer_k + 1e-9
    # Each MP step lowers every residual (Tropp): more inference steps never raise the test error.
    fvus = [r.fvu for r in adaptive]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(fvus, fvus[1:])), fvus
    for r in res.rows:
        assert 0 <= r.coherence <= 1 + 1e-6 and len(r.babel) == 8
    assert set(res.atoms) == {"relu_l1=1", "topk_k2", "mp_k2"}
    res.plot_curve(tmp_path / "c.png")
    res.plot_atoms(tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 5_000
    assert "mp_k2" in res.table()
    with pytest.raises(ValueError, match="adaptive_from"):
        DigitsConfig(ks=(2,), adaptive_from=8)


def test_cli_synth_exposes_every_toy_knob():
    import argparse
    import dataclasses

    from sae_hooks.cli.synth import TOY_KNOBS, add_arguments

    assert set(TOY_KNOBS) == {f.name for f in dataclasses.fields(ToyConfig)} - {"seed"}  # seeds come from --seeds
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--level", "3", "--n-parents", "2", "--d-model", "12", "--tied-magnitudes"])
    assert (args.level, args.n_parents, args.d_model, args.tied_magnitudes, args.noise) == (3.0, 2, 12, True, 0.0)
    assert isinstance(args.n_parents, int) and isinstance(args.level, float)
