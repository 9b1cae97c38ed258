"""Feature dashboards: a static HTML site per SAE that opens from disk, with no server and no network.

``build_dashboard`` harvests a token stream once (``sae_hooks.features.harvest``, plus every code
for the histograms), chooses latents (given, or spread over firing densities), and writes

- ``index.html``: one row per latent (density, max and mean code, tokens at its peaks, promoted
  tokens, label), sortable by clicking a column head and filterable by text and density;
- ``latents/N.html``: quantiles and a histogram of the latent's activations, its top contexts with
  every token shaded by the latent's code (the value on hover), and the tokens its decoder
  direction promotes and suppresses;
- ``assets/`` (one stylesheet, one script) and ``summary.json`` (the index as data).

The site is built in a temporary folder beside ``out`` and moved into place at the end: a failure
leaves nothing behind, and an existing site is replaced only with ``overwrite=True``.

    >>> res = build_dashboard(adapter, sae, "resid_post.6", batches, "site", cfg=DashboardConfig(n_latents=100))
    >>> res.bytes, res.out / "index.html"
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from ..data import TokenBatch
from ..features import logit_effects
from .collect import Profile, Window, choose_latents, context_windows, profile
from .render import LatentPage, index_html, latent_html, summary_json

__all__ = ["DashboardConfig", "DashboardResult", "LatentPage", "Profile", "Window", "build_dashboard",
           "choose_latents", "context_windows", "profile", "site_bound", "with_progress"]


@dataclass(frozen=True)
class DashboardConfig:
    """What the dashboard shows and how big it may get."""

    latents: tuple[int, ...] | None = None
    """Latents to give pages; None chooses ``n_latents`` spread over firing densities."""
    n_latents: int = 200
    """How many latents to choose when ``latents`` is None (never-firing latents are skipped)."""
    contexts: int = 10
    """Top contexts per latent."""
    before: int = 16
    """Tokens shown before each context's peak token."""
    after: int = 6
    """Tokens shown after it."""
    logit_tokens: int = 10
    """Promoted and suppressed tokens listed per latent."""
    max_bytes: int = 200_000_000
    """Refuse to build a site whose size bound (``site_bound``) exceeds this."""

    def __post_init__(self) -> None:
        for name in ("n_latents", "contexts", "logit_tokens", "max_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DashboardConfig.{name}={v!r}; it must be an int >= 1.")
        for name in ("before", "after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 256:
                raise ValueError(f"DashboardConfig.{name}={v!r}; it must be an int in 0..256.")
        if self.latents is not None:
            if not self.latents:
                raise ValueError("DashboardConfig.latents is empty; give at least one latent id, or None to choose.")
            for v in self.latents:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"DashboardConfig.latents holds {v!r}; latent ids are ints >= 0.")

    @property
    def count(self) -> int:
        """Number of latent pages (at most)."""
        return len(set(self.latents)) if self.latents is not None else self.n_latents


# Bytes per shown token: a span with class, data-act, title and a background style is < 180 bytes of
# markup; a token's text is cut at 48 characters, each at most 6 bytes once escaped (&quot;).
TOKEN_BYTES = 180 + 6 * 48
PAGE_BYTES = 24_000  # header, label, quantiles, histogram SVG (30 bars)
ROW_BYTES = 8_000  # one index row and its summary.json entry: 5 peak tokens, 3 + 5 output tokens, a label


def site_bound(cfg: DashboardConfig) -> int:
    """An upper bound on the site's bytes for ``cfg`` (pages, index, summary, assets).

        >>> site_bound(DashboardConfig())   # ~ 200 latents x 10 contexts x 23 tokens
    """
    per_page = cfg.contexts * (cfg.before + cfg.after + 1) * TOKEN_BYTES + PAGE_BYTES + cfg.logit_tokens * 2 * 400
    return cfg.count * (per_page + ROW_BYTES) + 64_000


class DashboardResult(NamedTuple):
    """What ``build_dashboard`` wrote."""

    out: Path
    """The site's folder (open ``out / "index.html"``)."""
    latents: list[int]
    """Latents with a page."""
    files: int
    """Files written."""
    bytes: int
    """Size of the site."""
    bound: int
    """The size bound it was checked against before harvesting (``site_bound``)."""
    tokens: int
    """Harvested tokens that counted (position 0 and special tokens excluded)."""


