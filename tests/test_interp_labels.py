"""The Python token labeller: each label on exactly the expected tokens of hand-written snippets,
the hierarchy, offsets through CR/LF and non-ASCII text, and documents Python rejects."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch

from sae_hooks.data import CorpusConfig, CorpusError, iter_documents
from sae_hooks.interp import (
    LABEL_NAMES,
    LABELS,
    NotPython,
    children,
    label_spans,
    labelled_tokens,
    token_labels,
)

# A BPE-like splitter for the tests: a newline with the next line's indentation, a word with its
# leading space, a run of punctuation with its leading space. Its tokens straddle spans the way a
# real tokenizer's do ('("' = an operator and the start of a string).
TOKEN = re.compile(r"\n[ \t]*|[ ]?\w+|[ ]?[^\w\s]+|\s+")


def offsets(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in TOKEN.finditer(text)]


def by_label(text: str) -> dict[str, list[str]]:
    """Label -> the texts of the tokens that carry it, in order."""
    offs = offsets(text)
    labels = token_labels(text, offs).labels
    return {name: [text[a:b] for (a, b), on in zip(offs, labels[:, j]) if on] for j, name in enumerate(LABEL_NAMES)}


CLASS_SRC = '''"""Module doc."""
import os
from a import b as c

@register(name="x")
class Point(Base):
    """A point.

    Multi-line docstring.
    """

    def norm(self, p=2):
        # squared
        s = f"{self.x!r:>{p}} {f'{p}'}"
        t = """one
two"""
        return len(s) + 1.5
'''

CLASS_EXPECTED = {
    "comment": ["#", " squared"],
    "string": ['"""', "Module", " doc", '."""', "x", '"""', "A", " point", ".", "\n", "\n    ", "Multi", "-", "line",
               " docstring", ".", "\n    ", '"""', " f", '"{', "self", ".", "x", "!", "r", ":>{", "p", "}}", " {", "f",
               "'{", "p", "}'}\"", ' """', "one", "\n", "two", '"""'],
    "string.docstring": ['"""', "Module", " doc", '."""', '"""', "A", " point", ".", "\n", "\n    ", "Multi", "-", "line",
                         " docstring", ".", "\n    ", '"""'],
    # the nested f-string and every replacement field are part of the outer literal
    "string.fstring": [" f", '"{', "self", ".", "x", "!", "r", ":>{", "p", "}}", " {", "f", "'{", "p", "}'}\""],
    # a multi-line string that is not a docstring; 'x' of name="x" (its quotes straddle '=' and ')')
    "string.other": ["x", ' """', "one", "\n", "two", '"""'],
    "number": ["2", " 1", ".", "5"],
    "operator": ["@", "(", "(", "):", "(", ",", "=", "):", " =", " =", "(", ")", " +"],
    "keyword": ["import", "from", " import", " as", "class", "def", "return"],
    "keyword.def": ["def"],
    "keyword.return": ["return"],
    "keyword.import": ["import", " import"],
    "keyword.class": ["class"],
    "name": [" os", " a", " b", " c", "register", "name", " Point", "Base", " norm", "self", " p", "s", "t", " len", "s"],
    "name.builtin": [" len"],
    "name.self": ["self"],
    "name.defined": [" Point", " norm", "self", " p", "s", "t"],
    "name.defined.function": [" norm"],
    "name.defined.class": [" Point"],
    "name.defined.variable": ["s", "t"],
    "name.defined.parameter": ["self", " p"],
    # NEWLINE and NL tokens; the line breaks inside the docstring and the string are string, not newline
    "newline": ["\n", "\n", "\n", "\n", "\n", "\n    ", "\n", "\n    ", "\n        ", "\n        ", "\n        ",
                "\n        ", "\n"],
    "decorator": ["@", "register", "(", "name", '="', "x", '")'],
    "import": ["import", " os", "from", " a", " import", " b", " as", " c"],
    # from the line after the header (its indentation included) to the end of the last statement
    "in_function": ["\n        ", "#", " squared", "\n        ", "s", " =", " f", '"{', "self", ".", "x", "!", "r", ":>{", "p",
                    "}}", " {", "f", "'{", "p", "}'}\"", "\n        ", "t", " =", ' """', "one", "\n", "two", '"""',
                    "\n        ", "return", " len", "(", "s", ")", " +", " 1", ".", "5"],
    "in_class": ["\n    ", '"""', "A", " point", ".", "\n", "\n    ", "Multi", "-", "line", " docstring", ".", "\n    ",
                 '"""', "\n", "\n    ", "def", " norm", "(", "self", ",", " p", "=", "2", "):", "\n        ", "#",
                 " squared", "\n        ", "s", " =", " f", '"{', "self", ".", "x", "!", "r", ":>{", "p", "}}", " {",
                 "f", "'{", "p", "}'}\"", "\n        ", "t", " =", ' """', "one", "\n", "two", '"""', "\n        ",
                 "return", " len", "(", "s", ")", " +", " 1", ".", "5"],
    # code tokens of lines two levels deep and their closing newline; the comment line has no depth
    "depth_ge2": ["s", " =", " f", '"{', "self", ".", "x", "!", "r", ":>{", "p", "}}", " {", "f", "'{", "p", "}'}\"",
                  "\n        ", "t", " =", ' """', "one", "\n", "two", '"""', "\n        ", "return", " len", "(", "s",
                  ")", " +", " 1", ".", "5", "\n"],
}

