"""Feature pages: the one-pass profile, context windows, the static site (in real headless Chromium),
``sae-hooks features`` / ``sae-hooks dashboard`` and their bad inputs.

Chromium is Debian's ``chromium``; where it is missing the set-up installs it with apt-get (root
only), and the browser tests skip with the reason only where that is impossible.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from sae_hooks.dashboard import DashboardConfig, build_dashboard, choose_latents, context_windows, profile, site_bound
from sae_hooks.data import CorpusConfig, iter_batches
from sae_hooks.sae import make_sae

from .conftest import TINY_VOCAB, make_tiny

HOOK = "resid_post.1"
WORDS = [chr(97 + i) for i in range(26)] + [f"w{i}" for i in range(29, TINY_VOCAB)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A text file of random words of the tiny vocabulary, one paragraph per document."""
    g = torch.Generator().manual_seed(5)
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    paras = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (60,), generator=g)) for _ in range(40)]
    path.write_text("\n\n".join(paras))
    return path


@pytest.fixture
def sae():
    s = make_sae("topk", d_in=64, d_sae=96, k=6, seed=0, metadata={"hook_name": HOOK, "model_name": "tiny-llama"})
    return s.eval().requires_grad_(False)


def batches(tokenizer, corpus, n_tokens=960):
    return iter_batches(tokenizer, CorpusConfig(source=str(corpus), split="all", ctx=16), 4, max_tokens=n_tokens)


def brute_codes(adapter, sae, corpus):
    """Every batch's codes, masked as harvest masks them: [rows, ctx, d_sae]."""
    out, ids = [], []
    for b in batches(adapter.tokenizer, corpus):
        z = sae.encode(adapter.capture(b.input_ids, [HOOK])[HOOK]) * b.mask[..., None]
        out.append(z)
        ids.append(b.input_ids)
    return torch.cat(out), torch.cat(ids)


def test_profile_keeps_every_counted_code(tiny_hf, sae, corpus):
    prof = profile(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), k=5)
    z, ids = brute_codes(tiny_hf, sae, corpus)
    h = prof.harvest
    assert torch.equal(h.input_ids, ids)
    assert torch.equal(h.fire_count, (z > 0).sum((0, 1)))
    for latent in range(sae.cfg.d_sae):
        want = z[..., latent][z[..., latent] > 0]
        got = prof.codes_of(latent)
        assert got.numel() == int(h.fire_count[latent])
        torch.testing.assert_close(got.sort().values, want.sort().values)  # same products, same batches
    f = int(h.fire_count.argmax())
    q = prof.quantiles(f)
    assert list(q) == ["p10", "p25", "p50", "p75", "p90", "p99"]
    assert q["p10"] <= q["p50"] <= q["p99"] <= float(h.top_values[f, 0]) + 1e-6
    counts, top = prof.histogram(f)
    assert sum(counts) == int(h.fire_count[f]) and top == pytest.approx(float(h.top_values[f, 0]))
    dead = (h.fire_count == 0).nonzero().flatten().tolist()
    for latent in dead[:3]:
        assert prof.quantiles(latent) is None and prof.histogram(latent) == ([], 0.0)


def test_context_windows_shade_each_token_with_its_code(tiny_hf, sae, corpus):
    prof = profile(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), k=4)
    h = prof.harvest
    z, ids = brute_codes(tiny_hf, sae, corpus)
    latents = choose_latents(h.frequency, 5)
    wins = context_windows(tiny_hf, sae, h, latents, n=4, before=5, after=2, batch_size=3)
    for latent in latents:
        assert 1 <= len(wins[latent]) <= 4
        for j, w in enumerate(wins[latent]):
            s, p = int(h.top_seq[latent, j]), int(h.top_pos[latent, j])
            lo = max(0, p - 5)
            assert w.peak == p - lo and w.activation == float(h.top_values[latent, j])
            assert w.tokens == [tiny_hf.tokenizer.decode([int(t)]) for t in ids[s, lo:p + 3]]
            # Re-encoded in other batch shapes: equal up to float rounding of the products.
            torch.testing.assert_close(torch.tensor(w.acts), z[s, lo:p + 3, latent], rtol=1e-4, atol=1e-5)
            assert w.acts[w.peak] > 0


