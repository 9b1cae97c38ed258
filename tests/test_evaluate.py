"""Evaluation: exact anchors (identity, keep_error, zero SAE), the shared-prefix path equal to plain
forwards, HF vs TransformerLens, several SAEs at once, every architecture, metadata and width
checks, and the report's JSON form. Plus one slow end-to-end run on the real SmolLM2."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sae_hooks import logits
from sae_hooks.data import TokenBatch, make_mask
from sae_hooks.evaluate import MetadataMismatchWarning, evaluate, evaluate_many, inference_view
from sae_hooks.sae import make_sae

from .test_splice import identity_sae, random_sae, zero_sae

KEYS = ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "recaptured_zero", "recaptured_mean",
        "delta_ce", "kl", "fvu", "l0", "tokens")


@pytest.fixture
def tokens(tiny_tokenizer):
    ids = torch.randint(3, 128, (10, 16), generator=torch.Generator().manual_seed(3))
    ids[2, 5] = 2  # a special token: excluded like position 0
    return TokenBatch(ids, make_mask(ids, tiny_tokenizer))


def test_identity_sae_gives_zero_delta_ce_exactly(tiny_hf, tokens):
    r = evaluate(tiny_hf, identity_sae(), tokens, hook="resid_post.1", batch_size=4)
    assert r.delta_ce == 0.0 and r.ce_spliced == r.ce_clean
    assert r.kl == 0.0 and r.fvu == 0.0 and r.recaptured_zero == 1.0 and r.recaptured_mean == 1.0
    assert r.tokens == int(tokens.mask[:, :-1].sum()) and r.act_tokens == int(tokens.mask.sum())
    assert torch.equal(r.loss_delta[tokens.mask[:, :-1]], torch.zeros(r.tokens))
    assert r.loss_delta[:, 0].isnan().all()  # position 0 is not evaluated


def test_keep_error_spliced_equals_clean(tiny_hf, tokens):
    r = evaluate(tiny_hf, random_sae(), tokens, hook="resid_post.1", keep_error=True)
    assert r.ce_spliced == r.ce_clean and r.kl == 0.0
    assert r.fvu > 0  # reconstruction metrics still describe the SAE itself


def test_zero_sae_equals_zero_ablation(tiny_hf, tokens):
    r = evaluate(tiny_hf, zero_sae(), tokens, hook="resid_post.1")
    assert r.ce_spliced == r.ce_zero_ablated
    assert r.recaptured_zero == 0.0
    assert r.l0 == 0.0 and r.dead_frac == 1.0


def test_zero_ablation_matches_a_hand_written_hook(tiny_hf, tokens):
    ids, mask = tokens
    logits = tiny_hf.forward(ids, hooks={"resid_post.1": lambda x: torch.where(mask[..., None], 0.0, x)})
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), ids[:, 1:].reshape(-1), reduction="none")
    expected = float(ce[mask[:, :-1].reshape(-1)].double().mean())
    r = evaluate(tiny_hf, random_sae(), tokens, hook="resid_post.1")
    # evaluate takes the log-sum-exp over vocabulary tiles (combined in float64), the reference one
    # fp32 log-softmax over each row: equal to fp32 rounding.
    assert r.ce_zero_ablated == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("hook", ["resid_post.1", "resid_post.2", "resid_pre.0", "resid_pre.2", "mlp_out.1", "attn_out.0"])
def test_shared_prefix_path_equals_plain_forwards(tiny_hf, tokens, hook):
    # resid_post.2 is the last block's output (resumes at the final norm), resid_pre.0 the first
    # block's input; mlp_out / attn_out rerun the block that holds them.
    sae = random_sae()
    a = evaluate(tiny_hf, sae, tokens, hook=hook, batch_size=3)
    b = evaluate(tiny_hf, sae, tokens, hook=hook, batch_size=3, shared_prefix=False)
    # The shared path applies the head to vocabulary tiles of the final hidden state, the plain one
    # slices full logits: equal up to fp32 rounding of the head product.
    for k in KEYS + ("dead_frac", "dense_frac"):
        assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-6, abs=1e-7), k
    assert torch.allclose(a.loss_delta.nan_to_num(), b.loss_delta.nan_to_num(), rtol=1e-5, atol=1e-5)
    assert a.ce_zero_ablated != a.ce_clean and a.kl > 0


@torch.no_grad()
def _reference_metrics(adapter, sae, tokens, hook):
    """CE of the four conditions and KL, from full-vocabulary float64 log-softmax of plain forwards."""
    from sae_hooks.splice import reconstruct

    ids, mask = tokens
    lm = mask[:, :-1]
    x = adapter.capture(ids, [hook])[hook]
    spliced = reconstruct(sae, x, mask=mask).out
    mean = x[mask].double().mean(0).float()
    fns = {"clean": None, "spliced": lambda a: spliced, "zero": lambda a: torch.where(mask[..., None], 0.0, a),
           "mean": lambda a: torch.where(mask[..., None], mean, a)}
    logp = {c: adapter.forward(ids, hooks=None if fn is None else {hook: fn})[:, :-1].double().log_softmax(-1)
            for c, fn in fns.items()}
    ce = {c: float(-lp.gather(-1, ids[:, 1:, None])[..., 0][lm].mean()) for c, lp in logp.items()}
    kl = float((logp["clean"].exp() * (logp["clean"] - logp["spliced"])).sum(-1)[lm].mean())
    return ce, kl


@pytest.mark.parametrize("rows,tile,stack", [(7, 48, 2048), (512, 1024, 2048), (1, 128, 2048), (45, 1, 2048),
                                             (512, 48, 20), (512, 128, 2)])
def test_tiled_head_statistics_equal_full_vocabulary_reference(tiny_hf, tokens, monkeypatch, rows, tile, stack):
    """Several row chunks and vocabulary tiles (48 does not divide 128), and stacked head products
    whose row budget sets the chunk (20 rows over 3 conditions: chunks of 6 positions; 2: of 1):
    the per-tile maxima, sums and KL dots combine to the full-vocabulary log-softmax results."""
    monkeypatch.setattr(logits, "CHUNK_ROWS", rows)
    monkeypatch.setattr(logits, "VOCAB_TILE", tile)
    monkeypatch.setattr(logits, "STACK_ROWS", stack)
    sae = random_sae()
    ce, kl = _reference_metrics(tiny_hf, sae, tokens, "resid_post.1")
    for shared in (True, False):
        r = evaluate(tiny_hf, sae, tokens, hook="resid_post.1", shared_prefix=shared)
        got = {"clean": r.ce_clean, "spliced": r.ce_spliced, "zero": r.ce_zero_ablated, "mean": r.ce_mean_ablated}
        for c in ce:
            assert got[c] == pytest.approx(ce[c], rel=1e-6), (c, shared)
        assert r.kl == pytest.approx(kl, rel=1e-5), shared
        assert evaluate(tiny_hf, identity_sae(), tokens, hook="resid_post.1", shared_prefix=shared).kl == 0.0


def test_head_statistics_are_stable_and_exact_on_equal_logits(monkeypatch):
    """Logits spread over hundreds of nats, a tile of -inf and tiles that do not divide the vocabulary:
    CE and KL still match a float64 log-softmax; conditions read from the same logits are computed once
    (equal CE and a KL of exactly 0)."""
    import torch.nn.functional as F

    monkeypatch.setattr(logits, "CHUNK_ROWS", 5)
    monkeypatch.setattr(logits, "VOCAB_TILE", 7)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 40, generator=g) * 60
    b = a + torch.randn(12, 40, generator=g) * 3
    a[3, 7:14] = -float("inf")  # a whole tile of impossible tokens in one row
    t = torch.randint(0, 40, (12,), generator=g)
    t[3] = 20
    src = lambda x: logits.LogitRows(40, lambda lo, hi, v0, v1: x[lo:hi, v0:v1].clone(), source=x)  # noqa: E731
    ce, kl = logits.token_stats([src(a), src(b), src(a)], t, kl_to={1, 2})
    for x, got in ((a, ce[0]), (b, ce[1])):
        assert torch.allclose(got, F.cross_entropy(x.double(), t, reduction="none"), rtol=1e-6, atol=1e-6)
    finite = torch.arange(12) != 3  # KL over -inf logits is NaN (-inf − -inf), as in a plain p·log p sum
    assert torch.equal(ce[0], ce[2]) and torch.equal(kl[2][finite], torch.zeros(11, dtype=torch.float64))
    lp_a, lp_b = a.double().log_softmax(-1), b.double().log_softmax(-1)
    ref = (lp_a.exp() * (lp_a - lp_b)).sum(-1)
    assert torch.allclose(kl[1][finite], ref[finite], rtol=1e-5, atol=1e-5)


def _product_tolerance(h, w, tile):
    """How far two fp32 computations of the CE of the same rows may drift apart, per row.

    A logit is a d-term fp32 dot product; two products that block or vectorise it differently (another
    CPU's kernel, another place in a stacked operand) each lie within ~d·u·Σ_i|h_i·w_vi| of the exact
    value (u = 2^-24), and CE (log-sum-exp minus the target's logit) moves by at most twice the largest
    logit change. Each tile's Σ exp is an fp32 sum of ``tile`` terms (relative error ~tile·u) before the
    tiles are combined in float64. Doubled for safety."""
    u = torch.finfo(torch.float32).eps / 2
    d = h.shape[-1]
    scale = (h.abs() @ w.abs().T).amax(-1).double()  # [rows]: the largest Σ_i |h_i w_vi| of each row
    return 2 * (2 * 2 * d * u * scale + 2 * (tile + 2) * u)


def test_stacked_head_products_equal_one_product_per_condition(monkeypatch):
    """Conditions given as hidden rows + a shared head go through one stacked product per tile; the
    statistics match the same logits taken one condition at a time, to the rounding of the fp32 head
    product. Equal rows at two places of one stacked product need not round alike (it depends on the
    CPU's matrix kernel): they agree within that rounding, with a KL >= 0 and ~0. A condition whose
    hidden rows equal condition 0's is computed once: equal CE and a KL of exactly 0 by construction."""
    import torch.nn.functional as F

    monkeypatch.setattr(logits, "CHUNK_ROWS", 5)
    monkeypatch.setattr(logits, "VOCAB_TILE", 7)
    monkeypatch.setattr(logits, "STACK_ROWS", 8)  # 4 distinct conditions: chunks of 2 positions
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 6, generator=g) * 3
    head = lambda h, cols: F.linear(h, w[cols])  # noqa: E731
    hs = [torch.randn(11, 6, generator=g) for _ in range(3)]
    near = hs[0].clone()
    near[4] += 1.0  # every other row equals condition 0's, at other rows of the stacked operand
    hs += [hs[0].clone(), near]
    t = torch.randint(0, 40, (11,), generator=g)
    stacked = [logits.LogitRows(40, lambda lo, hi, v0, v1, h=h: head(h[lo:hi], slice(v0, v1)), h, head, h) for h in hs]
    single = [logits.LogitRows(40, c.tile) for c in stacked]
    ce_s, kl_s = logits.token_stats(stacked, t, kl_to={1, 3, 4})
    ce_1, kl_1 = logits.token_stats(single, t, kl_to={1, 3, 4})
    for i, h in enumerate(hs):
        tol = _product_tolerance(h, w, 7)
        ref = F.cross_entropy(head(h, slice(None)).double(), t, reduction="none")
        assert bool(((ce_s[i] - ref).abs() <= tol).all()), i
        assert bool(((ce_s[i] - ce_1[i]).abs() <= tol).all()), i
    tol = _product_tolerance(hs[0], w, 7)
    assert bool(((kl_s[1] - kl_1[1]).abs() <= tol).all()) and bool((kl_s[1] > 0).all())
    same = torch.arange(11) != 4
    assert bool(((ce_s[4] - ce_s[0]).abs()[same] <= tol[same]).all())
    assert bool((kl_s[4] >= 0).all()) and bool((kl_s[4][same] <= tol[same]).all()) and float(kl_s[4][4]) > 1e-3
    # The clone of condition 0: computed once, so bitwise equal on every CPU.
    assert torch.equal(ce_s[0], ce_s[3]) and torch.equal(kl_s[3], torch.zeros(11, dtype=torch.float64))


def test_softcapped_head_gemma2(tiny_tokenizer, tokens):
    """gemma2 caps its logits (tanh(l / c)·c): the tiled head of the shared path applies it too."""
    from sae_hooks import HFAdapter

    from .conftest import make_tiny

    model = make_tiny("gemma2")
    assert model.config.final_logit_softcapping
    adapter = HFAdapter(model, tiny_tokenizer, "tiny-gemma2")
    sae = random_sae()
    ce, kl = _reference_metrics(adapter, sae, tokens, "resid_post.1")
    r = evaluate(adapter, sae, tokens, hook="resid_post.1")
    assert r.ce_clean == pytest.approx(ce["clean"], rel=1e-6) and r.ce_spliced == pytest.approx(ce["spliced"], rel=1e-6)
    assert r.ce_zero_ablated == pytest.approx(ce["zero"], rel=1e-6) and r.kl == pytest.approx(kl, rel=1e-5)
    assert evaluate(adapter, identity_sae(), tokens, hook="resid_post.1").delta_ce == 0.0


def test_hf_and_transformerlens_bridge_agree(tiny_hf, tiny_bridge, tokens):
    sae = random_sae()
    a = evaluate(tiny_hf, sae, tokens, hook="resid_post.1")
    b = evaluate(tiny_bridge, sae, tokens, hook="blocks.1.hook_resid_post")
    for k in KEYS:
        assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-4, abs=1e-5), k


def test_evaluate_many_equals_one_at_a_time(tiny_hf, tokens):
    s0, s2 = random_sae(seed=1), random_sae(seed=2)
    many = evaluate_many(tiny_hf, [("resid_post.0", s0), ("resid_post.2", s2), ("mlp_out.1", s0)], tokens)
    singles = [evaluate(tiny_hf, s, tokens, hook=h) for h, s in [("resid_post.0", s0), ("resid_post.2", s2), ("mlp_out.1", s0)]]
    for m, s in zip(many, singles):
        assert m.hook == s.hook
        for k in KEYS:
            # Three SAEs' conditions stacked per head product against one SAE's: rows of other-shaped products,
            # which may round differently on another CPU (the statistics are combined in float64).
            assert getattr(m, k) == pytest.approx(getattr(s, k), rel=1e-6, abs=1e-9), k
    assert many[0].ce_clean == many[1].ce_clean


@pytest.mark.parametrize("arch,kw", [
    ("standard", {}), ("topk", {"k": 8}), ("batchtopk", {"k": 8}), ("jumprelu", {}),
    ("matryoshka", {"k": 8, "widths": (32, 96, 192)}), ("matching_pursuit", {"k": 8}),
])
def test_every_architecture_evaluates(tiny_hf, tokens, arch, kw):
    sae = make_sae(arch, 64, 192, seed=0, **kw)
    r = evaluate(tiny_hf, sae, tokens, hook="resid_post.1")
    for k in KEYS:
        assert math.isfinite(getattr(r, k)), k
    assert r.architecture == sae.architecture and r.d_sae == 192
    if arch == "topk":
        assert r.l0 == 8.0


def test_matryoshka_prefix_mp_k_and_pruned(tiny_hf, tokens):
    mat = make_sae("matryoshka", 64, 192, k=8, widths=(32, 96, 192), seed=0)
    small = evaluate(tiny_hf, mat, tokens, hook="resid_post.1", width=32)
    assert small.d_sae == 32 and small.fire_freq.shape == (32,)
    mp = make_sae("matching_pursuit", 64, 192, k=8, seed=0)
    r2 = evaluate(tiny_hf, mp, tokens, hook="resid_post.1", k=2)
    r8 = evaluate(tiny_hf, mp, tokens, hook="resid_post.1", k=8)
    assert r2.l0 <= 2.0 and r8.fvu <= r2.fvu  # MP's residual only shrinks with more steps
    rt = evaluate(tiny_hf, mp, tokens, hook="resid_post.1", residual_threshold=1e9)
    assert rt.l0 < r8.l0  # a huge threshold stops pursuits early
    top = make_sae("topk", 64, 192, k=8, seed=0)
    pr = evaluate(tiny_hf, top.pruned(torch.arange(50)), tokens, hook="resid_post.1")
    assert pr.d_sae == 50 and pr.l0 == 8.0
    with pytest.raises(ValueError, match="matching-pursuit"):
        inference_view(top, k=4)
    with pytest.raises(ValueError, match="Matryoshka prefix"):
        inference_view(top, width=4)


def test_hook_from_metadata_in_any_spelling(tiny_hf, tiny_bridge, tokens):
    sae = random_sae()
    ref = evaluate(tiny_hf, sae, tokens, hook="resid_post.1")
    for name in ("resid_post.1", "blocks.1.hook_resid_post", "model.layers.1", "layers.1"):
        sae.metadata = {"hook_name": name, "model_name": "tiny-llama"}
        assert evaluate(tiny_hf, sae, tokens).ce_spliced == ref.ce_spliced
    sae.metadata = {"hook_name": "blocks.1.hook_resid_post"}
    assert evaluate(tiny_bridge, sae, tokens).hook == "resid_post.1"
    sae.metadata = {}
    with pytest.raises(ValueError, match="names none"):
        evaluate(tiny_hf, sae, tokens)


def test_hook_mismatch_is_an_error_and_model_mismatch_a_warning(tiny_hf, tokens):
    sae = random_sae()
    sae.metadata = {"hook_name": "blocks.2.hook_resid_post", "model_name": "tiny-llama"}
    with pytest.raises(ValueError, match=r"trained at 'blocks.2.hook_resid_post' \(= resid_post.2\) but is applied at "
                                         r"resid_post.1.*allow_hook_mismatch=True"):
        evaluate(tiny_hf, sae, tokens, hook="resid_post.1")
    allowed = evaluate(tiny_hf, sae, tokens, hook="resid_post.1", allow_hook_mismatch=True)
    assert allowed.hook == "resid_post.1"
    assert allowed.ce_spliced == evaluate(tiny_hf, random_sae(), tokens, hook="resid_post.1").ce_spliced
    sae.metadata = {"hook_name": "resid_post.1", "model_name": "gpt2"}
    with pytest.warns(MetadataMismatchWarning, match="gpt2.*aliases or local paths"):
        evaluate(tiny_hf, sae, tokens)
    with pytest.raises(ValueError, match="gpt2.*strict"):
        evaluate(tiny_hf, sae, tokens, strict=True)
    sae.metadata = {"hook_name": "resid_post.1", "model_name": "/some/folder/tiny-llama/"}  # a path to the same name
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(tiny_hf, sae, tokens, strict=True)


def test_width_mismatch_and_bad_options(tiny_hf, tokens):
    with pytest.raises(ValueError, match=r"d_in=32.*width 64"):
        evaluate(tiny_hf, random_sae(d=32), tokens, hook="resid_post.1")
    with pytest.raises(ValueError, match="ablation_scope"):
        evaluate(tiny_hf, random_sae(), tokens, hook="resid_post.1", ablation_scope="none")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(tiny_hf, random_sae(), tokens, hook="resid_post.1", batch_size=0)
    with pytest.raises(ValueError, match="No hook point"):
        evaluate(tiny_hf, random_sae(), tokens, hook="resid_post.9")


def test_fp32_sae_on_bf16_model(tiny_tokenizer, tokens):
    from sae_hooks import HFAdapter

    from .conftest import make_tiny

    adapter = HFAdapter(make_tiny("llama").to(torch.bfloat16), tiny_tokenizer, "tiny-llama")
    r = evaluate(adapter, identity_sae(), tokens, hook="resid_post.1")
    assert r.delta_ce == 0.0
    assert math.isfinite(evaluate(adapter, random_sae(), tokens, hook="resid_post.1").recaptured_zero)


def test_ablation_scope_all_ablates_excluded_positions_too(tiny_hf, tokens):
    a = evaluate(tiny_hf, random_sae(), tokens, hook="resid_post.0", ablation_scope="evaluated")
    b = evaluate(tiny_hf, random_sae(), tokens, hook="resid_post.0", ablation_scope="all")
    assert a.ce_spliced == b.ce_spliced and a.ce_clean == b.ce_clean
    assert a.ce_zero_ablated != b.ce_zero_ablated


def test_bare_ids_get_the_default_mask_and_report_is_json(tiny_hf, tokens):
    ids = tokens.input_ids
    r = evaluate(tiny_hf, random_sae(), ids, hook="resid_post.1", top_contexts=3)
    assert r.tokens == int(make_mask(ids, tiny_hf.tokenizer)[:, :-1].sum())
    d = json.loads(json.dumps(r.to_dict()))
    assert set(KEYS) <= set(d) and "loss_delta" not in d
    assert len(d["worst"]) == 3 and "⟦" in d["worst"][0]["text"]
    assert d["worst"][0]["delta"] == float(r.loss_delta.nan_to_num(-1e9).max())
    assert "FVU" in r.table() and "recaptured (zero)" in r.table()


@pytest.mark.slow
def test_real_model_end_to_end(smollm2):
    """A quickly fitted TopK SAE on SmolLM2 resid_post.6 over ~2k held-out stdlib tokens."""
    from sae_hooks.data import CorpusConfig, load_token_tensor

    tok = smollm2.tokenizer
    train = load_token_tensor(tok, CorpusConfig(split="train", ctx=128), 4096)
    acts = smollm2.capture(train.input_ids, ["resid_post.6"])["resid_post.6"][train.mask]
    sae = make_sae("topk", 576, 1152, k=32, seed=0, metadata={"hook_name": "blocks.6.hook_resid_post",
                                                             "model_name": "smollm2-135m-instruct"})
    sae.init_from_data(acts, method="mean")
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for _ in range(3):
        for x in acts.split(512):
            out = sae.training_loss(x)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            sae.after_step()
    held = load_token_tensor(tok, CorpusConfig(split="eval", ctx=128), 2048)
    r = evaluate(smollm2, sae, held, batch_size=16)
    d = r.to_dict()
    assert set(KEYS) <= set(d) and r.hook == "resid_post.6"
    assert 2.0 < r.ce_clean < 3.5
    assert r.ce_clean < r.ce_spliced < r.ce_zero_ablated
    assert 0.0 < r.recaptured_zero < 1.0 and r.recaptured_mean < r.recaptured_zero
    assert 0.0 < r.fvu < 1.0 and r.l0 == 32.0 and r.kl > 0


def test_cli_eval_json_and_errors(tiny_tokenizer, tmp_path, capsys):
    from sae_hooks.cli import main

    from .conftest import make_tiny

    model_dir = tmp_path / "model"
    make_tiny("llama").save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    words = [chr(97 + i) for i in range(26)] + [f"w{i}" for i in range(29, 128)]
    paras = [" ".join(words[j] for j in torch.randint(0, len(words), (40,), generator=g).tolist()) for _ in range(300)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(paras))
    sae = random_sae()
    sae.metadata = {"hook_name": "blocks.1.hook_resid_post", "model_name": "model"}
    sae.save(tmp_path / "sae")
    argv = ["eval", "--sae", str(tmp_path / "sae"), "--model", str(model_dir), "--corpus", str(corpus),
            "--tokens", "256", "--ctx", "32", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(KEYS) <= set(out) and out["hook"] == "resid_post.1" and out["tokens"] > 0
    assert main(argv[:-1] + ["--hook", "resid_post.0", "--json"]) == 1  # not the metadata's hook point
    assert "--allow-hook-mismatch" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert main(argv[:-1] + ["--hook", "resid_post.0", "--allow-hook-mismatch", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["hook"] == "resid_post.0"
    assert main(["eval", "--sae", "pretrained:nothing-here", "--json"]) == 1
    assert "Available" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


def test_cli_eval_split_all_reads_every_row_of_a_held_out_file_in_order(tiny_tokenizer, tmp_path, capsys):
    """``--split all`` on a parquet of N pre-tokenized rows evaluates exactly those N rows, in file order:
    the same numbers as ``evaluate`` on the tensor of those rows (the default split would keep a tenth)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from sae_hooks import HFAdapter
    from sae_hooks.cli import main

    from .conftest import make_tiny

    model_dir = tmp_path / "model"
    make_tiny("llama").save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    n, ctx = 40, 16
    rows = torch.randint(3, 128, (n, ctx), generator=torch.Generator().manual_seed(5))
    pq.write_table(pa.table({"input_ids": rows.tolist()}), tmp_path / "held_out.parquet")
    sae = random_sae()
    sae.metadata = {"hook_name": "resid_post.1", "model_name": "model"}
    sae.save(tmp_path / "sae")
    argv = ["eval", "--sae", str(tmp_path / "sae"), "--model", str(model_dir), "--corpus",
            str(tmp_path / "held_out.parquet"), "--ctx", str(ctx), "--json"]
    assert main(argv + ["--split", "all", "--tokens", str(n * ctx)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ref = evaluate(HFAdapter(make_tiny("llama"), tiny_tokenizer, "model"), sae, rows)
    assert out["tokens"] == ref.tokens == n * (ctx - 2) and out["act_tokens"] == n * (ctx - 1)
    for k in KEYS:
        assert out[k] == ref.to_dict()[k], k
    assert main(argv + ["--tokens", str(n * ctx)]) == 1  # the held-out side of a hash split holds fewer rows
    assert "--split all" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
