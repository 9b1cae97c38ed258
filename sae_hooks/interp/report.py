"""``interp``: score SAEs (and their baselines) against true token labels, from one model pass.

    >>> toks = labelled_tokens(adapter.tokenizer, CorpusConfig(split="eval"), 50_000)
    >>> report = interp(adapter, {"topk": sae}, toks)
    >>> report.saes["topk"].probe_mean(1), report.margins()["topk"]

The model runs once over the labelled tokens, up to the deepest hook any SAE needs; the
activations of the scored positions are kept per hook (float32, d_in per token), and every SAE and
baseline is scored from them in chunks (see ``scores.score_dictionary``). Sequences are drawn at
random (``InterpConfig.seed``) into the training part (selection, probe fitting) and the held-out
part (every reported number); a document's sequences may fall on both sides, which the labels
(grammar, not file contents) tolerate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..evaluate import resolve_hook
from .baselines import ResidualCoordinates, random_like
from .corpus import LabelledTokens
from .labels import LABELS
from .scores import DictionaryScores, InterpConfig, LabelStats, SAEDictionary, label_stats, score_dictionary

# Definitions printed with every report, so that a number never travels without its meaning.
DEFINITIONS = {
    "probe_f1": "k-sparse probing: per label, the k latents whose mean activation differs most between labelled and "
                "unlabelled training tokens; logistic regression on them; F1 on held-out tokens; mean over scored labels",
    "best_latent_f1": "per label, the latent with the highest training F1 as a detector (fires = code > 0); its held-out "
                      "F1; mean over scored labels",
    "coverage": "scored labels whose best latent reaches held-out F1 >= coverage_f1 and beats the label's chance_f1",
    "precise_fraction": "live latents (>= min_latent_fires training firings) whose best-F1 label has held-out "
                        "precision >= precise",
    "absorption": "per parent label, the fraction of its children's held-out tokens on which the parent's best latent is "
                  "silent while a latent specific to the child (training precision >= specific_precision) fires; "
                  "mean over parents",
    "chance_f1": "per label, the F1 of a detector that fires on every token, 2p/(1+p) at base rate p",
    "residual": "baseline: the hook's coordinates; detectors fire where +x_j or -x_j exceeds its q-quantile over "
                "training tokens, for each q in residual_quantiles; probes read the raw coordinates",
    "random": "baseline: an SAE of the same class and config, freshly initialised (b_dec = geometric median of "
              "training activations)",
}


@dataclass(frozen=True)
class InterpReport:
    """Scores of the SAEs and their baselines on one labelled token set."""

    labels: tuple[LabelStats, ...]
    """Every label: counts in both parts, base rate, chance F1, scored or why skipped."""
    saes: dict[str, DictionaryScores]
    """The SAEs given, by name."""
    random: dict[str, DictionaryScores]
    """Random-SAE baseline of each SAE, by the SAE's name (empty without that baseline)."""
    residual: dict[str, DictionaryScores]
    """Residual-coordinate baseline, by hook point (empty without that baseline)."""
    hooks: dict[str, str]
    """SAE name -> the hook point it was scored at."""
    tokens: dict[str, Any]
    """Counts: sequences, ctx, scored / training / held-out tokens, documents used and skipped."""
    seconds: dict[str, float]
    """Wall time of the model pass and of each scored dictionary."""
    config: InterpConfig

    def margins(self) -> dict[str, dict[str, dict[str, float]]]:
        """SAE minus each baseline, per SAE: mean probe F1 per k, best-latent F1, coverage, precise fraction.

            >>> report.margins()["topk"]["residual"]["probe_f1_k1"]
        """
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, s in self.saes.items():
            out[name] = {}
            for base_name, base in (("random", self.random.get(name)), ("residual", self.residual.get(self.hooks[name]))):
                if base is None:
                    continue
                m = {f"probe_f1_k{k}": round(s.probe_mean(k) - base.probe_mean(k), 4) for k in self.config.ks}
                m["best_latent_f1"] = round(s.best_mean_f1 - base.best_mean_f1, 4)
                m["coverage"] = s.coverage - base.coverage
                m["precise_fraction"] = round(s.precise_fraction - base.precise_fraction, 4)
                out[name][base_name] = m
        return out

    def to_dict(self, latents: bool = False) -> dict[str, Any]:
        """JSON-ready: token counts, label table, each SAE's scores and per-label table, baselines, margins."""
        return {
            "tokens": self.tokens,
            "hooks": self.hooks,
            "labels": {s.name: {"parent": s.parent, "train_tokens": s.train_tokens, "test_tokens": s.test_tokens,
                                "base_rate": round(s.base_rate, 4), "chance_f1": round(s.chance_f1, 4),
                                "scored": s.scored, **({"skipped": s.skipped} if s.skipped else {})}
                       for s in self.labels},
            "saes": {n: s.to_dict(latents) for n, s in self.saes.items()},
            "baselines": {"random": {n: s.to_dict(latents) for n, s in self.random.items()},
                          "residual": {h: s.to_dict(latents) for h, s in self.residual.items()}},
            "margins": self.margins(),
            "seconds": self.seconds,
            "config": asdict(self.config),
            "definitions": DEFINITIONS,
        }

    def table(self) -> str:
        """A readable summary: one row per SAE and baseline, then the per-label table."""
        ks = self.config.ks
        rows = [(n, s) for n, s in self.saes.items()]
        rows += [(f"random({n})", s) for n, s in self.random.items()]
        rows += [(f"residual({h})", s) for h, s in self.residual.items()]
        width = max(len(n) for n, _ in rows)
        head = f"{'':{width}}  " + "  ".join(f"probe k={k:<3}" for k in ks) + \
            "  best F1  coverage  precise  absorption  live"
        lines = [head]
        for n, s in rows:
            ab = "-" if s.absorption_mean is None else f"{s.absorption_mean:.3f}"
            lines.append(f"{n:{width}}  " + "  ".join(f"{s.probe_mean(k):<11.3f}" for k in ks)
                         + f"  {s.best_mean_f1:<7.3f}  {s.coverage:>3}/{len(s.best):<4}  {s.precise_fraction:<7.3f}"
                         + f"  {ab:<10}  {s.live}")
        t = self.tokens
        lines.append(f"\n{t['scored']:,} scored tokens ({t['train']:,} training / {t['test']:,} held-out), "
                     f"{t['documents']} Python documents, {sum(t['skipped'].values())} skipped as not Python")
        names = [n for n, _ in rows]
        lines.append("\nbest single latent, held-out F1 (latent) per label; chance = F1 of always firing")
        lab_w = max(len(s.name) for s in self.labels)
        lines.append(f"{'label':{lab_w}}  {'base':>6}  {'chance':>6}  " + "  ".join(f"{n[:18]:>18}" for n in names))
        for st in self.labels:
            if not st.scored:
                lines.append(f"{st.name:{lab_w}}  {st.base_rate:6.4f}  {'':>6}  skipped: {st.test_tokens} held-out tokens")
                continue
            cells = []
            for _, s in rows:
                b = s.best[st.name]
                cells.append(f"{b.f1:.3f} ({b.name[:10]})".rjust(18))
            lines.append(f"{st.name:{lab_w}}  {st.base_rate:6.4f}  {st.chance_f1:6.3f}  " + "  ".join(cells))
        return "\n".join(lines)


