"""Kill -9 mid-run, resume, and get bitwise the weights of an uninterrupted run; no half-written files.

The runs go through the command line in a subprocess (``sae_hooks.cli.main``), slowed down per
step so that a kill lands mid-run; documents are shuffled (the default), so the resumed stream must
reproduce the seeded document order too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import torch
from safetensors.torch import load_file

from sae_hooks.checkpoint import list_checkpoints, load_checkpoint
from tests.test_train import tiny_env, train_argv  # noqa: F401  (tiny_env is a fixture)

RUNNER = textwrap.dedent("""
    import json, sys, time, torch
    import sae_hooks.trainer as trainer
    from sae_hooks.cli import main
    torch.set_num_threads(1)
    delay, step = float(sys.argv[1]), trainer.Trainer.step
    def slow(self, acts):  # a slower step, so that a signal can land mid-run
        out = step(self, acts)
        time.sleep(delay)
        return out
    trainer.Trainer.step = slow
    sys.exit(main(["train", *json.loads(sys.argv[2])]))
""")


def start_cli(tmp_path, argv, delay):
    """``sae-hooks train ARGV`` in a subprocess whose steps take ``delay`` seconds longer."""
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return subprocess.Popen([sys.executable, str(script), str(delay), json.dumps([str(a) for a in argv])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(predicate, proc, timeout=240.0) -> None:
    """Poll until ``predicate()`` holds; fails if ``proc`` ends first or the time runs out."""
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended first: " + proc.stderr.read()[-2000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def saved_weights(out):
    folder = out / "saes"
    return {p.name: load_file(str(p / "sae_weights.safetensors")) for p in sorted(folder.iterdir())}


def assert_same_weights(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)


def rows_logged(out) -> int:
    """Complete rows in metrics.jsonl (a run may be writing the next one)."""
    path = out / "metrics.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


def logged_steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


RESUME_RUN = ["--arch", "topk", "--arch", "batchtopk", "--tokens", "6144", "--checkpoint-every", "4",
              "--mix-batches", "4", "--eval-every", "0", "--eval-ce-tokens", "0", "--keep-checkpoints", "2"]
"""24 steps of two SAEs, a checkpoint at the end of every 4-batch block."""


def test_sigkill_then_resume_is_bitwise_equal(tiny_env, tmp_path):
    ref_out, cut_out = tmp_path / "ref", tmp_path / "cut"
    ref = start_cli(tmp_path, train_argv(tiny_env, ref_out, *RESUME_RUN), 0.0)
    cut = start_cli(tmp_path, train_argv(tiny_env, cut_out, *RESUME_RUN), 0.4)
    wait_for(lambda: list_checkpoints(cut_out / "checkpoints"), cut)
    first = load_checkpoint(list_checkpoints(cut_out / "checkpoints")[0])["trainer"]["step"]
    wait_for(lambda: rows_logged(cut_out) >= first + 2, cut)  # land between checkpoints, mid-block
    cut.send_signal(signal.SIGKILL)
    cut.wait()
    files = sorted(p.name for p in (cut_out / "checkpoints").iterdir())
    assert files and all(f.startswith("ckpt_") and f.endswith(".pt") for f in files), files  # no temp left
    step = load_checkpoint(cut_out / "checkpoints" / files[-1])["trainer"]["step"]
    assert 0 < step < 24 and logged_steps(cut_out)[-1] > step  # steps after the checkpoint were logged
    assert not (cut_out / "saes").exists()

    resumed = start_cli(tmp_path, train_argv(tiny_env, cut_out, *RESUME_RUN, "--resume"), 0.0)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]

    assert_same_weights(saved_weights(ref_out), saved_weights(cut_out))
    assert set(saved_weights(ref_out)) == {"batchtopk_resid_post.1", "topk_resid_post.1"}
    ra = json.loads((ref_out / "metrics.json").read_text())
    rb = json.loads((cut_out / "metrics.json").read_text())
    assert ra["tokens"] == rb["tokens"] and ra["steps"] == rb["steps"] and rb["resumed_from_step"] == step
    assert [s["fvu"] for s in ra["saes"]] == [s["fvu"] for s in rb["saes"]]
    assert logged_steps(cut_out) == list(range(1, 25))  # the rows after the checkpoint were cut, then logged once
    assert json.loads((ref_out / "run.json").read_text())["settings"]["shuffle"] is True
