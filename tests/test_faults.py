"""Faults and hostile files on a tiny model: what a careless or hostile user can do to a training run.

Each test injects one fault (a crafted or corrupt checkpoint, a second run on the same folder, a
user's files under --overwrite, a signal mid-run, a full disk, NaN weights, bad input) and checks
the run's answer: one line, a non-zero exit, nothing lost, and resuming bitwise equal to a run that
was never disturbed. Runs compared bitwise use the same thread count and the same entry point.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import shutil
import signal
import socket
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_hooks.checkpoint import list_checkpoints, load_checkpoint
from sae_hooks.cli import main
from sae_hooks.interrupts import RunInterrupted
from sae_hooks.run import train
from sae_hooks.runfolder import LOCK_NAME, RunFolder, RunFolderBusy
from sae_hooks.sae import load_sae
from tests.test_train import tiny_config, tiny_env, train_argv  # noqa: F401  (tiny_env is a fixture)
from tests.test_train_resume import (
    RESUME_RUN,
    assert_same_weights,
    logged_steps,
    rows_logged,
    saved_weights,
    start_cli,
    wait_for,
)

FAULT_RUN = dict(archs=("topk", "batchtopk"), tokens=6144, checkpoint_every=4, mix_batches=4, eval_every=0,
                 eval_ce_tokens=0, keep_checkpoints=2)
"""``RESUME_RUN`` as RunConfig fields: 24 steps, a checkpoint every 4-batch block (steps 4, 8, ...)."""


def err_lines(err: str) -> list[str]:
    """stderr lines that are not progress bars (model loading draws one)."""
    return [ln for ln in err.splitlines() if ln.strip() and "it/s]" not in ln and "Loading weights" not in ln]


class Crash(Exception):
    pass


def crash_at(step: int):
    def on_step(info):
        if info.step == step:
            raise Crash(f"crash at step {step}")
    return on_step


@pytest.fixture(scope="module")
def ref_run(tiny_env):
    """An undisturbed in-process run of FAULT_RUN."""
    out = tiny_env["root"] / "faults_ref"
    if not out.exists():
        train(tiny_config(tiny_env, out, **FAULT_RUN))
    return out


@pytest.fixture(scope="module")
def crashed_run(tiny_env):
    """FAULT_RUN crashed (an exception) after step 10: checkpoints at steps 4 and 8, rows logged up to 9."""
    out = tiny_env["root"] / "faults_crashed"
    if not out.exists():
        with pytest.raises(Crash):
            train(tiny_config(tiny_env, out, **FAULT_RUN), on_step=crash_at(10))
    return out


def copy_of(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def test_fault_run_and_its_cli_flags_agree(tiny_env, tmp_path):
    from tests.test_train import cli_config

    assert cli_config(train_argv(tiny_env, tmp_path, *RESUME_RUN)) == tiny_config(tiny_env, tmp_path, **FAULT_RUN)


# ---- hostile and corrupt checkpoints ---------------------------------------------------------


class _Payload:
    """Pickles as a call to os.system: loading it without weights_only would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def test_crafted_pickle_checkpoint_is_refused_and_never_runs(tiny_env, crashed_run, ref_run, tmp_path, capsys):
    run = copy_of(crashed_run, tmp_path)
    marker = tmp_path / "payload_ran"
    torch.save({"trainer": _Payload(marker)}, run / "checkpoints" / "ckpt_00000012.pt")  # dropped in as the newest
    argv = ["train", *train_argv(tiny_env, run, *RESUME_RUN, "--resume")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    warn = [ln for ln in err_lines(err) if "warning" in ln]
    assert len(warn) == 1 and "skipped ckpt_00000012.pt" in warn[0] and "refused" in warn[0] \
        and "nothing in it was run" in warn[0] and "Resuming from ckpt_00000008.pt" in warn[0]
    assert not marker.exists()
    assert json.loads(out.strip().splitlines()[-1])["resumed_from_step"] == 8
    assert_same_weights(saved_weights(ref_run), saved_weights(run))

    # The only checkpoint is the crafted one: refused, one line, and the payload still never runs.
    run2 = copy_of(crashed_run, tmp_path / "b")
    for p in list_checkpoints(run2 / "checkpoints"):
        p.unlink()
    torch.save({"trainer": _Payload(marker)}, run2 / "checkpoints" / "ckpt_00000008.pt")
    assert main(["train", *train_argv(tiny_env, run2, *RESUME_RUN, "--resume")]) == 1
    lines = err_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "ckpt_00000008.pt was refused" in lines[0] and "--overwrite" in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "emptied", "random bytes"])