def test_choose_latents_spreads_over_densities():
    freq = torch.tensor([0.0, 0.5, 0.01, 0.2, 0.0, 0.001, 0.05, 0.3])
    assert choose_latents(freq, 3) == [1, 5, 6]  # by density: rarest (5), third of six (6), densest (1)
    assert choose_latents(freq, 50) == [1, 2, 3, 5, 6, 7]  # never the dead ones


def _local_refs(page: Path) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]+)"', page.read_text())


@pytest.fixture
def site(tiny_hf, sae, corpus, tmp_path):
    res = build_dashboard(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), tmp_path / "site",
                          cfg=DashboardConfig(n_latents=12, contexts=4), title="tiny topk",
                          labels={0: "a label <b>with markup</b>"})
    return res


def test_site_is_static_complete_and_within_its_bound(site):
    out = site.out
    pages = sorted((out / "latents").glob("*.html"))
    assert len(pages) == len(site.latents) == 12
    assert (out / "index.html").is_file() and (out / "assets" / "style.css").is_file()
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total == site.bytes <= site.bound == site_bound(DashboardConfig(n_latents=12, contexts=4))
    for page in [out / "index.html", *pages]:
        text = page.read_text()
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text), page  # nothing from the network
        assert "@import" not in text and "url(" not in text
        for ref in _local_refs(page):
            assert (page.parent / ref).resolve().is_file(), (page, ref)  # every link lands on a file of the site
    index = (out / "index.html").read_text()
    for latent in site.latents:
        assert f'href="latents/{latent}.html"' in index
    summary = json.loads((out / "summary.json").read_text())
    assert [r["latent"] for r in summary["latents"]] == site.latents
    assert not list(out.parent.glob(".site.*"))  # no temporary folder left behind
    if 0 in site.latents:
        assert "&lt;b&gt;with markup&lt;/b&gt;" in (out / "latents" / "0.html").read_text()  # labels escaped


def test_shading_follows_the_activation(site):
    page = (site.out / "latents" / f"{site.latents[0]}.html").read_text()
    spans = re.findall(r'<span class="t([^"]*)" data-act="([^"]+)" title="[^"]+"(?: style="([^"]+)")?>', page)
    assert spans
    for cls, act, style in spans:
        a = float(act)
        assert (a > 0) == ("on" in cls) == bool(style), (cls, act, style)
        if a > 0:
            alpha = float(re.search(r"rgba\([^)]*, ([0-9.]+)\)", style).group(1))
            assert 0.12 <= alpha <= 1.0


def test_existing_site_is_kept_unless_overwrite(tiny_hf, sae, corpus, site):
    before = (site.out / "index.html").read_bytes()
    with pytest.raises(ValueError, match="already holds files. Pass --overwrite"):
        build_dashboard(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), site.out)
    assert (site.out / "index.html").read_bytes() == before
    again = build_dashboard(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), site.out, overwrite=True,
                            cfg=DashboardConfig(latents=(3, 5)))
    assert sorted(p.name for p in (site.out / "latents").iterdir()) == ["3.html", "5.html"] and again.latents == [3, 5]


