"""Activation cache: SAEs trained from it equal live-trained ones bit for bit; a cache interrupted (an
exception, a killed write, a full disk) continues to the same files as an uninterrupted one; a cache of
another model / backend / hook / dtype / ctx, a folder that is not a cache, a truncated or damaged shard
and too few tokens are refused with a message that names the problem and the fix."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sae_hooks import _io
from sae_hooks.cache import ActivationCache, CacheConfig, CacheError, write_cache
from sae_hooks.cli import main
from sae_hooks.data import CorpusConfig, iter_batches
from sae_hooks.run import train
from tests.test_train import tiny_config, tiny_env, train_argv  # noqa: F401  (tiny_env is a fixture)
from tests.test_train_resume import assert_same_weights, saved_weights

HOOKS = ("resid_post.0", "resid_post.1")
RUN = dict(archs=("topk", "standard"), hooks=HOOKS)
"""The tiny run of test_train (8192 tokens, 32 steps of 8 sequences of 32 tokens), two architectures at two hooks."""


def cache_config(env, out, **kw) -> CacheConfig:
    """The cache of the tiny run's token stream: same corpus, ctx, LM batch, model dtype and document order;
    shards of 1 MB = 56 sequences of two hooks' rows (5 shards)."""
    return CacheConfig(**{"model": env["model"], "corpus": env["corpus"], "hooks": HOOKS, "tokens": 8192, "ctx": 32,
                          "batch_tokens": 256, "model_dtype": "fp32", "dtype": "fp32", "shard_mb": 1,
                          "progress": "off", "out": str(out), **kw})


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def ref_cache(tiny_env):
    out = tiny_env["root"] / "cache_ref"
    if not out.exists():
        write_cache(cache_config(tiny_env, out))
    return out


@pytest.fixture(scope="module")
def live_run(tiny_env):
    out = tiny_env["root"] / "cache_live_run"
    if not out.exists():
        train(tiny_config(tiny_env, out, **RUN))
    return out


def test_cache_trained_saes_equal_live_trained_bitwise(tiny_env, ref_cache, live_run, tmp_path):
    result = train(tiny_config(tiny_env, tmp_path / "run", from_cache=str(ref_cache), **RUN))
    assert_same_weights(saved_weights(live_run), saved_weights(tmp_path / "run"))
    live = json.loads((live_run / "metrics.json").read_text())
    for a, b in zip(live["saes"], result.to_dict()["saes"]):
        for k in ("fvu", "l0", "dead_frac", "ce_spliced", "kl", "train_never_fired_frac", "train_dead_frac"):
            assert a[k] == b[k], k  # held-out scores of equal SAEs on the same held-out tokens
    live_log = [json.loads(x) for x in (live_run / "metrics.jsonl").read_text().splitlines()]
    cache_log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert live_log == cache_log and result.steps == 32 and result.tokens == live["tokens"]


def test_manifest_describes_the_cache(tiny_env, ref_cache, tiny_tokenizer):
    m = json.loads((ref_cache / "manifest.json").read_text())
    assert m["complete"] and m["hooks"] == list(HOOKS) and m["model_dtype"] == "fp32" and m["ctx"] == 32
    assert [s["sequences"] for s in m["shards"]] == [56, 56, 56, 56, 32] and m["sequences"] == 256
    assert m["excluded_positions"]["first"] == 1 and 2 in m["excluded_positions"]["special_token_ids"]
    assert m["commit"] is None or len(m["commit"]) == 40
    # The token ids and the mask in the shards are the run's token stream and its evaluated positions.
    batches = list(iter_batches(tiny_tokenizer, CorpusConfig(source=tiny_env["corpus"], ctx=32, shuffle_docs=True, seed=0),
                                8, max_tokens=8192))
    ids = torch.cat([load_file(str(ref_cache / s["file"]))["input_ids"] for s in m["shards"]]).long()
    mask = torch.cat([load_file(str(ref_cache / s["file"]))["mask"] for s in m["shards"]])
    assert torch.equal(ids, torch.cat([b.input_ids for b in batches]))
    assert torch.equal(mask, torch.cat([b.mask for b in batches]))
    rows = torch.cat([load_file(str(ref_cache / s["file"]))["acts.resid_post.1"] for s in m["shards"]]).double()
    assert rows.shape[0] == int(mask.sum()) == m["rows"] == m["norms"]["resid_post.1"]["rows"]
    assert m["norms"]["resid_post.1"]["mean_norm"] == pytest.approx(float(rows.norm(dim=-1).mean()), rel=1e-12)
    assert m["norms"]["resid_post.1"]["max_norm"] == pytest.approx(float(rows.norm(dim=-1).max()), rel=1e-12)
    assert m["bytes"] == sum((ref_cache / s["file"]).stat().st_size for s in m["shards"])


