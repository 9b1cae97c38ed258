"""``sae-hooks dashboard``: a static HTML site of an SAE's latents that opens from disk.

Harvests held-out text once (a progress bar on stderr), then writes ``OUT/index.html`` (every
chosen latent: density, max and mean activation, tokens at its peaks, promoted tokens, label;
sortable and filterable), ``OUT/latents/N.html`` (activation quantiles and histogram, top contexts
with tokens shaded by activation and the value on hover, promoted / suppressed tokens),
``OUT/assets/`` and ``OUT/summary.json``. No server, no network resource. The site's size is
bounded before harvesting (``--max-mb``) and reported at the end.

    $ sae-hooks dashboard --sae pretrained:smollm2-l6-topk --out site     # 200 latents spread over densities
    $ sae-hooks dashboard --sae runs/l6/saes/topk_resid_post.6 --latents 3,17,100-120 --out site --overwrite
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .features import add_common, check_common, load_setup

HELP = "write a static HTML site of an SAE's latents (index + one page per latent), no server needed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, tokens=50_000)
    p.add_argument("--out", required=True, help="folder for the site (created; must be empty unless --overwrite)")
    p.add_argument("--latents", default=None, metavar="LIST",
                   help="latents to give pages, e.g. 3,17,100-120 (default: --n-latents spread over densities)")
    p.add_argument("--n-latents", type=int, default=200, help="latents chosen when --latents is not given")
    p.add_argument("--labels", default=None, metavar="JSON",
                   help="latent labels: a JSON object {\"17\": \"label\", ...} or a list of {\"latent\", \"label\"}")
    p.add_argument("--max-mb", type=float, default=200.0, help="refuse a site whose size bound exceeds this (MB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing site in --out")


def parse_latents(text: str) -> tuple[int, ...]:
    """``"3,17,100-120"`` -> (3, 17, 100, ..., 120)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--latents {text!r}: {part!r} is not a latent id or a range A-B (e.g. 3,17,100-120).") from None
    return tuple(dict.fromkeys(out))


def read_labels(path: str) -> dict[int, str]:
    """Latent labels from a JSON file: ``{"17": "label"}`` or ``[{"latent": 17, "label": "..."}]``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--labels {path}: no such file.")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--labels {path} is not valid JSON ({e}).") from None
    try:
        if isinstance(data, dict):
            return {int(k): str(v) for k, v in data.items()}
        if isinstance(data, list):
            return {int(r["latent"]): str(r["label"]) for r in data}
    except (KeyError, TypeError, ValueError):
        pass
    raise ValueError(f"--labels {path}: expected {{\"17\": \"label\", ...}} or [{{\"latent\": 17, \"label\": \"...\"}}, ...].")


def run(args: argparse.Namespace) -> dict:
    from ..dashboard import DashboardConfig, _prepare, build_dashboard, site_bound

    check_common(args)
    latents = parse_latents(args.latents) if args.latents else None
    cfg = DashboardConfig(latents=latents, n_latents=args.n_latents, contexts=args.contexts,
                          logit_tokens=args.logit_tokens, max_bytes=int(args.max_mb * 1e6))
    labels = read_labels(args.labels) if args.labels else None
    if site_bound(cfg) > cfg.max_bytes:
        raise ValueError(f"the site could reach {site_bound(cfg) / 1e6:.1f} MB, over --max-mb {args.max_mb:g}; "
                         "choose fewer latents or contexts, or raise --max-mb.")
    out = Path(args.out)
    # An unwritable or occupied --out fails here, before the model loads and the harvest runs.
    probe = _prepare(out, args.overwrite)
    probe.rmdir()
    s = load_setup(args, list(latents) if latents else None)
    title = args.sae.removeprefix("pretrained:") if args.sae.startswith("pretrained:") else Path(args.sae).name or args.sae
    meta = {"SAE": args.sae, "architecture": s["sae"].architecture, "model": s["model"],
            "corpus": f"{args.corpus} [{args.split}]"}
    if args.sae.startswith("pretrained:"):  # a shipped SAE: its registry figures in the header
        from ..pretrained import load_registry

        entry = load_registry().get(title)
        if entry is not None and entry.metrics:
            m = entry.metrics
            meta["held-out (registry)"] = (f"FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, recaptured {m['recaptured_zero']:.3f} "
                                           f"(zero) / {m['recaptured_mean']:.3f} (mean)")
    res = build_dashboard(s["adapter"], s["sae"], s["hook"], s["batches"], out, cfg=cfg, title=title, meta=meta,
                          labels=labels, overwrite=args.overwrite, progress=s["progress"], total_batches=s["n_batches"])
    result = {"out": str(res.out), "index": str(res.out / "index.html"), "latents": len(res.latents),
              "files": res.files, "bytes": res.bytes, "bound_bytes": res.bound, "tokens": res.tokens,
              "hook": s["hook"], "sae": args.sae}
    if not args.json:
        print(f"{res.out / 'index.html'}: {len(res.latents)} latent pages, {res.files} files, {res.bytes / 1e6:.2f} MB "
              f"(bound {res.bound / 1e6:.1f} MB), {res.tokens:,} harvested tokens. Open it in a browser; no server needed.")
    return result