def test_bad_inputs_write_nothing(tiny_hf, sae, corpus, tmp_path, monkeypatch):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"out of range; this SAE has 96 latents \(0\.\.95\)"):
        build_dashboard(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), out, cfg=DashboardConfig(latents=(3, 96)))
    with pytest.raises(ValueError, match="over the 1 MB limit"):
        build_dashboard(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), out,
                        cfg=DashboardConfig(n_latents=5000, max_bytes=1_000_000))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write there"):  # a parent that is a file: unwritable even for root
        build_dashboard(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), blocker / "site")
    with pytest.raises(ValueError, match="is a file"):
        build_dashboard(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), blocker)

    def boom(*a, **k):
        raise RuntimeError("failed half-way")

    monkeypatch.setattr("sae_hooks.dashboard.logit_effects", boom)
    with pytest.raises(RuntimeError, match="failed half-way"):
        build_dashboard(tiny_hf, sae, HOOK, batches(tiny_hf.tokenizer, corpus), out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# ---------------------------------------------------------------------------------------------
# The command line, on a tiny model saved to a folder


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tiny_model")
    make_tiny("llama").save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def sae_dir(sae, tmp_path):
    sae.save(tmp_path / "sae")
    return tmp_path / "sae"


def _cli(capsys, argv):
    from sae_hooks.cli import main

    rc = main(argv + ["--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    return rc, json.loads(lines[-1])


def test_cli_features(capsys, tiny_model_dir, sae_dir, corpus):
    common = ["--sae", str(sae_dir), "--model", str(tiny_model_dir), "--corpus", str(corpus), "--split", "all",
              "--ctx", "16", "--tokens", "960", "--batch-size", "4", "--contexts", "3", "--progress", "off"]
    rc, out = _cli(capsys, ["features", *common, "--latent", "3", "--latent", "7"])
    assert rc == 0, out
    assert [r["latent"] for r in out["latents"]] == [3, 7] and out["hook"] == HOOK and out["d_sae"] == 96
    for r in out["latents"]:
        assert 0 <= r["density"] <= 1 and len(r["promoted"]) == 10 and len(r["suppressed"]) == 10
        assert r["promoted"][0]["score"] >= r["promoted"][-1]["score"]
        for c in r["top_contexts"]:
            assert f"«{c['tokens'][c['peak']]}»" in c["text"] and c["acts"][c["peak"]] == pytest.approx(c["activation"], rel=1e-4)
        if r["fires"]:
            assert r["quantiles"]["p50"] <= r["max"] and sum(r["histogram"]["counts"]) == r["fires"]
    rc, err = _cli(capsys, ["features", *common, "--latent", "96"])
    assert rc == 1 and "latent 96 is out of range; the SAE" in err["error"] and "(0..95)" in err["error"]


def test_cli_dashboard_and_its_bad_inputs(capsys, tiny_model_dir, sae_dir, corpus, tmp_path):
    common = ["--sae", str(sae_dir), "--model", str(tiny_model_dir), "--corpus", str(corpus), "--split", "all",
              "--ctx", "16", "--tokens", "960", "--batch-size", "4", "--contexts", "3", "--progress", "off"]
    rc, out = _cli(capsys, ["dashboard", *common, "--out", str(tmp_path / "site"), "--latents", "1,4-6"])
    assert rc == 0, out
    assert out["latents"] == 4 and out["bytes"] <= out["bound_bytes"]
    assert sorted(p.name for p in (tmp_path / "site" / "latents").iterdir()) == ["1.html", "4.html", "5.html", "6.html"]
    rc, err = _cli(capsys, ["dashboard", *common, "--out", str(tmp_path / "site")])
    assert rc == 1 and "--overwrite" in err["error"]
    (tmp_path / "f").write_text("x")
    rc, err = _cli(capsys, ["dashboard", *common, "--out", str(tmp_path / "f" / "site")])
    assert rc == 1 and "cannot write there" in err["error"]
    rc, err = _cli(capsys, ["dashboard", *common, "--out", str(tmp_path / "s2"), "--latents", "2,500"])
    assert rc == 1 and "latent 500 is out of range" in err["error"] and not (tmp_path / "s2").exists()
    rc, err = _cli(capsys, ["dashboard", *common, "--out", str(tmp_path / "s3"), "--latents", "2,x"])
    assert rc == 1 and "'x' is not a latent id" in err["error"]
    rc, err = _cli(capsys, ["features", *common, "--latent", "1", "--sae", "pretrained:no-such"])
    assert rc == 1 and "No pretrained SAE 'no-such'" in err["error"]


# ---------------------------------------------------------------------------------------------
# Real headless Chromium


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Chromium is not installed and cannot be installed here (needs root and apt-get): "
                    "apt-get install chromium")
    try:
        r = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
                           shell=True, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:  # no reachable mirror: apt-get can hang rather than fail
        pytest.skip("Chromium could not be installed: apt-get did not finish in 15 minutes (no package mirror?)")
    if r.returncode != 0 or not shutil.which("chromium"):
        pytest.skip(f"Chromium could not be installed (apt-get exit {r.returncode}): {r.stderr[-300:]}")
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def chromium():
    return _chromium()


def browse(chromium: str, page: Path, tmp: Path, *, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """(DOM after scripts ran, console lines) of ``page`` opened from disk in headless Chromium."""
    profile_dir = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    action = [f"--screenshot={screenshot}", "--window-size=1200,900", "--hide-scrollbars"] if screenshot else ["--dump-dom"]
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", f"--user-data-dir={profile_dir}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=3000", *action, page.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    # Console messages (console.log/error, uncaught exceptions) come out as ...:CONSOLE:... lines.
    return r.stdout, [line for line in r.stderr.splitlines() if ":CONSOLE" in line]


def test_chromium_detects_console_errors(chromium, tmp_path):
    # The check below can fail: a page that throws shows up in the console lines.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>notDefined();</script></body></html>")
    _, console = browse(chromium, bad, tmp_path)
    assert any("notDefined" in line for line in console), console


def test_site_in_headless_chromium(chromium, site, tmp_path):
    dom, console = browse(chromium, site.out / "index.html", tmp_path)
    assert console == []
    # index.js ran: it wrote the count of shown rows.
    assert re.search(rf'<span id="shown"[^>]*>{len(site.latents)} of {len(site.latents)} latents shown</span>', dom)
    latent = site.latents[len(site.latents) // 2]
    page = site.out / "latents" / f"{latent}.html"
    dom, console = browse(chromium, page, tmp_path)
    assert console == []
    lit = re.findall(r'<span class="t on[^"]*" data-act="([^"]+)"[^>]* style="background-color: rgba\(208, 88, 42, ([0-9.]+)\)"', dom)
    assert lit and all(float(a) > 0 and float(alpha) > 0 for a, alpha in lit)
    shot = tmp_path / "latent.png"
    _, console = browse(chromium, page, tmp_path, screenshot=shot)
    assert console == []
    from matplotlib.image import imread

    img = imread(shot)[..., :3]  # [h, w, rgb] floats in 0..1
    assert img.shape[0] >= 800 and img.shape[1] >= 1100
    ink = (img.min(-1) < 0.6).mean()  # text, tables, bars
    orange = ((img[..., 0] - img[..., 2]) > 0.25).mean()  # shaded tokens and histogram bars
    assert ink > 0.005 and orange > 0.0005, (ink, orange)


@pytest.mark.slow
def test_cli_features_on_a_pretrained_sae_and_the_real_model(smollm2, capsys):
    # smollm2: converts the embedded model once, before the CLI loads it by name.
    rc, out = _cli(capsys, ["features", "--sae", "pretrained:smollm2-l6-topk", "--tokens", "4096", "--contexts", "4",
                            "--progress", "off", *[a for i in range(10) for a in ("--latent", str(i))]])
    assert rc == 0, out
    assert out["hook"] == "resid_post.6" and out["d_sae"] == 4608 and 3900 <= out["tokens"] <= 4096
    fired = [r for r in out["latents"] if r["fires"]]
    assert fired, "none of latents 0..9 fired on 4,096 held-out tokens"
    for r in fired:
        assert len(r["top_contexts"]) == min(4, r["fires"]) and r["quantiles"]["p99"] <= r["max"] + 1e-4
        c = r["top_contexts"][0]
        assert c["activation"] == pytest.approx(r["max"]) and f"«{c['token']}»" in c["text"]
        assert all(isinstance(t["token"], str) for t in r["promoted"] + r["suppressed"])