def test_reader_shards_across_ranks_like_the_live_stream(ref_cache):
    cache = ActivationCache(ref_cache)
    one = cache.rows(["resid_post.1"], 0, 256)["resid_post.1"]
    whole = torch.cat([b.acts["resid_post.1"] for b in cache.batches(["resid_post.1"], 8)])
    assert torch.equal(one, whole) and whole.dtype == torch.float32
    for rank in (0, 1):  # rank r takes sequences r, r + 2, r + 4, ... (as data.iter_batches does)
        got = torch.cat([b.acts["resid_post.1"] for b in cache.batches(["resid_post.1"], 8, rank=rank, world_size=2)])
        want = torch.cat([cache.rows(["resid_post.1"], s, s + 1)["resid_post.1"] for s in range(rank, 256, 2)])
        assert torch.equal(got, want)
    last = list(cache.batches(["resid_post.1"], 8, rank=1, world_size=2))[-1]
    assert last.sequences == 256  # global stream position, all ranks together
    cyc = list(cache.batches(["resid_post.1"], 8, max_sequences=264, cycle=True))
    assert torch.equal(cyc[-1].acts["resid_post.1"], cache.rows(["resid_post.1"], 0, 8)["resid_post.1"])


def test_cycling_rereads_later_passes_reshuffled_by_shard_and_batch(ref_cache):
    """Pass 0 is the cache's order; pass e >= 1 permutes the shards and, inside each, the LM batches as written
    (8 sequences here), seeded by (seed, e); without a reshuffle seed every pass is the cache's order."""
    cache, h = ActivationCache(ref_cache), "resid_post.1"
    order = cache.epoch_order(0, 1)
    assert torch.equal(cache.epoch_order(0, 0), torch.arange(256))
    assert torch.equal(order.sort().values, torch.arange(256)) and not torch.equal(order, torch.arange(256))
    assert torch.equal(order, cache.epoch_order(0, 1))  # a function of (seed, pass): resumable
    assert not torch.equal(order, cache.epoch_order(1, 1)) and not torch.equal(order, cache.epoch_order(0, 2))
    blocks = order.view(32, 8)  # every LM batch read whole, in its own order
    assert torch.equal(blocks - blocks[:, :1], torch.arange(8).expand(32, 8)) and (blocks[:, 0] % 8 == 0).all()
    starts = [s["first_sequence"] for s in cache.manifest["shards"]]
    shard_of = [max(i for i, st in enumerate(starts) if st <= int(b)) for b in blocks[:, 0]]
    runs = [s for i, s in enumerate(shard_of) if i == 0 or s != shard_of[i - 1]]
    assert sorted(runs) == list(range(len(starts))) and runs != sorted(runs)  # shards whole, in another order

    def rows_of(seqs):
        return torch.cat([cache.rows([h], int(s), int(s) + 1)[h] for s in seqs])

    got = torch.cat([b.acts[h] for b in cache.batches([h], 8, max_sequences=512, cycle=True, reshuffle_seed=0)])
    first = cache.rows([h], 0, 256)[h]
    assert torch.equal(got[:len(first)], first) and torch.equal(got[len(first):], rows_of(order))
    plain = torch.cat([b.acts[h] for b in cache.batches([h], 8, max_sequences=512, cycle=True)])
    assert torch.equal(plain, torch.cat([first, first]))
    for rank in (0, 1):  # ranks stride through the reshuffled pass as through the first
        got = torch.cat([b.acts[h] for b in cache.batches([h], 8, max_sequences=512, cycle=True, reshuffle_seed=0,
                                                           rank=rank, world_size=2)])
        assert torch.equal(got, rows_of([*range(rank, 256, 2), *order[rank::2].tolist()]))


