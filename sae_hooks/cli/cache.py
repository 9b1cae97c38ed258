"""``sae-hooks cache``: run the model once over a token stream and store the activations of some hook points.

Each flag is a field of ``sae_hooks.cache.CacheConfig``. The folder ``--out`` gets fixed-size
safetensors shards and a ``manifest.json`` (settings, token ids and excluded positions in the shards,
activation-norm statistics, commit, per-shard size and sha256). Every shard is written atomically
before the manifest lists it; the same command run again after an interruption (Ctrl-C, a kill, a
full disk) continues after the last complete shard. ``sae-hooks train --from-cache DIR`` then trains
from it with the same run folder, checkpoints and held-out metrics as a live run.

    $ sae-hooks cache --hook resid_post.6 --tokens 400000 --out acts/l6 --json
    $ sae-hooks train --from-cache acts/l6 --tokens 400000 --arch topk --k 32 --d-sae 4608 --out runs/l6
"""

from __future__ import annotations

import argparse

from ._flags import add_config_flags, config_from_args

HELP = "store the activations of some hook points on disk once (resumable shards), to train SAEs from them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cache import CacheConfig

    add_config_flags(p, CacheConfig, flags={"hooks": "hook"})


def run(args: argparse.Namespace) -> dict:
    from ..cache import CacheConfig, write_cache

    result = write_cache(config_from_args(CacheConfig, args))
    if not args.json:
        resumed = f", continued from sequence {result.resumed_from_sequence:,}" if result.resumed_from_sequence else ""
        print(f"cache {result.out}: {result.tokens:,} tokens, {result.rows:,} rows per hook at {', '.join(result.hooks)}, "
              f"{result.shards} shards, {result.bytes / 1e6:,.1f} MB ({result.mb_per_million_tokens_per_hook:,.1f} MB per "
              f"million tokens per hook){resumed}; {result.tokens_per_s:,.0f} tokens/s")
    return result.to_dict()

