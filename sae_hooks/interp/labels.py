"""True labels for the tokens of Python source, from Python's own ``tokenize`` and ``ast``.

Every label is a set of character spans of the source text; a model token carries a label when
its characters lie in those spans. The label set is hierarchical where the grammar is: a child's
spans lie inside its parent's (``keyword`` ⊇ ``keyword.def``; ``string`` ⊇ ``string.docstring``),
and so, by the rule below, a token that carries a child carries its parent too.

    >>> spans = label_spans("def f(x):\\n    return x  # done\\n")
    >>> spans["keyword.return"]
    [(14, 20)]
    >>> token_labels(text, offsets).labels      # [n_tokens, len(LABELS)] bool, offsets from a fast tokenizer

**Tokens and spans.** A token ``[a, b)`` carries label L when at least one of its characters lies
in a span of L and every other character of it is whitespace. So ``" return"`` carries
``keyword.return`` (its leading space is whitespace), ``"\\n    "`` between two statements of a
function carries ``in_function`` and ``newline``, and a token that straddles a span boundary with
non-whitespace on both sides (``("`` = an operator and the start of a string) carries neither of the
two labels it straddles; ``TokenLabels.straddled`` marks such tokens. Labels that
describe regions (``in_function``, ``depth_ge2``, ...) are unaffected by straddling inside them.

**Definitions** (the ``description`` of each entry of ``LABELS`` says the same):

- lexical labels come from ``tokenize`` and cover only code outside string literals: the
  replacement fields of an f-string are part of the string (so the labels do not depend on the
  Python version: 3.12 tokenizes inside f-strings, 3.11 does not);
- ``string.fstring`` is a whole f-string literal, nested f-strings and replacement fields included;
  ``string.docstring`` is a string literal that is the first statement of a module, class or
  function body (``ast.get_docstring``'s notion); ``string.other`` is every other non-f literal
  (bytes included);
- ``keyword`` is every hard keyword (``keyword.kwlist``); soft keywords (``match``, ``case``,
  ``_``) count as ``name``, since tokenize reports them as names;
- ``name.builtin`` is an ``ast.Name`` read (Load) whose identifier is a builtin's name, shadowed or not;
- regions (``in_function``, ``in_class``, ``in_except``) span a body from the line after its
  header (from its first statement on a one-line body) to the end of its last statement: comments
  and blank lines inside it are included, the header and any comment after the last statement are
  not; ``in_except`` is an ``except`` clause's body, not its header;
- ``depth_ge2`` covers the code tokens (and the closing newline) of logical lines indented two or
  more levels; comments and blank lines carry no depth.

A text that ``ast.parse`` or ``tokenize`` rejects raises ``NotPython``; callers skip it and count it.
"""

from __future__ import annotations

import ast
import bisect
import builtins
import io
import keyword
import re
import tokenize
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Label(NamedTuple):
    """One token label."""

    name: str
    """Dotted name; the part before the last dot is the parent (``keyword.def`` -> ``keyword``)."""
    parent: str | None
    """The label this one refines, or None at the top of the hierarchy."""
    description: str
    """What the label marks, in one sentence."""


# The 16 most frequent hard keywords of the stdlib corpus (train split, CPython 3.11, counted with
# tokenize): if 20.7k, def 15.9k, return 14.1k, None 11.5k, in 7.4k, not 6.9k, is 6.6k, else 5.0k,
# for 4.3k, raise 4.3k, and 3.8k, import 3.8k, try 3.0k, except 2.9k, class 2.8k, False 2.4k.
KEYWORDS = ("if", "def", "return", "None", "in", "not", "is", "else", "for", "raise", "and", "import",
            "try", "except", "class", "False")