def test_a_run_cycling_a_shuffled_cache_reshuffles_with_its_seed(tiny_env, ref_cache, tmp_path, monkeypatch):
    seen = []
    original = ActivationCache.batches

    def spy(self, *args, **kw):
        seen.append(kw.get("reshuffle_seed"))
        return original(self, *args, **kw)

    monkeypatch.setattr(ActivationCache, "batches", spy)
    train(tiny_config(tiny_env, tmp_path / "run", from_cache=str(ref_cache), tokens=9216, cycle=True, seed=3,
                      eval_every=0, eval_ce_tokens=0, checkpoint_every=0))
    assert ActivationCache(ref_cache).manifest["corpus"]["shuffle"] is True and seen == [3]


def test_interrupted_cache_continues_to_identical_files(tiny_env, ref_cache, tmp_path):
    out = tmp_path / "cache"

    class Stop(Exception):
        pass

    def stop_after_first(i):
        if i == 0:
            raise Stop

    with pytest.raises(Stop):
        write_cache(cache_config(tiny_env, out), on_shard=stop_after_first)
    assert sorted(files(out)) == ["manifest.json", "shard_00000.safetensors"]
    with pytest.raises(CacheError, match="incomplete: 1,792 of 8,192 tokens.*same sae-hooks cache command"):
        ActivationCache(out)
    # What a kill during the next shard leaves behind: a temporary file and a shard the manifest never listed.
    (out / ".shard_00001.safetensors.1a2b3c4d.tmp").write_bytes(b"half a shard")
    (out / "shard_00001.safetensors").write_bytes(b"a shard written before the manifest could list it")
    result = write_cache(cache_config(tiny_env, out))
    assert result.resumed_from_sequence == 56 and result.shards == 5
    assert files(out) == files(ref_cache)
    again = write_cache(cache_config(tiny_env, out))  # complete: nothing to do
    assert again.tokens == 8192 and files(out) == files(ref_cache)