def _prepare(out: Path, overwrite: bool) -> Path:
    """Check ``out`` can be (re)written and make the temporary folder beside it; nothing else is touched."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the site.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} already holds files. Pass --overwrite to replace it, or choose another folder.")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise OSError(f"--out {out}: cannot write there ({e.strerror or e}); choose a folder you can write to.") from None


def _install(tmp: Path, out: Path) -> None:
    """Move the finished site into ``out`` (an existing one is replaced only after the new one is complete)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=tmp.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / "site")
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old / "site", out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def with_progress(batches: Iterable[TokenBatch], total: int | None, enabled: bool) -> Iterator[TokenBatch]:
    """``batches`` behind a tqdm bar on stderr ("harvest", in batches) when ``enabled``.

        >>> for batch in with_progress(iter_batches(...), total=50, enabled=True): ...
    """
    if not enabled:
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(batches, total=total, desc="harvest", unit="batch", dynamic_ncols=True) as bar:
        yield from bar


def build_dashboard(
    adapter: Any,
    sae: Any,
    hook: str,
    batches: Iterable[TokenBatch],
    out: str | os.PathLike,
    *,
    cfg: DashboardConfig = DashboardConfig(),
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
    labels: Mapping[int, str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    total_batches: int | None = None,
) -> DashboardResult:
    """Harvest ``batches`` once and write the site to ``out`` (see the module docstring).

        >>> batches = iter_batches(tok, CorpusConfig(split="eval"), 8, max_tokens=50_000)
        >>> build_dashboard(adapter, sae, "resid_post.6", batches, "site", title="smollm2-l6-topk")
    """
    d_sae = int(sae.cfg.d_sae)
    if cfg.latents is not None:
        bad = [v for v in cfg.latents if v >= d_sae]
        if bad:
            raise ValueError(f"latent(s) {bad[:5]} out of range; this SAE has {d_sae} latents (0..{d_sae - 1}).")
    bound = site_bound(cfg)
    if bound > cfg.max_bytes:
        raise ValueError(f"the site could reach {bound / 1e6:.1f} MB ({cfg.count} latents x {cfg.contexts} contexts), "
                         f"over the {cfg.max_bytes / 1e6:.0f} MB limit; choose fewer latents or contexts, or raise the "
                         "limit (--max-mb).")
    out = Path(out)
    tmp = _prepare(out, overwrite)
    try:
        prof = profile(adapter, sae, hook, with_progress(batches, total_batches, progress), k=cfg.contexts)
        h = prof.harvest
        chosen = sorted(set(cfg.latents)) if cfg.latents is not None else choose_latents(h.frequency, cfg.n_latents)
        windows = context_windows(adapter, sae, h, chosen, n=cfg.contexts, before=cfg.before, after=cfg.after)
        pages = []
        for latent in chosen:
            fx = logit_effects(adapter, sae, latent, k=cfg.logit_tokens)
            pages.append(LatentPage(latent, float(h.frequency[latent]), int(h.fire_count[latent]),
                                    float(h.mean_code[latent]), float(h.top_values[latent, 0]),
                                    prof.quantiles(latent), prof.histogram(latent), windows[latent],
                                    fx.promoted, fx.suppressed, (labels or {}).get(latent)))
        info = {"title": title or f"SAE at {h.hook}", "tokens": h.n_tokens,
                "meta": {"hook": h.hook, "latents": d_sae, "harvested tokens": f"{h.n_tokens:,}",
                         "pages": len(pages), **(meta or {})}}
        (tmp / "latents").mkdir()
        (tmp / "assets").mkdir()
        assets = resources.files(__name__).joinpath("assets")
        for name in ("style.css", "index.js"):
            (tmp / "assets" / name).write_bytes(assets.joinpath(name).read_bytes())
        (tmp / "index.html").write_text(index_html(pages, info), encoding="utf-8")
        (tmp / "summary.json").write_text(summary_json(pages, info), encoding="utf-8")
        for i, p in enumerate(pages):
            prev = pages[i - 1].latent if i > 0 else None
            nxt = pages[i + 1].latent if i + 1 < len(pages) else None
            (tmp / "latents" / f"{p.latent}.html").write_text(latent_html(p, info, prev, nxt), encoding="utf-8")
        files = [p for p in tmp.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        if size > bound:  # the bound is what the docs promise; a breach is a bug to hear about
            raise RuntimeError(f"dashboard: the site has {size:,} bytes, above its bound of {bound:,}.")
        _install(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return DashboardResult(out, chosen, len(files), size, bound, h.n_tokens)