def test_corrupt_newest_checkpoint_resumes_from_the_previous_one_bitwise(tiny_env, crashed_run, ref_run, tmp_path,
                                                                         damage):
    run = copy_of(crashed_run, tmp_path)
    newest = run / "checkpoints" / "ckpt_00000008.pt"
    data = newest.read_bytes()
    newest.write_bytes({"truncated": data[: len(data) // 2], "emptied": b"",
                        "random bytes": random.Random(0).randbytes(len(data))}[damage])
    assert logged_steps(run) == list(range(1, 10))  # on_step raised before step 10 was logged
    with pytest.warns(UserWarning, match=r"skipped ckpt_00000008.pt: Checkpoint .* is unreadable.*Resuming from "
                                         r"ckpt_00000004.pt"):
        r = train(tiny_config(tiny_env, run, resume=True, **FAULT_RUN))
    assert r.resumed_from_step == 4 and r.steps == 24
    assert_same_weights(saved_weights(ref_run), saved_weights(run))
    assert logged_steps(run) == list(range(1, 25))  # rows 5..9 were cut back, then logged once


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(tiny_env, tmp_path, capsys,
                                                                              monkeypatch):
    import sae_hooks.checkpoint as ckpt

    real_save, calls = torch.save, []

    def disk_fills_on_second_checkpoint(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04 partial")  # some bytes made it to disk, then the disk was full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", disk_fills_on_second_checkpoint)
    run = tmp_path / "run"
    assert main(["train", *train_argv(tiny_env, run, *RESUME_RUN)]) == 1
    lines = err_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "Could not write checkpoint" in lines[0] and "ckpt_00000008.pt" in lines[0] \
        and "No space left on device" in lines[0] and "intact (ckpt_00000004.pt)" in lines[0], lines
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt_00000004.pt"]  # no temporary file left
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "ckpt_00000004.pt")["trainer"]["step"] == 4


# ---- run folders: concurrent runs, --overwrite, locks ----------------------------------------


def test_two_runs_on_one_folder_exactly_one_is_refused_naming_the_holder(tiny_env, tmp_path):
    out = tmp_path / "run"
    first = start_cli(tmp_path, train_argv(tiny_env, out, *RESUME_RUN), 0.3)
    wait_for(lambda: (out / LOCK_NAME).is_file() and (out / LOCK_NAME).read_text(), first)
    t0 = time.perf_counter()
    second = start_cli(tmp_path, train_argv(tiny_env, out, *RESUME_RUN, "--k", "8"), 0.0)
    _, err2 = second.communicate(timeout=300)
    refused_in = time.perf_counter() - t0
    assert first.poll() is None, "the first run ended before the second was refused; the test proves nothing"
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 1
    lines = err_lines(err2)
    assert len(lines) == 1 and "is in use by another run" in lines[0] \
        and f"pid {first.pid} on host {socket.gethostname()}" in lines[0], lines
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["k"] == 4 and run["status"] == "finished"  # the first run's files, whole
    assert json.loads((out / "metrics.json").read_text())["steps"] == 24 and logged_steps(out) == list(range(1, 25))
    assert {load_sae(p).cfg.k for p in (out / "saes").iterdir()} == {4}
    assert refused_in < 60  # refused at once, without loading the model or reading the corpus


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tiny_env, tmp_path):
    out = tmp_path / "run"
    holder = RunFolder(out)
    with holder.locked():
        text = (out / LOCK_NAME).read_text()
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in text
        with pytest.raises(RunFolderBusy, match=f"in use by another run \\(pid {os.getpid()} on host"):
            train(tiny_config(tiny_env, out))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert not out.exists()  # created for the lock only, removed with it

    out.mkdir()
    (out / LOCK_NAME).write_text("pid 999999 on host gone-machine, started 2026-01-01 00:00:00")  # its run was killed
    folder = RunFolder(out)
    with folder.locked():
        assert folder.stale_holder.startswith("pid 999999 on host gone-machine")
    r = train(tiny_config(tiny_env, out, tokens=1024, eval_every=0))
    assert r.steps == 4 and not (out / LOCK_NAME).exists()