FLOW_SRC = '''café = len("né")
try:
    self.items.append(café)
except (KeyError, ValueError) as e:
    raise
    # tail
for i in range(3):
    if i is not None and not False:
        print(i); x = ("s", 1)
'''

FLOW_EXPECTED = {
    "comment": ["#", " tail"],
    "string": ["né", "s"],
    "string.other": ["né", "s"],
    "number": ["3", " 1"],
    "operator": [" =", ":", ".", ".", "(", ")", " (", ",", ")", ":", "(", "):", ":", "(", ");", " =", ")"],
    "keyword": ["try", "except", " as", "raise", "for", " in", "if", " is", " not", " None", " and", " not", " False"],
    "keyword.if": ["if"],
    "keyword.None": [" None"],
    "keyword.in": [" in"],
    "keyword.not": [" not", " not"],
    "keyword.is": [" is"],
    "keyword.for": ["for"],
    "keyword.raise": ["raise"],
    "keyword.and": [" and"],
    "keyword.try": ["try"],
    "keyword.except": ["except"],
    "keyword.False": [" False"],
    "name": ["café", " len", "self", "items", "append", "café", "KeyError", " ValueError", " e", " i", " range", " i",
             "print", "i", " x"],
    # ast columns are UTF-8 bytes: 'len' after 'café' must still land on ' len'
    "name.builtin": [" len", "KeyError", " ValueError", " range", "print"],
    "name.self": ["self"],
    "name.attribute": ["items", "append"],
    "name.defined": ["café", " i", " x"],
    "name.defined.variable": ["café", " i", " x"],
    "newline": ["\n", "\n    ", "\n", "\n    ", "\n    ", "\n", "\n    ", "\n        ", "\n"],
    # the except body only: not its header, not the comment after its last statement
    "in_except": ["\n    ", "raise"],
    "depth_ge2": ["print", "(", "i", ");", " x", " =", ' ("', "s", '",', " 1", ")", "\n"],
}


@pytest.mark.parametrize("src, expected", [(CLASS_SRC, CLASS_EXPECTED), (FLOW_SRC, FLOW_EXPECTED)],
                         ids=["class", "flow"])
def test_each_label_on_exactly_the_expected_tokens(src, expected):
    got = by_label(src)
    for name in LABEL_NAMES:
        assert got[name] == expected.get(name, []), name