def test_full_disk_while_caching_is_one_line_and_keeps_the_complete_shards(tiny_env, ref_cache, tmp_path, capsys,
                                                                           monkeypatch):
    real, calls = os.fsync, []

    def disk_fills_at_the_second_shard(fd):  # fsync 1: shard 0, 2: manifest, 3: shard 1
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(_io.os, "fsync", disk_fills_at_the_second_shard)
    out = tmp_path / "cache"
    argv = ["cache", "--model", tiny_env["model"], "--corpus", tiny_env["corpus"], "--hook", HOOKS[0], "--hook", HOOKS[1],
            "--tokens", "8192", "--ctx", "32", "--batch-tokens", "256", "--model-dtype", "fp32", "--shard-mb", "1",
            "--progress", "off", "--out", str(out)]
    assert main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("sae-hooks cache:")]
    assert len(err) == 1 and "No space left on device while writing shard_00001.safetensors" in err[0] \
        and "1 shard(s)" in err[0] and "run the same command again" in err[0], err
    assert sorted(files(out)) == ["manifest.json", "shard_00000.safetensors"]  # no temporary file left
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["shards"]) == 1 and m["sequences"] == 56 and not m["complete"]
    monkeypatch.undo()
    assert main(argv + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_from_sequence"] == 56
    assert files(out) == files(ref_cache)


@pytest.mark.parametrize("change, message", [
    (dict(dtype="bf16"), r"model in fp32, the run asks for dtype bf16. Pass --dtype fp32"),
    (dict(hooks=("resid_post.2",)), r"holds hook point\(s\) resid_post.0, resid_post.1, not resid_post.2"),
    (dict(ctx=16), r"ctx=32, the run asks for ctx=16. Pass --ctx 32"),
    (dict(backend="tl"), r"written with backend 'hf', the run asks for 'tl'"),
    (dict(model="gpt2"), r"activations of model '.*model', the run asks for 'gpt2'. Pass --model"),
    (dict(tokens=16384), r"holds 8,192 tokens .* asks for 16,384. Pass --tokens 8192 or fewer, or --cycle"),
])
def test_a_cache_the_run_does_not_ask_for_is_refused_before_any_write(tiny_env, ref_cache, tmp_path, change, message):
    out = tmp_path / "run"
    with pytest.raises(CacheError, match=message):
        train(tiny_config(tiny_env, out, **{"from_cache": str(ref_cache), **RUN, **change}))
    assert not (out / "run.json").exists()


def test_too_few_tokens_trains_with_cycle(tiny_env, ref_cache, tmp_path):
    result = train(tiny_config(tiny_env, tmp_path / "run", from_cache=str(ref_cache), tokens=9216, cycle=True,
                               eval_every=0, eval_ce_tokens=0, checkpoint_every=0))
    assert result.steps == 36  # 288 sequences of the 256 cached: the first 32 read twice


def test_not_a_cache_and_damaged_shards_are_named(tiny_env, ref_cache, tmp_path):
    with pytest.raises(CacheError, match="no such folder"):
        ActivationCache(tmp_path / "nothing")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    with pytest.raises(CacheError, match=r"is not an activation cache: it has no manifest.json"):
        train(tiny_config(tiny_env, tmp_path / "run", from_cache=str(tmp_path / "notes")))
    (tmp_path / "notes" / "manifest.json").write_text('{"model": "x"}')
    with pytest.raises(CacheError, match="not the manifest of an activation cache"):
        ActivationCache(tmp_path / "notes")
    bad = tmp_path / "bad"
    shutil.copytree(ref_cache, bad)
    blob = (bad / "shard_00001.safetensors").read_bytes()
    (bad / "shard_00001.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CacheError, match=r"Shard shard_00001.safetensors .* truncated"):
        train(tiny_config(tiny_env, tmp_path / "run2", from_cache=str(bad), **RUN))
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF  # same size, one activation byte changed
    (bad / "shard_00001.safetensors").write_bytes(bytes(flipped))
    ActivationCache(bad)  # the size check passes
    with pytest.raises(CacheError, match=r"Shard shard_00001.safetensors .* does not match its sha256"):
        ActivationCache(bad, verify="sha256")


def test_cache_folder_rules(tiny_env, ref_cache, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(CacheError, match=r"holds files that are not an activation cache \(thesis.tex\)"):
        write_cache(cache_config(tiny_env, tmp_path / "mine"))
    other = tmp_path / "other"
    shutil.copytree(ref_cache, other)
    with pytest.raises(CacheError, match=r"other settings \(dtype: cache 'fp32', asked 'bf16'\).*--overwrite"):
        write_cache(cache_config(tiny_env, other, dtype="bf16"))
    result = write_cache(cache_config(tiny_env, other, dtype="bf16", overwrite=True))
    # bf16 storage: half the bytes of fp32 per row (the headers aside).
    assert result.bytes < 0.55 * json.loads((ref_cache / "manifest.json").read_text())["bytes"]
    x16 = ActivationCache(other).rows(["resid_post.1"], 0, 256)["resid_post.1"]
    x32 = ActivationCache(ref_cache).rows(["resid_post.1"], 0, 256)["resid_post.1"]
    assert torch.equal(x16, x32.bfloat16().float())  # storage rounds the fp32 model's rows to bf16, nothing else


def test_cli_cache_then_train_from_cache_and_resume(tiny_env, ref_cache, live_run, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *train_argv(tiny_env, out, "--arch", "topk", "--arch", "standard", "--hook", HOOKS[0], "--hook",
                                 HOOKS[1], "--from-cache", str(ref_cache))]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 32
    assert_same_weights(saved_weights(live_run), saved_weights(out))
    # Resume from a checkpoint of a from-cache run: stop it after step 12 (checkpoint at step 8), then resume.
    cut = tmp_path / "cut"

    class Crash(Exception):
        pass

    def crash(info):
        if info.step == 12:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_config(tiny_env, cut, from_cache=str(ref_cache), **RUN), on_step=crash)
    train(tiny_config(tiny_env, cut, from_cache=str(ref_cache), resume=True, **RUN))
    assert_same_weights(saved_weights(live_run), saved_weights(cut))


def test_a_cycled_run_from_a_cache_resumes_bitwise_in_its_reshuffled_pass(tiny_env, ref_cache, tmp_path):
    """Two passes over the cache (the second reshuffled); stopped in the second pass and resumed, the SAEs equal
    those of the uninterrupted run: the reshuffled order is a function of the seed and the pass alone."""
    kw = dict(from_cache=str(ref_cache), tokens=16384, cycle=True, eval_every=0, eval_ce_tokens=0, **RUN)
    whole = tmp_path / "whole"
    train(tiny_config(tiny_env, whole, **kw))

    class Crash(Exception):
        pass

    def crash(info):
        if info.step == 44:  # the last checkpoint before it is step 40: 320 sequences, inside the second pass
            raise Crash

    cut = tmp_path / "cut"
    with pytest.raises(Crash):
        train(tiny_config(tiny_env, cut, **kw), on_step=crash)
    train(tiny_config(tiny_env, cut, resume=True, **kw))
    assert_same_weights(saved_weights(whole), saved_weights(cut))
