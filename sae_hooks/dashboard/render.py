"""HTML of the dashboard: an index of latents and one page per latent, static files only.

Every page links only to files of the site (``assets/style.css``, ``assets/index.js``, other
pages) by relative paths, so the site opens from disk (``file://``) with no server and loads
nothing from the network. Activations are shown as the background of each token (opacity
proportional to the code, relative to the latent's largest harvested code) and in its tooltip.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from typing import Any, NamedTuple

from ..features import TokenScore
from .collect import Window

SHADE = (208, 88, 42)  # one hue for every activation; the opacity carries the value
MIN_ALPHA = 0.12  # a firing token never looks unshaded, however small its code


class LatentPage(NamedTuple):
    """Everything one latent's page shows."""

    latent: int
    """The latent."""
    frequency: float
    """Fraction of the harvested tokens on which it fires."""
    fires: int
    """Harvested tokens on which it fires."""
    mean_code: float
    """Mean code over all harvested tokens."""
    max_code: float
    """Largest harvested code."""
    quantiles: dict[str, float] | None
    """Quantiles of its positive codes, None if it never fired."""
    histogram: tuple[list[int], float]
    """(counts in equal bins over (0, max], max) of its positive codes."""
    windows: list[Window]
    """Top contexts, strongest first."""
    promoted: list[TokenScore]
    """Tokens its decoder direction promotes through the unembedding."""
    suppressed: list[TokenScore]
    """Tokens it suppresses."""
    label: str | None
    """A label from an interpretability run, if one was given."""

    @property
    def top_tokens(self) -> list[tuple[str, int]]:
        """The tokens at the peaks of its top contexts, most frequent first."""
        return Counter(w.tokens[w.peak] for w in self.windows).most_common(5)

    def summary(self) -> dict[str, Any]:
        """The index row of this latent as plain data."""
        return {"latent": self.latent, "frequency": self.frequency, "fires": self.fires, "mean_code": self.mean_code,
                "max_code": self.max_code, "quantiles": self.quantiles, "label": self.label,
                "top_tokens": [t for t, _ in self.top_tokens],
                "promoted": [t.token for t in self.promoted[:5]], "suppressed": [t.token for t in self.suppressed[:5]]}


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


MAX_TOKEN_CHARS = 48  # longer tokens (runs of spaces or dashes) are cut: it keeps the site's size bound


def _tok(text: str) -> str:
    """A token made visible: newlines and tabs as symbols (a context stays on its line), cut at 48 characters."""
    text = text.replace("\n", "\u21b5").replace("\t", "\u2192").replace("\r", "")
    return _e(text if len(text) <= MAX_TOKEN_CHARS else text[:MAX_TOKEN_CHARS - 1] + "\u2026")


def _pct(x: float) -> str:
    return f"{x:.3%}" if x < 0.01 else f"{x:.2%}"