def test_straddling_tokens_carry_neither_label_and_are_marked():
    text = 'x = ("s", 1)\n'
    offs = offsets(text)
    tl = token_labels(text, offs)
    toks = [text[a:b] for a, b in offs]
    i = toks.index(' ("')
    op, string = LABEL_NAMES.index("operator"), LABEL_NAMES.index("string")
    assert not tl.labels[i, op] and not tl.labels[i, string]
    assert tl.straddled[i, op] and tl.straddled[i, string]
    assert not tl.straddled[toks.index("s")].any()  # inside the string: carries it, no straddle


def test_label_table_is_hierarchical_and_large_enough():
    assert len(LABELS) >= 20 and len(set(LABEL_NAMES)) == len(LABEL_NAMES)
    for label in LABELS:
        assert label.parent is None or label.parent in LABEL_NAMES
        assert label.parent is None or label.name.startswith(label.parent + ".")
    assert children("string") == ["string.docstring", "string.fstring", "string.other"]
    assert len(children("keyword")) >= 10
    with pytest.raises(ValueError, match="Unknown label 'strng'; valid: comment, string"):
        children("strng")


def stdlib_texts(n: int = 6) -> list[str]:
    return [d for d, _ in zip(iter_documents(CorpusConfig(split="eval")), range(n))]


def test_children_lie_inside_their_parents_on_real_code():
    for text in [CLASS_SRC, FLOW_SRC, *stdlib_texts()]:
        try:
            labels = token_labels(text, offsets(text)).labels
        except NotPython:
            continue
        for j, label in enumerate(LABELS):
            if label.parent is not None:
                parent = LABEL_NAMES.index(label.parent)
                assert not (labels[:, j] & ~labels[:, parent]).any(), label.name
        defined = [LABEL_NAMES.index(c) for c in children("name.defined")]
        assert np.array_equal(labels[:, defined].any(1), labels[:, LABEL_NAMES.index("name.defined")])
        docstring, fstring, other = (LABEL_NAMES.index(f"string.{c}") for c in ("docstring", "fstring", "other"))
        assert not (labels[:, docstring] & labels[:, other]).any() and not (labels[:, fstring] & labels[:, other]).any()


def test_crlf_and_cr_give_the_same_spans_as_lf():
    lf = label_spans(CLASS_SRC)
    for newline in ("\r\n", "\r"):
        text = CLASS_SRC.replace("\n", newline)
        spans = label_spans(text)
        for name in LABEL_NAMES:
            assert [text[s:e].replace(newline, "\n") for s, e in spans[name]] == [CLASS_SRC[s:e] for s, e in lf[name]]


@pytest.mark.parametrize("bad", ["def f(:\n    pass\n", 'x = """never closed\n', "if x:\npass\n",
                                 "The quick brown fox jumps over the lazy dog.\n", "x = 1\0\n"])
def test_text_python_rejects_raises_not_python(bad):
    with pytest.raises(NotPython):
        label_spans(bad)
    with pytest.raises(NotPython):
        token_labels(bad, offsets(bad))


