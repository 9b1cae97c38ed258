"""Checkpoints: atomic, the last N kept, never half-written."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state


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