LABELS: tuple[Label, ...] = (
    Label("comment", None, "a comment, from # to the end of the line"),
    Label("string", None, "a string or bytes literal (an f-string as a whole)"),
    Label("string.docstring", "string", "a string literal that is the first statement of a module, class or function"),
    Label("string.fstring", "string", "an f-string literal, replacement fields and nested f-strings included"),
    Label("string.other", "string", "any other string or bytes literal"),
    Label("number", None, "a numeric literal"),
    Label("operator", None, "an operator or delimiter token (tokenize OP: brackets, dots, commas, =, +, ...)"),
    Label("keyword", None, "a hard keyword (keyword.kwlist)"),
    *(Label(f"keyword.{kw}", "keyword", f"the keyword {kw!r}") for kw in KEYWORDS),
    Label("name", None, "an identifier that is not a hard keyword"),
    Label("name.builtin", "name", "a name read (ast.Name, Load) that is a builtin's name"),
    Label("name.self", "name", "the identifier 'self'"),
    Label("name.attribute", "name", "the attribute name after a dot (ast.Attribute.attr)"),
    Label("name.defined", "name", "a name being defined: function, class, assigned variable or parameter"),
    Label("name.defined.function", "name.defined", "the name of a function in its def statement"),
    Label("name.defined.class", "name.defined", "the name of a class in its class statement"),
    Label("name.defined.variable", "name.defined", "a name bound by assignment, for, with-as or := (ast.Name, Store)"),
    Label("name.defined.parameter", "name.defined", "a parameter name (ast.arg)"),
    Label("newline", None, "the end of a line outside string literals (tokenize NEWLINE or NL)"),
    Label("decorator", None, "a decorator line, from @ to the end of its expression"),
    Label("import", None, "an import or from-import statement"),
    Label("in_function", None, "inside a function body (def or async def)"),
    Label("in_class", None, "inside a class body"),
    Label("in_except", None, "inside the body of an except clause"),
    Label("depth_ge2", None, "a code token of a logical line indented two or more levels"),
)
LABEL_NAMES: tuple[str, ...] = tuple(label.name for label in LABELS)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABEL_NAMES)}

_BUILTINS = frozenset(dir(builtins))
# Python 3.12 tokenizes inside f-strings; 3.11 and earlier give one STRING token per literal.
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)
_DEPTH_TYPES = {tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING, tokenize.NEWLINE}
# Every code point for which str.isspace() is true (the whitespace of the token rule); the last
# one is U+3000, the ideographic space (a test checks the whole Unicode range).
_SPACE_CODES = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)


def children(name: str) -> list[str]:
    """Labels whose parent is ``name``, in table order.

        >>> children("string")
        ['string.docstring', 'string.fstring', 'string.other']
    """
    if name not in LABEL_INDEX:
        raise ValueError(f"Unknown label {name!r}; valid: {', '.join(LABEL_NAMES)}.")
    return [label.name for label in LABELS if label.parent == name]


class NotPython(ValueError):
    """The text is not Python source that ``ast.parse`` and ``tokenize`` accept."""


class TokenLabels(NamedTuple):
    """Labels of the tokens of one document."""

    labels: np.ndarray
    """[n_tokens, len(LABELS)] bool: token t carries label l."""
    straddled: np.ndarray
    """[n_tokens, len(LABELS)] bool: the token overlaps the label's spans but also holds
    non-whitespace outside them, so it does not carry the label."""


Span = tuple[int, int]