def test_overwrite_deletes_only_what_a_run_wrote(tiny_env, tmp_path, capsys, monkeypatch):
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("my notes")
    (user / "sub" / "thesis.tex").write_text("\\chapter{}")
    before = sorted(str(p.relative_to(user)) for p in user.rglob("*"))
    for flags in ((), ("--overwrite",)):
        assert main(["train", *train_argv(tiny_env, user, "--tokens", "1024", *flags)]) == 1
        lines = err_lines(capsys.readouterr().err)
        assert len(lines) == 1 and "is not a run folder (no run.json)" in lines[0] and "notes.txt, sub/" in lines[0]
        assert sorted(str(p.relative_to(user)) for p in user.rglob("*")) == before
    monkeypatch.chdir(user)  # --out . --overwrite in a folder of one's own files
    assert main(["train", *train_argv(tiny_env, ".", "--tokens", "1024", "--overwrite")]) == 1
    assert "is not a run folder" in capsys.readouterr().err
    assert sorted(str(p.relative_to(user)) for p in user.rglob("*")) == before and (user / "notes.txt").read_text()

    run = tmp_path / "run"
    train(tiny_config(tiny_env, run, tokens=1024, eval_every=0, checkpoint_every=2))
    (run / "notes.txt").write_text("about this run")  # a user's file beside a run
    r = train(tiny_config(tiny_env, run, tokens=2048, eval_every=0, checkpoint_every=0, overwrite=True))
    assert r.steps == 8 and (run / "notes.txt").read_text() == "about this run"
    assert not (run / "checkpoints").exists()  # the old run's checkpoints went with it
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.json", "metrics.jsonl", "notes.txt",
                                                      "run.json", "saes", "summary.txt"]


# ---- signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig, at", [(signal.SIGINT, 6), (signal.SIGTERM, 8)])  # mid-block, end of a block
def test_signal_stops_after_the_step_and_resume_is_bitwise_equal(tiny_env, ref_run, tmp_path, sig, at):
    out = tmp_path / "run"

    def send(info):
        if info.step == at:
            os.kill(os.getpid(), sig)

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RunInterrupted) as stopped:
        train(tiny_config(tiny_env, out, **FAULT_RUN), on_step=send)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the run's handlers are gone
    e = stopped.value
    assert e.exit_code == 128 + sig and e.resumable and f"at step {at} of 24" in str(e)
    assert load_checkpoint(out / "checkpoints" / f"ckpt_{at:08d}.pt")["in_block"] == at % 4
    for path in (out / "saes").iterdir():
        meta = load_sae(path).metadata["sae_hooks_train"]
        assert meta["partial"] is True and meta["steps"] == at and meta["total_steps"] == 24
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert logged_steps(out) == list(range(1, at + 1))

    r = train(tiny_config(tiny_env, out, resume=True, **FAULT_RUN))
    assert r.resumed_from_step == at
    assert_same_weights(saved_weights(ref_run), saved_weights(out))
    assert logged_steps(out) == list(range(1, 25))
    assert not any("partial" in load_sae(p).metadata["sae_hooks_train"] for p in (out / "saes").iterdir())


@pytest.fixture(scope="module")
def cli_ref_run(tiny_env, tmp_path_factory):
    """An undisturbed ``sae-hooks train`` subprocess run of RESUME_RUN (one thread, like start_cli's)."""
    tmp = tmp_path_factory.mktemp("cli_ref")
    proc = start_cli(tmp, train_argv(tiny_env, tmp / "run", *RESUME_RUN), 0.0)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return tmp / "run"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_at_a_random_step_prints_the_resume_command(tiny_env, cli_ref_run, tmp_path, sig):
    out = tmp_path / "run"
    at = random.Random(int(sig)).randrange(3, 20)  # the step to wait for before signalling
    proc = start_cli(tmp_path, train_argv(tiny_env, out, *RESUME_RUN), 0.3)
    wait_for(lambda: rows_logged(out) >= at, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    lines = err_lines(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"sae-hooks train: interrupted: stopped by {sig.name} at step"), lines
    stopped = int(lines[0].split(" at step ")[1].split()[0])
    assert at <= stopped < 24 and logged_steps(out) == list(range(1, stopped + 1))
    command = shlex.split(lines[0].split("Resume with: ")[1])
    assert command[:2] == ["sae-hooks", "train"] and command[-1] == "--resume"

    resumed = start_cli(tmp_path, command[2:], 0.0)  # exactly the printed command
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert_same_weights(saved_weights(cli_ref_run), saved_weights(out))
    assert logged_steps(out) == list(range(1, 25))  # no duplicate rows


# ---- bad input, runtime errors, damaged SAEs -------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    (["--d-sae", "0"], "RunConfig.d_sae=0; it must be an int >= 1"),
    (["--ctx", "2"], "RunConfig.ctx=2 leaves no next-token prediction to score"),
    (["--sae", "topk:resid_post.1:d_sae=0"], "d_sae=0; it must be >= 1"),
    (["--resume", "--overwrite"], "(--resume and --overwrite): resume continues the run"),
])
def test_bad_input_is_refused_before_any_work(tiny_env, tmp_path, capsys, bad, message):
    assert main(["train", *train_argv(tiny_env, tmp_path / "run", *bad)]) == 1
    lines = err_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tiny_env, tmp_path, capsys):
    assert main(["train", *train_argv(tiny_env, tmp_path / "run", "--device", "cuda")]) == 1
    lines = err_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--device cuda: PyTorch sees no CUDA device here" in lines[0]
    assert not (tmp_path / "run").exists()