def test_whitespace_rule_covers_every_unicode_space():
    from sae_hooks.interp.labels import _SPACE_CODES

    every = [c for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert _SPACE_CODES.tolist() == every


def test_offsets_past_the_text_and_empty_tokens_carry_nothing_extra():
    text = "x = 1\n"
    tl = token_labels(text, [(0, 1), (1, 1), (4, 5), (5, 99)])
    assert tl.labels[1].sum() == 0                                           # an empty token
    assert tl.labels[3, LABEL_NAMES.index("newline")]                        # clipped to the text
    assert tl.labels[2, LABEL_NAMES.index("number")] and tl.labels[0, LABEL_NAMES.index("name.defined.variable")]


# ---------------------------------------------------------------------------------------------
# Documents of a corpus, through a real (fast) tokenizer


def write_corpus(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


PY_DOCS = [CLASS_SRC, FLOW_SRC, "def g(a, b):\n    return a + b\n" * 3]


def test_labelled_tokens_skips_and_counts_documents_python_rejects(tiny_tokenizer, tmp_path):
    docs = [PY_DOCS[0], "def broken(:\n", PY_DOCS[1], "Plain English, not code at all.", PY_DOCS[2]]
    cfg = CorpusConfig(source=write_corpus(tmp_path / "c.jsonl", docs), split="all", ctx=16)
    held = sum(len(ids) + 1 for ids in tiny_tokenizer(PY_DOCS, add_special_tokens=False)["input_ids"])
    n_seq = held // 16   # every Python document is needed, so the stream passes both rejected ones
    toks = labelled_tokens(tiny_tokenizer, cfg, n_seq * 16)
    assert toks.documents == 3 and toks.skipped == {"SyntaxError": 2}
    assert toks.input_ids.shape == (n_seq, 16) and toks.labels.shape == (n_seq, 16, len(LABELS))
    eos = tiny_tokenizer.eos_token_id
    assert not toks.labels[toks.input_ids == eos].any()              # separators carry no label
    assert not toks.mask[:, 0].any() and not toks.mask[toks.input_ids == eos].any()
    # the labels are those of each document on its own, packed in stream order
    enc = tiny_tokenizer(PY_DOCS[0], add_special_tokens=False, return_offsets_mapping=True)
    own = token_labels(PY_DOCS[0], enc["offset_mapping"]).labels
    n = min(len(own), 64)
    assert torch.equal(toks.labels.reshape(-1, len(LABELS))[:n], torch.from_numpy(own[:n]))


def test_labelled_tokens_refuses_a_corpus_without_python(tiny_tokenizer, tmp_path):
    cfg = CorpusConfig(source=write_corpus(tmp_path / "e.jsonl", ["An English sentence.", "Another, with words."]),
                       split="all", ctx=16)
    with pytest.raises(CorpusError, match=r"holds no Python source: 2 document\(s\), 2 rejected by Python's parser"):
        labelled_tokens(tiny_tokenizer, cfg, 32)


def test_labelled_tokens_says_how_many_tokens_the_split_holds(tiny_tokenizer, tmp_path):
    cfg = CorpusConfig(source=write_corpus(tmp_path / "s.jsonl", ["x = 1\n"]), split="all", ctx=4)
    with pytest.raises(CorpusError, match=r"holds \d+ tokens of Python source \(1 documents; 0 skipped.*Ask for at most"):
        labelled_tokens(tiny_tokenizer, cfg, 10_000)


def test_labelled_tokens_refuses_pretokenized_rows_and_slow_tokenizers(tiny_tokenizer, tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps({"input_ids": list(range(3, 19))}) + "\n" for _ in range(4)))
    with pytest.raises(CorpusError, match="pre-tokenized .* need the source text"):
        labelled_tokens(tiny_tokenizer, CorpusConfig(source=str(path), split="all", ctx=16), 16)

    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="need a fast tokenizer"):
        labelled_tokens(Slow(), CorpusConfig(split="eval"), 16)


@pytest.mark.parametrize("settings", [{}, {"separator": "bos"}, {"prepend_bos": True, "exclude_first": 2}])
def test_python_documents_pack_exactly_like_training_data(tiny_tokenizer, tmp_path, settings):
    from sae_hooks.data import load_token_tensor

    cfg = CorpusConfig(source=write_corpus(tmp_path / "p.jsonl", PY_DOCS * 4), split="all", ctx=16, **settings)
    toks = labelled_tokens(tiny_tokenizer, cfg, 160)
    ref = load_token_tensor(tiny_tokenizer, cfg, 160)
    assert torch.equal(toks.input_ids, ref.input_ids) and torch.equal(toks.mask, ref.mask)
    special = torch.isin(toks.input_ids, torch.tensor([tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id]))
    assert not toks.labels[special].any() and toks.labels[~special].any()