def label_spans(text: str) -> dict[str, list[Span]]:
    """Character spans ``[start, end)`` of every label in ``text``, keyed by label name.

        >>> label_spans("x = 1  # one\\n")["comment"]
        [(7, 12)]

    Raises ``NotPython`` (with the parser's message) when Python cannot parse or tokenize ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"label_spans needs the source text as a str, got {type(text).__name__}.")
    norm, back = _normalise_newlines(text)
    try:
        with warnings.catch_warnings():  # invalid escape sequences and the like warn while parsing
            warnings.simplefilter("ignore")
            tree = ast.parse(norm)
            tokens = list(tokenize.generate_tokens(io.StringIO(norm).readline))
    except (SyntaxError, ValueError, tokenize.TokenError, RecursionError, MemoryError) as e:
        raise NotPython(f"{type(e).__name__}: {e}") from None
    spans: dict[str, list[Span]] = {name: [] for name in LABEL_NAMES}
    pos = _Positions(norm)
    lexical = _lexical(tokens, pos, spans)
    _syntactic(tree, norm, pos, lexical, spans)
    if back is not None:  # back to the offsets of the original text
        spans = {k: [(int(back[s]), int(back[e])) for s, e in v] for k, v in spans.items()}
    return {k: sorted(v) for k, v in spans.items()}


def token_labels(text: str, offsets: Sequence[tuple[int, int]] | np.ndarray) -> TokenLabels:
    """Labels of the tokens whose character ``offsets`` (``[start, end)`` into ``text``) are given.

        >>> enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        >>> token_labels(text, enc["offset_mapping"]).labels.shape
        (len(enc["input_ids"]), len(LABELS))
    """
    spans = label_spans(text)
    n = len(text)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    a = np.clip(off[:, 0], 0, n)
    b = np.clip(off[:, 1], a, n)
    length = b - a
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    space = np.isin(codes, _SPACE_CODES)
    labels = np.zeros((len(off), len(LABELS)), dtype=bool)
    straddled = np.zeros_like(labels)
    for j, name in enumerate(LABEL_NAMES):
        if not spans[name]:
            continue
        cover = np.zeros(n + 1, dtype=np.int32)  # +1 at a span's start, -1 at its end
        s, e = np.array(spans[name], dtype=np.int64).T
        np.add.at(cover, s, 1)
        np.add.at(cover, e, -1)
        inside = np.cumsum(cover[:n]) > 0
        in_count = np.concatenate(([0], np.cumsum(inside)))
        ok_count = np.concatenate(([0], np.cumsum(inside | space)))
        has = in_count[b] - in_count[a] > 0
        carries = has & (ok_count[b] - ok_count[a] == length)
        labels[:, j] = carries
        straddled[:, j] = has & ~carries
    return TokenLabels(labels, straddled)


# ---------------------------------------------------------------------------------------------


def _normalise_newlines(text: str) -> tuple[str, np.ndarray | None]:
    """(text with \\r\\n and \\r as \\n, map from its offsets back to the original's, or None if unchanged).

    ``ast`` reads \\r\\n and \\r as line ends; ``tokenize`` on a StringIO splits lines at \\n only.
    Parsing one normalised text keeps their (line, column) positions in agreement."""
    if "\r" not in text:
        return text, None
    pieces: list[str] = []
    back: list[int] = []
    i = 0
    for m in re.finditer(r"\r\n?", text):
        pieces.append(text[i:m.start()])
        back.extend(range(i, m.start()))
        pieces.append("\n")
        back.append(m.start())
        i = m.end()
    pieces.append(text[i:])
    back.extend(range(i, len(text)))
    back.append(len(text))
    return "".join(pieces), np.array(back, dtype=np.int64)


class _Positions:
    """(line, column) -> character offset; ast columns are UTF-8 byte offsets, tokenize's are characters."""

    def __init__(self, text: str):
        self.lines = text.split("\n")
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line) + 1)
        self.n = len(text)

    def char(self, line: int, col: int) -> int:
        """Offset of tokenize's (line, character column)."""
        if line - 1 >= len(self.lines):
            return self.n
        return min(self.starts[line - 1] + col, self.n)

    def byte(self, line: int, col: int) -> int:
        """Offset of ast's (line, UTF-8 byte column)."""
        if line - 1 >= len(self.lines):
            return self.n
        text = self.lines[line - 1]
        if not text.isascii():
            col = len(text.encode("utf-8")[:col].decode("utf-8", "ignore"))
        return min(self.starts[line - 1] + col, self.n)

    def start(self, node: ast.AST) -> int:
        return self.byte(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> int:
        return self.byte(node.end_lineno, node.end_col_offset)


class _Lexical(NamedTuple):
    """What the syntactic pass needs from the token pass."""

    names: dict[int, int]
    """Start -> end of every NAME token outside string literals (hard keywords excluded)."""
    strings: list[tuple[int, int, bool]]
    """(start, end, is_fstring) of every string literal token, in order."""
    colons: list[int]
    """End of every ':' operator token, in order (a block header ends with one)."""


def _lexical(tokens: list[tokenize.TokenInfo], pos: _Positions, spans: dict[str, list[Span]]) -> _Lexical:
    names: dict[int, int] = {}
    strings: list[tuple[int, int, bool]] = []
    colons: list[int] = []
    level = 0           # indentation level (INDENT / DEDENT)
    fdepth = 0          # f-string nesting (Python >= 3.12)
    fstart = 0
    defines: str | None = None  # "function" / "class" right after def / class

    def add(name: str, s: int, e: int) -> None:
        if e > s:
            spans[name].append((s, e))

    for tok in tokens:
        kind = tok.type
        s, e = pos.char(*tok.start), pos.char(*tok.end)
        if kind == _FSTRING_START:
            if fdepth == 0:
                fstart = s
            fdepth += 1
            continue
        if kind == _FSTRING_END:
            fdepth -= 1
            if fdepth == 0:
                strings.append((fstart, e, True))
                if level >= 2:
                    add("depth_ge2", fstart, e)
            continue
        if fdepth:
            continue  # inside an f-string: part of the literal, not code
        if kind == tokenize.INDENT:
            level += 1
        elif kind == tokenize.DEDENT:
            level -= 1
        elif kind == tokenize.COMMENT:
            add("comment", s, e)
        elif kind == tokenize.NUMBER:
            add("number", s, e)
        elif kind == tokenize.OP:
            add("operator", s, e)
            if tok.string == ":":
                colons.append(e)
        elif kind in (tokenize.NEWLINE, tokenize.NL):
            add("newline", s, e)
        elif kind == tokenize.STRING:
            quote = min(i for i in (tok.string.find("'"), tok.string.find('"')) if i >= 0)
            strings.append((s, e, "f" in tok.string[:quote].lower()))
        elif kind == tokenize.NAME:
            if keyword.iskeyword(tok.string):
                add("keyword", s, e)
                if tok.string in KEYWORDS:
                    add(f"keyword.{tok.string}", s, e)
            else:
                add("name", s, e)
                names[s] = e
                if tok.string == "self":
                    add("name.self", s, e)
                if defines is not None:
                    add(f"name.defined.{defines}", s, e)
            defines = {"def": "function", "class": "class"}.get(tok.string)
        if kind in _DEPTH_TYPES and level >= 2:
            add("depth_ge2", s, e)
    return _Lexical(names, strings, colons)


class _Collector(ast.NodeVisitor):
    """Docstrings, regions and name roles from the syntax tree (f-string insides are not visited:
    they are string, and their positions were unreliable before Python 3.12)."""

    def __init__(self, text: str, pos: _Positions, lexical: _Lexical, spans: dict[str, list[Span]]):
        self.text, self.pos, self.names, self.colons, self.spans = text, pos, lexical.names, lexical.colons, spans
        self.docstrings: list[Span] = []

    def _name(self, label: str, start: int) -> None:
        end = self.names.get(start)  # only where a NAME token starts: keeps child ⊆ name exactly
        if end is not None:
            self.spans[label].append((start, end))

    def _stmt_start(self, node: ast.stmt) -> int:
        decorators = getattr(node, "decorator_list", None)
        if decorators:
            return self.text.rfind("@", 0, self.pos.start(decorators[0]))
        return self.pos.start(node)

    def _body(self, label: str, body: list[ast.stmt]) -> None:
        if not body:
            return
        start = self._stmt_start(body[0])
        # A body on the lines below its header starts on the line after the header's colon, so
        # that comments above its first statement are inside it.
        i = bisect.bisect_right(self.colons, start) - 1
        if i >= 0:
            newline = self.text.find("\n", self.colons[i], start)
            if newline != -1:
                start = newline + 1
        self.spans[label].append((start, self.pos.end(body[-1])))

    def _docstring(self, node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        first = node.body[0] if node.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            self.docstrings.append((self.pos.start(first.value), self.pos.end(first.value)))

    def _definition(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef, region: str) -> None:
        self._docstring(node)
        self._body(region, node.body)
        for dec in node.decorator_list:
            self.spans["decorator"].append((self.text.rfind("@", 0, self.pos.start(dec)), self.pos.end(dec)))
        self.generic_visit(node)

    def visit_Module(self, node: ast.Module) -> None:
        self._docstring(node)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._definition(node, "in_function")

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._definition(node, "in_class")

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._body("in_except", node.body)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.spans["import"].append((self.pos.start(node), self.pos.end(node)))

    visit_ImportFrom = visit_Import

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load) and node.id in _BUILTINS:
            self._name("name.builtin", self.pos.start(node))
        elif isinstance(node.ctx, ast.Store):
            self._name("name.defined.variable", self.pos.start(node))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._name("name.attribute", self.pos.end(node) - len(node.attr))
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self._name("name.defined.parameter", self.pos.start(node))
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        pass


def _syntactic(tree: ast.Module, text: str, pos: _Positions, lexical: _Lexical, spans: dict[str, list[Span]]) -> None:
    collector = _Collector(text, pos, lexical, spans)
    collector.visit(tree)
    docstrings = sorted(collector.docstrings)
    starts = [d[0] for d in docstrings]
    for s, e, is_f in lexical.strings:
        spans["string"].append((s, e))
        if is_f:
            spans["string.fstring"].append((s, e))
            continue
        i = bisect.bisect_right(starts, s) - 1
        inside = i >= 0 and docstrings[i][0] <= s and e <= docstrings[i][1]
        spans["string.docstring" if inside else "string.other"].append((s, e))
    defined = [sp for child in children("name.defined") for sp in spans[child]]
    spans["name.defined"] = sorted(set(defined))