def _head(title: str, root: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><link rel="stylesheet" href="{root}assets/style.css"></head><body>\n')


def shade(act: float, top: float) -> str:
    """CSS background for a code ``act`` on a latent whose largest code is ``top`` ('' for zero)."""
    if act <= 0 or top <= 0:
        return ""
    alpha = MIN_ALPHA + (1 - MIN_ALPHA) * min(act / top, 1.0)
    return f"background-color: rgba({SHADE[0]}, {SHADE[1]}, {SHADE[2]}, {alpha:.3f})"


def context_html(w: Window, top: float) -> str:
    """One context: every token a span, shaded by its code, the code in its tooltip, the peak outlined."""
    spans = []
    for i, (t, a) in enumerate(zip(w.tokens, w.acts)):
        cls = "t" + (" on" if a > 0 else "") + (" peak" if i == w.peak else "")
        style = shade(a, top)
        spans.append(f'<span class="{cls}" data-act="{a:.4g}" title="{a:.4g}"'
                     + (f' style="{style}"' if style else "") + f">{_tok(t)}</span>")
    return f'<div class="ctx"><span class="act">{w.activation:.3g}</span>{"".join(spans)}</div>'


def histogram_svg(counts: list[int], top: float, width: int = 420, height: int = 130) -> str:
    """Bars of the activation histogram as inline SVG (log-free: counts as they are)."""
    if not counts:
        return '<p class="empty">never fired on the harvested tokens</p>'
    pad, base = 28, height - 18
    peak = max(counts) or 1
    bw = (width - pad) / len(counts)
    bars = []
    for i, c in enumerate(counts):
        h = (base - 8) * c / peak
        lo, hi = top * i / len(counts), top * (i + 1) / len(counts)
        bars.append(f'<rect x="{pad + i * bw:.1f}" y="{base - h:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}">'
                    f"<title>{lo:.3g} to {hi:.3g}: {c} tokens</title></rect>")
    return (f'<svg class="hist" width="{width}" height="{height}" role="img" aria-label="activation histogram">'
            + "".join(bars)
            + f'<text x="{pad}" y="{height - 4}">0</text>'
            + f'<text x="{width - 4}" y="{height - 4}" text-anchor="end">{top:.3g}</text>'
            + f'<text x="2" y="12">{peak}</text></svg>')


def _scores(rows: list[TokenScore]) -> str:
    if not rows:
        return '<p class="empty">none</p>'
    body = "".join(f'<tr><td class="tok">{_tok(r.token)}</td><td class="num">{r.score:+.3f}</td></tr>' for r in rows)
    return f"<table><thead><tr><th>token</th><th class=\"num\">logit / unit code</th></tr></thead><tbody>{body}</tbody></table>"


def latent_html(p: LatentPage, info: dict[str, Any], prev: int | None, nxt: int | None) -> str:
    """The page of one latent."""
    nav = ['<a href="../index.html">index</a>']
    if prev is not None:
        nav.append(f'<a href="{prev}.html">&larr; latent {prev}</a>')
    if nxt is not None:
        nav.append(f'<a href="{nxt}.html">latent {nxt} &rarr;</a>')
    q = p.quantiles or {}
    qrow = "".join(f"<th class=\"num\">{_e(k)}</th>" for k in q) or "<th>quantiles</th>"
    qval = "".join(f"<td class=\"num\">{v:.3g}</td>" for v in q.values()) or '<td class="empty">never fired</td>'
    label = f'<p class="label">{_e(p.label[:200])}</p>' if p.label else ""
    contexts = "".join(context_html(w, p.max_code) for w in p.windows) or '<p class="empty">no context: never fired</p>'
    return (_head(f"latent {p.latent} - {info['title']}", "../")
            + f"<p>{' | '.join(nav)}</p><h1>Latent {p.latent}</h1>{label}"
            + f'<p class="meta">{_e(info["title"])} &middot; fires on {_pct(p.frequency)} of {info["tokens"]:,} tokens '
            + f"({p.fires:,}) &middot; max {p.max_code:.4g} &middot; mean code {p.mean_code:.4g}</p>"
            + f"<h2>Activation where it fires</h2><table><thead><tr>{qrow}</tr></thead><tbody><tr>{qval}</tr></tbody></table>"
            + histogram_svg(*p.histogram)
            + "<h2>Top contexts</h2><p class=\"meta\">token background: the latent's code (hover for the value), "
            + "relative to its largest code; outlined: the peak token; grey number: the peak code.</p>"
            + contexts
            + '<h2>Output tokens</h2><div class="cols"><div><h3>promoted</h3>' + _scores(p.promoted)
            + "</div><div><h3>suppressed</h3>" + _scores(p.suppressed) + "</div></div>"
            + "</body></html>\n")


def index_html(pages: list[LatentPage], info: dict[str, Any]) -> str:
    """The index: one sortable, filterable row per latent, linking to its page."""
    rows = []
    for p in pages:
        tops = ", ".join(f"{_tok(t)}" + (f" &times;{n}" if n > 1 else "") for t, n in p.top_tokens)
        prom = ", ".join(_tok(t.token) for t in p.promoted[:3])
        rows.append(
            f'<tr data-density="{p.frequency:.6g}"><td class="num" data-v="{p.latent}">'
            f'<a href="latents/{p.latent}.html">{p.latent}</a></td>'
            f'<td class="num" data-v="{p.frequency:.6g}">{_pct(p.frequency)}</td>'
            f'<td class="num" data-v="{p.max_code:.6g}">{p.max_code:.3g}</td>'
            f'<td class="num" data-v="{p.mean_code:.6g}">{p.mean_code:.3g}</td>'
            f'<td class="tok">{tops}</td><td class="tok">{prom}</td>'
            f'<td class="label">{_e((p.label or "")[:200])}</td></tr>')
    meta = " &middot; ".join(_e(f"{k}: {v}") for k, v in info["meta"].items())
    return (_head(f"latents - {info['title']}", "")
            + f"<h1>{_e(info['title'])}</h1><p class=\"meta\">{meta}</p>"
            + '<div class="controls"><input id="filter" type="search" placeholder="filter: token, label, latent id">'
            + '<label>density % from <input id="min-density" type="number" step="any" size="6"></label>'
            + '<label>to <input id="max-density" type="number" step="any" size="6"></label>'
            + '<span id="shown" class="meta"></span></div>'
            + '<table id="latents"><thead><tr><th class="sortable num">latent</th><th class="sortable num">density</th>'
            + '<th class="sortable num">max</th><th class="sortable num">mean code</th><th>top tokens (at peaks)</th>'
            + '<th>promotes</th><th class="sortable">label</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>"
            + '<script src="assets/index.js"></script></body></html>\n')


def summary_json(pages: list[LatentPage], info: dict[str, Any]) -> str:
    """The index as JSON (``summary.json``), for scripts."""
    return json.dumps({"info": info, "latents": [p.summary() for p in pages]}, indent=1, allow_nan=False)
