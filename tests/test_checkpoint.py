"""Checkpoints: atomic, the last N kept, never half-written."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_roundtrip_and_keep(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, {"w": torch.full((3,), float(step)), "step": step}, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ckpt_00000010.pt", "ckpt_00000015.pt"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 15 and torch.equal(state["w"], torch.full((3,), 15.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary files left


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom")


def test_failed_write_leaves_previous_checkpoints_intact(tmp_path):
    save_checkpoint(tmp_path, 1, {"ok": 1})
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(tmp_path, 2, {"bad": _Unpicklable()})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_00000001.pt"]
    assert load_checkpoint(latest_checkpoint(tmp_path)) == {"ok": 1}


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, 1, {}, keep=0)


def test_rng_state_roundtrip():
    s = rng_state()
    a = torch.rand(3)
    set_rng_state(s)
    assert torch.equal(torch.rand(3), a)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")  # loading this without weights_only would create the marker file


def test_a_crafted_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    from sae_hooks.checkpoint import CheckpointError

    marker = tmp_path / "payload_ran"
    torch.save({"trainer": _Payload(marker)}, tmp_path / "ckpt_00000003.pt")
    with pytest.raises(CheckpointError, match=r"ckpt_00000003.pt was refused: it holds Python objects.*nothing in it "
                                              r"was run"):
        load_checkpoint(tmp_path / "ckpt_00000003.pt")
    assert not marker.exists()


def test_load_latest_falls_back_past_unusable_checkpoints(tmp_path):
    from sae_hooks.checkpoint import CheckpointError, load_latest

    with pytest.raises(CheckpointError, match="There is no checkpoint"):
        load_latest(tmp_path)
    save_checkpoint(tmp_path, 4, {"step": 4, "rng": rng_state()}, keep=5)
    good = (tmp_path / "ckpt_00000004.pt").read_bytes()
    (tmp_path / "ckpt_00000008.pt").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "ckpt_00000012.pt").write_bytes(b"")  # emptied
    torch.save({"x": _Payload(tmp_path / "m")}, tmp_path / "ckpt_00000016.pt")  # crafted
    found = load_latest(tmp_path)
    assert found.path.name == "ckpt_00000004.pt" and found.state["step"] == 4
    reasons = {p.name: why for p, why in found.skipped}
    assert list(reasons) == ["ckpt_00000016.pt", "ckpt_00000012.pt", "ckpt_00000008.pt"]
    assert "refused" in reasons["ckpt_00000016.pt"]
    assert "unreadable" in reasons["ckpt_00000012.pt"] and "unreadable" in reasons["ckpt_00000008.pt"]
    (tmp_path / "ckpt_00000004.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="No checkpoint in .* loads"):
        load_latest(tmp_path)
    assert not (tmp_path / "m").exists()


def test_a_full_disk_names_the_file_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    import errno

    save_checkpoint(tmp_path, 1, {"ok": 1})

    def full(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"Could not write checkpoint .*ckpt_00000002.pt: No space left on device.*"
                                      r"intact \(ckpt_00000001.pt\)") as e:
        save_checkpoint(tmp_path, 2, {"ok": 2})
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_00000001.pt"]
    assert load_checkpoint(tmp_path / "ckpt_00000001.pt") == {"ok": 1}


def test_checkpoint_files_take_the_umask_like_any_other_file(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path, 1, {"ok": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the colleagues a run folder is shared with