def interp(
    adapter: Any,
    saes: Any,
    tokens: LabelledTokens,
    *,
    hook: str | None = None,
    config: InterpConfig | None = None,
    batch_size: int = 8,
    allow_hook_mismatch: bool = False,
    strict: bool = False,
) -> InterpReport:
    """Interpretability scores of one SAE or a ``{name: SAE}`` mapping, with baselines, from one model pass.

        >>> report = interp(adapter, sae, labelled_tokens(adapter.tokenizer, CorpusConfig(split="eval"), 50_000))
        >>> print(report.table())

    ``hook=None`` scores each SAE at the hook its metadata names. As in ``evaluate`` (the same
    ``resolve_hook``): an SAE whose metadata names another hook is refused unless
    ``allow_hook_mismatch``, one whose width does not fit the hook always; one whose metadata names
    another model warns, or is refused with ``strict``.
    """
    config = config or InterpConfig()
    named = dict(saes) if isinstance(saes, Mapping) else {"sae": saes}
    if not named:
        raise ValueError("interp needs at least one SAE; got an empty mapping.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"interp: batch_size={batch_size!r}; it must be an int >= 1.")
    kw = {"allow_hook_mismatch": True} if allow_hook_mismatch else {}
    hooks = {name: resolve_hook(adapter, sae, hook, strict=strict, **kw) for name, sae in named.items()}
    n_seq = tokens.input_ids.shape[0]
    n_test = round(config.test_fraction * n_seq)
    if n_seq < 2 or not 0 < n_test < n_seq:
        raise ValueError(f"interp needs sequences on both sides of the held-out draw: {n_seq} sequence(s) at "
                         f"test_fraction={config.test_fraction} give {n_test} held out. Score more tokens.")
    held = torch.zeros(n_seq, dtype=torch.bool)
    held[torch.randperm(n_seq, generator=torch.Generator().manual_seed(config.seed))[:n_test]] = True

    t0 = time.perf_counter()
    x, y = _harvest(adapter, tokens, held, sorted(set(hooks.values())), batch_size)
    seconds = {"model_pass": round(time.perf_counter() - t0, 2)}
    labels = label_stats(y["train"], y["test"], config)

    def scored(dictionary, name: str, h: str) -> DictionaryScores:
        t = time.perf_counter()
        s = score_dictionary(dictionary, x[h]["train"], y["train"], x[h]["test"], y["test"], config, name)
        seconds[name] = round(time.perf_counter() - t, 2)
        return s

    out_saes, out_random, out_resid = {}, {}, {}
    for name, sae in named.items():
        h = hooks[name]
        out_saes[name] = scored(SAEDictionary(sae), name, h)
        if "random" in config.baselines:
            twin = random_like(sae, x[h]["train"][:4096], config.seed)
            out_random[name] = scored(SAEDictionary(twin, kind="random_sae"), f"random({name})", h)
    if "residual" in config.baselines:
        for h in sorted(set(hooks.values())):
            out_resid[h] = scored(ResidualCoordinates(x[h]["train"], config.residual_quantiles), f"residual({h})", h)

    counts = {"sequences": n_seq, "ctx": tokens.input_ids.shape[1], "scored": int(tokens.mask.sum()),
              "train": int(y["train"].shape[0]), "test": int(y["test"].shape[0]), "documents": tokens.documents,
              "skipped": dict(tokens.skipped),
              "straddled": {label.name: n for label, n in zip(LABELS, tokens.straddled) if n}}
    return InterpReport(labels, out_saes, out_random, out_resid, hooks, counts, seconds, config)


@torch.no_grad()
def _harvest(adapter: Any, tokens: LabelledTokens, held: Tensor, hooks: list[str], batch_size: int):
    """Activations [n, d_in] (float32, CPU) and labels [n, L] of the scored positions, split into the
    training and held-out parts, from one forward per batch that stops after the deepest hook."""
    xs: dict[str, dict[str, list[Tensor]]] = {h: {"train": [], "test": []} for h in hooks}
    ys: dict[str, list[Tensor]] = {"train": [], "test": []}
    for start in range(0, tokens.input_ids.shape[0], batch_size):
        ids = tokens.input_ids[start:start + batch_size]
        m = tokens.mask[start:start + batch_size]                                 # [b, ctx]
        on_test = held[start:start + batch_size, None].expand_as(m)[m]           # [n]
        lab = tokens.labels[start:start + batch_size][m]                         # [n, L]
        ys["train"].append(lab[~on_test])
        ys["test"].append(lab[on_test])
        acts = adapter.capture(ids, hooks)
        for h in hooks:
            a = acts[h][m.to(acts[h].device)].float().cpu()                      # [n, d_in]
            xs[h]["train"].append(a[~on_test])
            xs[h]["test"].append(a[on_test])
    x = {h: {part: torch.cat(v) for part, v in parts.items()} for h, parts in xs.items()}
    y = {part: torch.cat(v) for part, v in ys.items()}
    return x, y
