"""Record a ``sae-hooks interp --json`` report in a pretrained registry's ``interpretability`` fields.

    $ sae-hooks interp --sae pretrained:smollm2-l6-topk --sae pretrained:smollm2-l6-mp --json > report.txt
    $ python -m sae_hooks.interp.record report.txt --registry pretrained \\
          --command "sae-hooks interp --sae pretrained:smollm2-l6-topk --sae pretrained:smollm2-l6-mp --json"

Each SAE of the report given as ``pretrained:NAME`` gets, in entry NAME, a short summary: its
headline scores, those of its random twin and of the residual baseline at its hook, the margins
over both, the token counts and the command. Nothing else in the file changes: the registry is read
right before writing, only the ``interpretability`` fields are replaced, the rest keeps its order
and formatting, and the new text replaces the file atomically.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .._io import atomic_write_text

PREFIX = "pretrained:"
HEADLINE = ("probe_f1", "best_latent_f1", "coverage", "labels_scored", "precise_fraction", "absorption")


def summaries(report: dict[str, Any], command: str, commit: str | None = None) -> dict[str, dict[str, Any]]:
    """Registry name -> the ``interpretability`` summary of that SAE, for each ``pretrained:NAME`` of ``report``.

        >>> summaries(json.loads(last_line), "sae-hooks interp --sae pretrained:smollm2-l6-topk --json")
    """
    for key in ("saes", "baselines", "margins", "hooks", "tokens"):
        if key not in report:
            raise ValueError(f"Not a `sae-hooks interp --json` report: it has no {key!r} field "
                             f"(fields: {sorted(report)}). Pass the last line that command printed.")
    out = {}
    for name, scores in report["saes"].items():
        if not name.startswith(PREFIX):
            continue
        hook = report["hooks"][name]
        random = report["baselines"]["random"].get(name)
        residual = report["baselines"]["residual"].get(hook)
        t = report["tokens"]
        out[name[len(PREFIX):]] = {
            **{k: scores[k] for k in HEADLINE},
            "live": scores["live"], "detectors": scores["detectors"],
            "random_sae": None if random is None else {k: random[k] for k in HEADLINE},
            "residual": None if residual is None else {k: residual[k] for k in HEADLINE},
            "margins": report["margins"].get(name, {}),
            "hook": hook, "corpus": report.get("corpus"), "split": report.get("split"),
            "tokens": {"scored": t["scored"], "train": t["train"], "test": t["test"]},
            "command": command, "commit": commit,
        }
    if not out:
        raise ValueError(f"The report names no pretrained SAE (its SAEs: {sorted(report['saes'])}); only SAEs "
                         "given as --sae pretrained:NAME are recorded.")
    return out


def record(registry: str | os.PathLike, found: dict[str, dict[str, Any]]) -> list[str]:
    """Write ``found`` (name -> summary) into the ``interpretability`` fields of ``registry``; the names written.

        >>> record("pretrained/registry.json", summaries(report, command))
    """
    path = Path(registry)
    text = path.read_text()
    data = json.loads(text)
    entries = data.get("saes")
    if not isinstance(entries, dict):
        raise ValueError(f"{path} has no 'saes' object; is it a pretrained registry?")
    missing = sorted(set(found) - set(entries))
    if missing:
        raise ValueError(f"{path} has no entry {missing}; it has {sorted(entries)}. Score only registered SAEs.")
    # The registry is written as json.dumps(indent=2) plus a newline: writing it the same way changes
    # no line but the interpretability fields. Refuse a file written otherwise rather than reformat it.
    if json.dumps(data, indent=2, allow_nan=False) + "\n" != text:
        raise ValueError(f"{path} is not in the registry's own layout (json indent=2); refusing to reformat it.")
    for name, summary in found.items():
        entries[name]["interpretability"] = summary
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="a file whose last line is the JSON of `sae-hooks interp --json`")
    p.add_argument("--registry", default="pretrained", help="folder holding registry.json")
    p.add_argument("--command", required=True, help="the exact command that printed the report")
    p.add_argument("--commit", default=None, help="the commit the command ran at")
    args = p.parse_args(argv)
    lines = Path(args.report).read_text().strip().splitlines()
    if not lines:
        raise SystemExit(f"{args.report} is empty; give the output of `sae-hooks interp --json`.")
    found = summaries(json.loads(lines[-1]), args.command, args.commit)
    for name in record(Path(args.registry) / "registry.json", found):
        s = found[name]
        print(f"{name}: probe F1 k=1 {s['probe_f1'].get('1')}, coverage {s['coverage']}/{s['labels_scored']}, "
              f"precise {s['precise_fraction']}, absorption {s['absorption']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
