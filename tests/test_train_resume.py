"""Kill -9 mid-run, resume, and get bitwise the weights of an uninterrupted run; no half-written files."""

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
    import argparse, json, sys, time, torch
    from sae_hooks.cli import train
    torch.set_num_threads(1)
    delay = float(sys.argv[1])
    p = argparse.ArgumentParser(); train.add_arguments(p); p.add_argument("--json", action="store_true")
    train.execute(p.parse_args(json.loads(sys.argv[2])), on_step=lambda s: time.sleep(delay))
""")


def _start(tmp_path, argv, delay):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return subprocess.Popen([sys.executable, str(script), str(delay), json.dumps(argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _weights(out):
    folder = out / "saes"
    return {p.name: load_file(str(p / "sae_weights.safetensors")) for p in sorted(folder.iterdir())}


def test_sigkill_then_resume_is_bitwise_equal(tiny_env, tmp_path):
    extra = ["--arch", "topk", "--arch", "batchtopk", "--tokens", "6144", "--checkpoint-every", "4",
             "--mix-batches", "4", "--eval-every", "0", "--eval-ce-tokens", "0", "--keep-checkpoints", "2"]
    ref_out, cut_out = tmp_path / "ref", tmp_path / "cut"
    ref = _start(tmp_path, train_argv(tiny_env, ref_out, *extra), 0.0)

    cut = _start(tmp_path, train_argv(tiny_env, cut_out, *extra), 0.4)
    deadline = time.time() + 240
    while not list_checkpoints(cut_out / "checkpoints") and time.time() < deadline and cut.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # land between checkpoints, mid-block
    assert cut.poll() is None, "the run finished before it could be killed; " + cut.stderr.read()[-2000:]
    cut.send_signal(signal.SIGKILL)
    cut.wait()
    files = sorted(p.name for p in (cut_out / "checkpoints").iterdir())
    assert files and all(f.startswith("ckpt_") and f.endswith(".pt") for f in files), files  # no temp left
    step = load_checkpoint(cut_out / "checkpoints" / files[-1])["trainer"]["step"]
    assert 0 < step < 24
    assert not (cut_out / "saes").exists()

    resumed = _start(tmp_path, train_argv(tiny_env, cut_out, *extra, "--resume"), 0.0)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]

    a, b = _weights(ref_out), _weights(cut_out)
    assert a.keys() == b.keys() == {"batchtopk_resid_post.1", "topk_resid_post.1"}
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
    ra = json.loads((ref_out / "metrics.json").read_text())
    rb = json.loads((cut_out / "metrics.json").read_text())
    assert ra["tokens"] == rb["tokens"] and ra["steps"] == rb["steps"]
    assert [s["fvu"] for s in ra["saes"]] == [s["fvu"] for s in rb["saes"]]
