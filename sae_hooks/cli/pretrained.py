"""``sae-hooks pretrained``: the SAEs shipped with sae_hooks, from their registry.

    $ sae-hooks pretrained list                 # one row per SAE: hook, architecture, width, k, held-out figures
    $ sae-hooks pretrained list --json
    $ sae-hooks pretrained show smollm2-l28-topk-2304  # every registry field, with the train and eval commands
    $ sae-hooks pretrained verify               # every file against its size and sha256, tensor shapes too
    $ sae-hooks pretrained path smollm2-l6-topk   # the folder, for tools that want a path

Any command's ``--sae`` takes ``pretrained:NAME``.
"""

from __future__ import annotations

import argparse

HELP = "list, show, verify or locate the pretrained SAEs shipped with sae_hooks"
ACTIONS = ("list", "show", "verify", "path")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list", choices=ACTIONS,
                   help="list: a table of every SAE; show NAME: its registry entry; verify [NAME...]: files against "
                        "sizes, sha256 and shapes; path NAME: its folder")
    p.add_argument("names", nargs="*", metavar="NAME", help="pretrained SAE name(s) (see `sae-hooks pretrained list`)")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(entries) -> str:
    """The rows of ``sae-hooks pretrained list`` as aligned text."""
    head = ("name", "hook", "arch", "width", "k", "tokens", "FVU", "L0", "dead", "rec.zero", "rec.mean", "dCE", "KL", "MB")
    rows = [head]
    for e in entries:
        m = e.metrics or {}
        rows.append((e.name, e.hook, e.architecture, str(e.d_sae), _fmt(e.k, "d"), _fmt(e.training.get("tokens"), ","),
                     _fmt(m.get("fvu"), ".3f"), _fmt(m.get("l0"), ".1f"), _fmt(m.get("dead_frac"), ".1%"),
                     _fmt(m.get("recaptured_zero"), ".3f"), _fmt(m.get("recaptured_mean"), ".3f"),
                     _fmt(m.get("delta_ce"), ".3f"), _fmt(m.get("kl"), ".3f"), f"{e.size / 1e6:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def run(args: argparse.Namespace) -> dict:
    from ..pretrained import ENV, load_registry, resolve_pretrained, verify_entry

    reg = load_registry()
    if args.action in ("show", "path") and len(args.names) != 1:
        raise ValueError(f"`sae-hooks pretrained {args.action}` takes one NAME; got {len(args.names)}. "
                         "See `sae-hooks pretrained list`.")
    if args.action == "list" and args.names:
        raise ValueError("`sae-hooks pretrained list` takes no NAME; use `show NAME` for one SAE.")
    chosen = []
    for name in args.names:
        entry = reg.get(name)
        if entry is None:
            resolve_pretrained(name)  # raises the error with close matches and every available name
            raise ValueError(f"{name!r} is an SAE folder under ${ENV}, not in the shipped registry, which "
                             f"`sae-hooks pretrained {args.action}` reads.")
        chosen.append(entry)
    root = reg.path.parent

    if args.action == "list":
        result = {"registry": str(reg.path), "bytes": sum(e.size for e in reg.entries),
                  "saes": [{"name": e.name, **e.to_dict()} for e in reg.entries]}
        if not args.json:
            print(table(reg.entries))
            print(f"\n{len(reg.entries)} SAEs, {result['bytes'] / 1e6:.1f} MB, in {root}. Held-out figures: stdlib eval "
                  "split, position 0 and special tokens excluded (`sae-hooks pretrained show NAME` gives the command).")
        return result
    if args.action == "show":
        e = chosen[0]
        result = {"name": e.name, "path": str(root / e.name), **e.to_dict()}
        if not args.json:
            import json

            print(json.dumps(result, indent=2))
        return result
    if args.action == "path":
        path = verify_entry(chosen[0], root)
        if not args.json:
            print(path)
        return {"name": chosen[0].name, "path": str(path)}
    checked = []
    for e in chosen or reg.entries:
        verify_entry(e, root, shapes=True)
        checked.append(e.name)
        if not args.json:
            print(f"ok  {e.name}  ({len(e.files)} files, {e.size:,} bytes)")
    return {"verified": checked, "registry": str(reg.path)}
