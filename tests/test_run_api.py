"""A training run from Python in a few lines: the README's example, run as written.

``SNIPPET`` is the README's text. On the tiny model it runs verbatim with ``sae_hooks.RunConfig``
swapped for one whose defaults point at the tiny model and corpus (every line of the example runs;
only what it leaves to its defaults differs); marked slow, it runs as written on the embedded model.
"""

from __future__ import annotations

import re

import pytest

import sae_hooks
from sae_hooks.run import RunConfig
from sae_hooks.sae import load_sae
from tests.test_train import TINY, tiny_env  # noqa: F401  (tiny_env is a fixture)

SNIPPET = '''\
from sae_hooks import RunConfig, train

cfg = RunConfig(archs=("topk", "matching_pursuit"), hooks=("resid_post.6",), tokens=100_000,
                out="runs/api", overwrite=True)
result = train(cfg)
for sae in result.saes:
    print(f"{sae.name}: FVU {sae.fvu:.3f}, L0 {sae.l0:.1f}, saved in {sae.path}")
'''


def _check(ns, capsys, hook):
    result = ns["result"]
    names = [s.name for s in result.saes]
    assert names == [f"topk_{hook}", f"matching_pursuit_{hook}"]
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    for line, s in zip(lines, result.saes):
        assert re.fullmatch(rf"{s.name}: FVU \d\.\d{{3}}, L0 \d+\.\d, saved in runs/api/saes/{s.name}", line), line
        assert load_sae(s.path).architecture == s.arch and 0 <= s.fvu < 1.5
    assert result.steps >= 1 and result.to_dict()["saes"][0]["name"] == names[0]


def test_readme_snippet_on_a_tiny_model(tiny_env, tmp_path, monkeypatch, capsys):
    def tiny_run_config(**kw):
        # The example's own arguments win, except the hook point (the tiny model has 3 layers) and a
        # token budget its 400 paragraphs can hold.
        defaults = {"model": tiny_env["model"], "corpus": tiny_env["corpus"], **TINY}
        return RunConfig(**{**defaults, **kw, "hooks": ("resid_post.1",), "tokens": 4096, "eval_every": 0})

    monkeypatch.setattr(sae_hooks, "RunConfig", tiny_run_config)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(SNIPPET, "README snippet", "exec"), ns)
    _check(ns, capsys, "resid_post.1")
    assert ns["cfg"].overwrite is True
    exec(compile(SNIPPET, "README snippet", "exec"), ns)  # overwrite=True: running it again replaces the run
    _check(ns, capsys, "resid_post.1")


@pytest.mark.slow
def test_readme_snippet_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(SNIPPET, "README snippet", "exec"), ns)
    _check(ns, capsys, "resid_post.6")
    assert ns["result"].saes[0].fvu < 0.8  # 100k tokens of SmolLM2 at resid_post.6 already explain much of it
