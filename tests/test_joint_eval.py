"""Joint evaluation: several SAEs spliced at once. One SAE alone is the single-SAE evaluation exactly,
identity SAEs everywhere cost nothing exactly, the joint numbers equal a hand-written splice of all the
SAEs in one plain forward, and bad inputs (two SAEs at one hook point, SAEs of different models) stop
with a message before any forward."""

from __future__ import annotations

import json

import pytest
import torch

from sae_hooks.data import TokenBatch, make_mask
from sae_hooks.evaluate import evaluate
from sae_hooks.joint import evaluate_joint
from sae_hooks.splice import splice

from .test_splice import identity_sae, random_sae, zero_sae

CE_KEYS = ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "recaptured_zero", "recaptured_mean",
           "delta_ce", "kl", "tokens")


@pytest.fixture
def tokens(tiny_tokenizer):
    ids = torch.randint(3, 128, (10, 16), generator=torch.Generator().manual_seed(3))
    ids[2, 5] = 2  # a special token: excluded like position 0
    return TokenBatch(ids, make_mask(ids, tiny_tokenizer))


def _ce(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> float:
    ce = torch.nn.functional.cross_entropy(logits.detach()[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                           reduction="none")
    return float(ce[mask[:, :-1].reshape(-1)].double().mean())


def test_joint_of_one_sae_is_the_single_evaluation_exactly(tiny_hf, tokens):
    sae = random_sae(seed=4)
    single = evaluate(tiny_hf, sae, tokens, hook="resid_post.1", batch_size=4)
    joint = evaluate_joint(tiny_hf, [("resid_post.1", sae)], tokens, batch_size=4)
    for k in CE_KEYS:
        assert getattr(joint, k) == getattr(single, k), k  # the same conditions, summed by the same code
        assert getattr(joint.each[0], k) == getattr(single, k), k
    assert torch.equal(joint.loss_delta.nan_to_num(-7.0), single.loss_delta.nan_to_num(-7.0))
    assert joint.each[0].fvu == single.fvu and joint.each[0].l0 == single.l0
    assert joint.delta_ce != 0 and joint.hooks == ("resid_post.1",)  # a random SAE changes the loss


@pytest.mark.parametrize("shared", [True, False])
def test_identity_saes_at_every_hook_cost_nothing_exactly(tiny_hf, tokens, shared):
    hooks = ["resid_post.0", "mlp_out.1", "resid_post.1", "resid_post.2"]
    r = evaluate_joint(tiny_hf, {h: identity_sae() for h in hooks}, tokens, shared_prefix=shared)
    assert r.delta_ce == 0.0 and r.kl == 0.0 and r.ce_spliced == r.ce_clean
    assert r.recaptured_zero == 1.0 and r.recaptured_mean == 1.0
    assert all(e.delta_ce == 0.0 and e.kl == 0.0 for e in r.each)
    assert r.hooks == tuple(hooks)


def test_joint_equals_a_hand_written_splice_of_all_saes(tiny_hf, tokens):
    """The SAE at resid_post.2 encodes the activation the SAE at resid_post.0 already changed."""
    ids, mask = tokens
    saes = {"resid_post.0": random_sae(seed=1), "resid_post.2": random_sae(seed=2)}
    r = evaluate_joint(tiny_hf, saes, tokens, batch_size=4)
    with splice(tiny_hf, saes, mask=mask):
        spliced = _ce(tiny_hf.forward(ids), ids, mask)
    zeroed = {h: (lambda x: torch.where(mask[..., None], 0.0, x)) for h in saes}
    clean = _ce(tiny_hf.forward(ids), ids, mask)
    zero = _ce(tiny_hf.forward(ids, hooks=zeroed), ids, mask)
    # evaluate takes the log-sum-exp over vocabulary tiles from the final hidden state (combined in float64),
    # the reference one fp32 log-softmax over full logits: equal to fp32 rounding.
    assert r.ce_clean == pytest.approx(clean, rel=1e-5)
    assert r.ce_spliced == pytest.approx(spliced, rel=1e-5)
    assert r.ce_zero_ablated == pytest.approx(zero, rel=1e-5)
    # Splicing the upstream SAE changes what the downstream one sees: the joint cost is not either alone.
    assert r.delta_ce not in (r.each[0].delta_ce, r.each[1].delta_ce)
    assert r.ce_spliced != r.each[1].ce_spliced


def test_joint_zero_saes_equal_joint_zero_ablation_and_keep_error_is_clean(tiny_hf, tokens):
    r = evaluate_joint(tiny_hf, {"resid_post.0": zero_sae(), "resid_post.1": zero_sae()}, tokens)
    assert r.ce_spliced == pytest.approx(r.ce_zero_ablated, rel=1e-6) and r.recaptured_zero == pytest.approx(0.0, abs=1e-6)
    k = evaluate_joint(tiny_hf, {"resid_post.0": random_sae(seed=1), "resid_post.1": random_sae(seed=2)}, tokens,
                       keep_error=True)
    assert k.ce_spliced == k.ce_clean and k.kl == 0.0 and k.keep_error


def test_bad_inputs_are_refused_before_any_forward(tiny_hf, tokens):
    with pytest.raises(ValueError, match="same hook point resid_post.1"):
        evaluate_joint(tiny_hf, [("resid_post.1", random_sae(seed=1)), ("blocks.1.hook_resid_post", random_sae(seed=2))],
                       tokens)
    a, b = random_sae(seed=1), random_sae(seed=2)
    a.metadata = {"hook_name": "resid_post.0", "model_name": "tiny-llama"}
    b.metadata = {"hook_name": "resid_post.1", "model_name": "gpt2"}
    with pytest.raises(ValueError, match="different models.*'gpt2'"):
        evaluate_joint(tiny_hf, [a, b], tokens)
    with pytest.raises(ValueError, match="at least one SAE"):
        evaluate_joint(tiny_hf, [], tokens)
    with pytest.raises(TypeError, match="pairs"):
        evaluate_joint(tiny_hf, ["resid_post.1"], tokens)


def test_report_json_and_table(tiny_hf, tokens):
    r = evaluate_joint(tiny_hf, {"resid_post.0": random_sae(seed=1), "resid_post.2": random_sae(seed=2)}, tokens)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["joint"]["hooks"] == ["resid_post.0", "resid_post.2"] and len(d["saes"]) == 2
    assert d["joint"]["delta_ce"] == r.delta_ce and d["saes"][1]["hook"] == "resid_post.2"
    assert "all together" in r.table() and "definitions" in d


def test_cli_eval_several_saes(tiny_tokenizer, tmp_path, capsys):
    from sae_hooks.cli import main

    from .conftest import make_tiny

    model_dir = tmp_path / "model"
    make_tiny("llama").save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    words = [chr(97 + i) for i in range(26)] + [f"w{i}" for i in range(29, 128)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(words[j] for j in torch.randint(0, len(words), (40,), generator=g).tolist())
                                  for _ in range(300)))
    for name, hook, seed in (("a", "blocks.0.hook_resid_post", 1), ("b", "blocks.2.hook_resid_post", 2)):
        sae = random_sae(seed=seed)
        sae.metadata = {"hook_name": hook, "model_name": "model"}
        sae.save(tmp_path / name)
    base = ["eval", "--sae", str(tmp_path / "a"), "--sae", str(tmp_path / "b"), "--model", str(model_dir),
            "--corpus", str(corpus), "--tokens", "256", "--ctx", "32"]
    assert main(base + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["joint"]["hooks"] == ["resid_post.0", "resid_post.2"] and out["joint"]["tokens"] > 0
    assert [s["hook"] for s in out["saes"]] == ["resid_post.0", "resid_post.2"]
    assert out["saes"][0]["sae"] == str(tmp_path / "a")
    assert main(base + ["--hook", "resid_post.0", "--json"]) == 1  # one --hook for two --sae
    assert "one --hook per --sae" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert main(["eval", "--sae", str(tmp_path / "a"), "--sae", str(tmp_path / "a"), "--model", str(model_dir),
                 "--corpus", str(corpus), "--tokens", "256", "--ctx", "32", "--json"]) == 1
    assert "same hook point" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert main(base) == 0
    assert "all together" in capsys.readouterr().out
