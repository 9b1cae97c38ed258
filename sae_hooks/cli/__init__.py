"""The ``sae-hooks`` command line: one module per subcommand, listed in COMMANDS.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> dict``. ``main`` prints the returned dict as one JSON object on the last line when
``--json`` is given; otherwise the subcommand prints its own readable report.

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
}


def _module(name: str):
    return importlib.import_module(f"{__name__}.{COMMANDS[name]}")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, unless its help already says it or the default is None/False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default:" in text or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae-hooks", description="Attach sparse autoencoders to live language models.")
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
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints argparse's own error for an unknown command
        return 2
    # Build only the chosen subcommand's parser.
    mod = _module(argv[0])
    p = argparse.ArgumentParser(prog=f"sae-hooks {argv[0]}", description=mod.HELP,
                                formatter_class=_Help)
    mod.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of output")
    args = p.parse_args(argv[1:])
    try:
        result = mod.run(args)
    except (ValueError, FileNotFoundError, TypeError, OSError) as e:
        # User errors: one clear message, no traceback. Programming errors still raise.
        print(f"sae-hooks {argv[0]}: error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(e), "command": argv[0]}))
        return 1
    if args.json:
        print(json.dumps(result, default=str))
    return 0