def test_runtime_errors_are_one_line_unless_debug(tiny_env, tmp_path, capsys, monkeypatch):
    import sae_hooks.trainer as trainer

    def boom(self, acts):
        raise RuntimeError("boom inside a step")

    monkeypatch.setattr(trainer.Trainer, "step", boom)
    argv = ["train", *train_argv(tiny_env, tmp_path / "a", "--tokens", "1024")]
    assert main(argv) == 1
    lines = err_lines(capsys.readouterr().err)
    assert lines == ["sae-hooks train: error: RuntimeError: boom inside a step (rerun with --debug for the traceback)"]
    with pytest.raises(RuntimeError, match="boom inside a step"):
        main(["train", *train_argv(tiny_env, tmp_path / "b", "--tokens", "1024"), "--debug"])
    monkeypatch.setenv("SAE_HOOKS_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom inside a step"):
        main(["train", *train_argv(tiny_env, tmp_path / "c", "--tokens", "1024")])


def test_resume_says_plainly_what_there_is_to_resume(tiny_env, ref_run, tmp_path, capsys):
    def resume(out, *extra):
        code = main(["train", *train_argv(tiny_env, out, *RESUME_RUN, "--resume", *extra)])
        return code, err_lines(capsys.readouterr().err)

    code, lines = resume(tmp_path / "none")
    assert code == 1 and len(lines) == 1 and "holds no run (no run.json)" in lines[0]
    early = tmp_path / "early"
    with pytest.raises(Crash):
        train(tiny_config(tiny_env, early, **FAULT_RUN), on_step=crash_at(2))  # before the first checkpoint (step 4)
    code, lines = resume(early)
    assert code == 1 and len(lines) == 1 and "has no checkpoint to resume from" in lines[0] \
        and "every 4 steps" in lines[0] and "--overwrite" in lines[0]
    assert logged_steps(early) == [1]  # untouched (step 2 crashed before its row)
    code, lines = resume(copy_of(ref_run, tmp_path / "done"))
    assert code == 1 and len(lines) == 1 and "is finished (24 steps" in lines[0]


def test_equivalent_hook_spellings_resume(tiny_env, crashed_run, ref_run, tmp_path):
    run = copy_of(crashed_run, tmp_path)
    r = train(tiny_config(tiny_env, run, resume=True, **{**FAULT_RUN, "hooks": ("blocks.1.hook_resid_post",)}))
    assert [s.name for s in r.saes] == ["topk_resid_post.1", "batchtopk_resid_post.1"] and r.resumed_from_step == 8
    assert_same_weights(saved_weights(ref_run), saved_weights(run))


@pytest.mark.parametrize("command", ["eval", "steer"])
def test_sae_with_nan_weights_is_refused_in_one_line(tiny_env, ref_run, tmp_path, capsys, command):
    sae = tmp_path / "sae"
    shutil.copytree(ref_run / "saes" / "topk_resid_post.1", sae)
    tensors = load_file(str(sae / "sae_weights.safetensors"))
    tensors["W_dec"][3, 5] = float("nan")
    save_file(tensors, str(sae / "sae_weights.safetensors"))
    extra = ["--tokens", "256"] if command == "eval" else ["--edit", "3:add:5", "--prompt", "w31 w32 w33",
                                                          "--max-new-tokens", "3", "--eval-tokens", "64"]
    code = main([command, "--sae", str(sae), "--model", tiny_env["model"], "--corpus", tiny_env["corpus"],
                 "--ctx", "32", *extra])
    lines = err_lines(capsys.readouterr().err)
    assert code == 1 and len(lines) == 1 and "W_dec" in lines[0] and "sae_weights.safetensors" in lines[0], lines
