"""The ``sae-hooks`` command line: one module per subcommand, listed in COMMANDS.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> dict`` (and optionally ``resume_hint(argv) -> str``, said after an interrupt).
``main`` prints the returned dict as one JSON object on the last line when ``--json`` is given;
otherwise the subcommand prints its own readable report.

Every failure ends the same way: one line ``sae-hooks CMD: error: ...`` on stderr and a non-zero
exit (2 for a bad flag, 1 otherwise), whatever raised it (bad input, a missing file or package, an
OS or runtime error); with ``--json`` the last stdout line is then ``{"error": ..., "command": CMD}``.
``--debug`` (or ``SAE_HOOKS_DEBUG=1``) lets the exception through with its traceback, for bug
reports. SIGINT / SIGTERM print one line (for ``train``: where it stopped and the command that
resumes) and exit 130 / 143. Warnings print as one line ``sae-hooks CMD: warning: ...``.

    $ sae-hooks info --json
    $ python -m sae_hooks train --tokens 200000
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings

from ..interrupts import RunInterrupted

# Subcommand name -> module under sae_hooks.cli. Imported only when chosen, so that
# `sae-hooks info` does not pay for the trainer's imports.
COMMANDS: dict[str, str] = {
    "info": "info",
    "train": "train",
    "eval": "evaluate",
    "steer": "steer",
    "pretrained": "pretrained",
    "features": "features",
    "dashboard": "dashboard",
    "synth": "synth",
    "progressive": "progressive",
    "interp": "interp",
    "cache": "cache",
}


def _module(name: str):
    return importlib.import_module(f"{__name__}.{COMMANDS[name]}")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag ends like any other user error: one line on stderr (no usage
    block), exit 2, and with ``--json`` the JSON error object as the last line of stdout."""

    def __init__(self, *args, as_json: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.as_json = as_json

    def error(self, message: str):
        _fail(self.prog, f"{message}. See {self.prog} --help.", self.as_json)
        raise SystemExit(2)


def _fail(prog: str, message: str, as_json: bool, label: str = "error", **extra) -> None:
    message = " ".join(message.split())  # one line, whatever the exception's text looked like
    print(f"{prog}: {label}: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "command": prog.split()[-1], **extra}))


USER_ERRORS = (ValueError, FileNotFoundError, TypeError, OSError, ImportError)
"""Exceptions whose message is the whole story (what, where, how to fix); others are named by type."""


def _describe(e: BaseException) -> str:
    text = str(e).strip() or "no message"
    if isinstance(e, USER_ERRORS):
        return text
    return f"{type(e).__name__}: {text} (rerun with --debug for the traceback)"


def _one_line_warnings(prog: str):
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)
    return show


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, unless its help already says it or the default is None/False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default:" in text or action.default is None or isinstance(action.default, bool) \
                or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser(as_json: bool = False) -> argparse.ArgumentParser:
    parser = _Parser(prog="sae-hooks", description="Attach sparse autoencoders to live language models.",
                     as_json=as_json)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _module(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP,
                           formatter_class=_Help)
        _add_common(mod, p)
    return parser


def _add_common(mod, p: argparse.ArgumentParser) -> None:
    mod.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of output")
    p.add_argument("--debug", action="store_true",
                   help="on failure, show the traceback instead of one line (also: SAE_HOOKS_DEBUG=1)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    if not argv or argv[0] not in COMMANDS:
        if not argv:
            build_parser().print_help()
            return 2
        if argv[0] in ("-h", "--help"):
            build_parser().parse_args(argv)  # prints the help and exits 0
        _fail("sae-hooks", f"unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}. See sae-hooks --help.", as_json)
        return 2
    # Build only the chosen subcommand's parser.
    mod = _module(argv[0])
    p = _Parser(prog=f"sae-hooks {argv[0]}", description=mod.HELP, formatter_class=_Help, as_json=as_json)
    _add_common(mod, p)
    args = p.parse_args(argv[1:])
    prog = f"sae-hooks {argv[0]}"
    debug = args.debug or os.environ.get("SAE_HOOKS_DEBUG", "") not in ("", "0")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(prog)
            result = mod.run(args)
    except RunInterrupted as e:
        hint = mod.resume_hint(argv[1:]) if hasattr(mod, "resume_hint") and e.resumable else ""
        _fail(prog, f"{e}. {hint}", args.json, label="interrupted", interrupted=e.signal)
        return e.exit_code
    except KeyboardInterrupt:
        _fail(prog, "interrupted (SIGINT)", args.json, label="interrupted", interrupted="SIGINT")
        return 130
    except Exception as e:  # noqa: BLE001 - every failure ends as one line unless --debug
        if debug:
            raise
        _fail(prog, _describe(e), args.json)
        return 1
    if args.json:
        print(json.dumps(result, default=str))
    return 0
