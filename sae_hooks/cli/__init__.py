"""The ``sae-hooks`` command line: one module per subcommand, listed in COMMANDS.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> dict``. ``main`` prints the returned dict as one JSON object on the last line when
``--json`` is given; otherwise the subcommand prints its own readable report. A user error (bad
flag, bad input, missing file or package) prints one line ``sae-hooks CMD: error: ...`` on stderr
and exits non-zero (2 for a bad flag, 1 otherwise); with ``--json`` the last stdout line is then
``{"error": ..., "command": CMD}``.

    $ sae-hooks info --json
    $ python -m sae_hooks train --tokens 200000
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# Subcommand name -> module under sae_hooks.cli. Imported only when chosen, so that
# `sae-hooks info` does not pay for the trainer's imports.
COMMANDS: dict[str, str] = {
    "info": "info",
    "train": "train",
    "eval": "evaluate",
    "steer": "steer",
    "synth": "synth",
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


def _fail(prog: str, message: str, as_json: bool) -> None:
    message = " ".join(message.split())  # one line, whatever the exception's text looked like
    print(f"{prog}: error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "command": prog.split()[-1]}))


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, unless its help already says it or the default is None/False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default:" in text or action.default in (None, False) or action.default is argparse.SUPPRESS:
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
        mod.add_arguments(p)
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line of output")
    return parser


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
    mod.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of output")
    args = p.parse_args(argv[1:])
    try:
        result = mod.run(args)
    except (ValueError, FileNotFoundError, TypeError, OSError, ImportError) as e:
        # User errors (bad input, missing file or package): one clear line, no traceback.
        # Programming errors still raise.
        _fail(f"sae-hooks {argv[0]}", str(e), args.json)
        return 1
    if args.json:
        print(json.dumps(result, default=str))
    return 0
