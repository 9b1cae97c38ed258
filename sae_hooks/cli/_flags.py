"""Flags from a config dataclass: one flag per field, the field's docstring its help, its default the default.

The configuration class stays the one source of truth: a new field is a new flag, and a changed
default changes the command line too. Types come from the annotations: ``bool`` fields become
switches (``--x`` when the default is False, ``--no-x`` when it is True), ``tuple[str, ...]``
fields repeatable flags, ``int | None`` optional numbers; the class's ``CHOICES`` table lists the
valid values of string fields.

    add_config_flags(parser, RunConfig, flags={"hooks": "hook"})
    cfg = config_from_args(RunConfig, parser.parse_args())
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["add_config_flags", "config_from_args", "field_docs"]

C = TypeVar("C")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (and its dataclass bases), whitespace
    collapsed; fields without one are absent.

        field_docs(RunConfig)["tokens"]    # 'Training tokens (fed to the model, all ranks together).'
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # no source (a frozen app): flags without help
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _flag(name: str, flags: Mapping[str, str]) -> str:
    return "--" + flags.get(name, name).replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, flags: Mapping[str, str] | None = None,
                     metavars: Mapping[str, str] | None = None) -> None:
    """Add one flag per field of dataclass ``cls``; ``flags`` renames some (field -> flag name without
    dashes, e.g. ``{"hooks": "hook"}``), ``metavars`` sets their placeholders."""
    flags, metavars = flags or {}, metavars or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    choices: Mapping[str, tuple] = getattr(cls, "CHOICES", {})
    for f in dataclasses.fields(cls):
        doc = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        kind, default = hints[f.name], f.default
        metavar = metavars.get(f.name, flags.get(f.name, f.name).upper())
        if kind is bool:
            if default:
                parser.add_argument(f"--no-{flags.get(f.name, f.name).replace('_', '-')}", dest=f.name,
                                    action="store_false", help=f"(on by default; this flag turns it off) {doc}")
            else:
                parser.add_argument(_flag(f.name, flags), dest=f.name, action="store_true", help=doc)
        elif typing.get_origin(kind) is tuple:
            shown = ", ".join(map(str, default)) or "none"
            parser.add_argument(_flag(f.name, flags), dest=f.name, action="append", default=None,
                                metavar=metavar, help=f"{doc} Repeatable (default: {shown}).")
        else:
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            base = args[0] if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union else kind
            parser.add_argument(_flag(f.name, flags), dest=f.name, type=base, default=default,
                                choices=choices.get(f.name), metavar=None if f.name in choices else metavar, help=doc)


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """An instance of ``cls`` from the flags ``add_config_flags`` added (repeatable flags not given keep
    the field's default).

        cfg = config_from_args(RunConfig, args)
    """
    kw: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        if isinstance(v, list):
            v = tuple(v)
        elif v is None and typing.get_origin(hints[f.name]) is tuple:
            continue
        kw[f.name] = v
    return cls(**{**kw, **overrides})
