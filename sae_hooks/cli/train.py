"""``sae-hooks train``: train one or more SAEs online on a live model; resumable; torchrun-ready.

Each flag is a field of ``sae_hooks.run.RunConfig`` (its docstring is the help, its default the
default); the run itself is ``sae_hooks.run.train``, the run folder's rules ``sae_hooks.runfolder``.
One SAE per ``--arch`` × ``--hook`` (2 archs × 3 hooks = 6 SAEs), all fed by the same stopped
forward per token batch; or ``--sae ARCH:HOOK[:key=value...]`` (repeatable) for SAEs with their
own options.

Run folder ``--out``: ``run.json`` (settings), ``saes/<name>/`` (SAELens v6 layout, takes raw
activations), ``metrics.jsonl`` (training log), ``metrics.json`` (final held-out metrics),
``summary.txt``, ``curves.png``, ``checkpoints/``. A folder that holds another run is refused
unless ``--resume`` (continue it; settings must match) or ``--overwrite`` (replace it). Ctrl-C or
SIGTERM stops after the current step, saves a checkpoint and the SAEs so far, and prints the
command that resumes (exit 130 / 143).

Data parallel: ``torchrun --nproc_per_node=N -m sae_hooks train ...`` (see ``sae_hooks.distributed``).

    $ sae-hooks train --tokens 400000 --out runs/l6 --json
    $ sae-hooks train --arch topk --arch matching_pursuit --hook resid_post.3 --hook resid_post.6 --out runs/grid
"""

from __future__ import annotations

import argparse
import shlex

from ..run import RunConfig, train
from ..run_report import summary_text
from ._flags import add_config_flags, config_from_args

HELP = "train SAEs online on a live model (several at once, resumable, data-parallel under torchrun)"

FLAGS = {"hooks": "hook", "archs": "arch", "saes": "sae", "l1_coef": "l1"}
"""RunConfig fields whose flag is spelled differently (repeatable flags are singular)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flags(p, RunConfig, flags=FLAGS, metavars={"saes": "ARCH:HOOK[:key=value...]"})


def run(args: argparse.Namespace) -> dict:
    from .._malloc import tune_malloc

    tune_malloc()  # the CLI process is a training run: keep step buffers in the heap (SAE_HOOKS_MALLOC=0: off)
    return execute(args)


def execute(args: argparse.Namespace) -> dict:
    """The flags as a RunConfig, trained; the result as the ``--json`` dict."""
    result = train(config_from_args(RunConfig, args))
    if not args.json:
        print(summary_text(result))
    return result.to_dict()


def resume_hint(argv: list[str]) -> str:
    """The command that continues an interrupted run started with ``argv`` (the flags after ``train``)."""
    flags = [a for a in argv if a not in ("--overwrite", "--resume")]
    return "Resume with: sae-hooks train " + shlex.join([*flags, "--resume"])
