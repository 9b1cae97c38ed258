"""Which positions count: the leading attention-sink positions and special tokens are masked out.

Position 0 is an attention sink: in SmolLM2-135M its residual norm reaches ~23,000 from layer 12
on, orders of magnitude above the other positions. Left in, it dominates an SAE's loss and every
pooled reconstruction metric, so masks drop it (and separators such as ``<|im_end|>``) by default.

    mask = make_mask(input_ids, tokenizer)   # [batch, ctx] bool, False at t = 0 and special tokens
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Int64
from torch import Tensor

__all__ = ["make_mask", "special_token_ids"]


def special_token_ids(tokenizer: Any) -> list[int]:
    """Sorted ids of every special token: ``all_special_ids`` plus added tokens flagged special.

        special_token_ids(tok)  # SmolLM2: [0, 1, ..., 16] (<|endoftext|>, <|im_start|>, <|im_end|>, <repo_name>, ...)
    """
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    # SmolLM2 flags 17 added tokens special but lists only 3 in all_special_ids; the other 14
    # (<file_sep>, <jupyter_code>, ...) are control tokens just the same.
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return sorted(ids)


def make_mask(
    input_ids: Int64[Tensor, "batch ctx"],
    tokenizer_or_special_ids: Any,
    exclude_first: int = 1,
    exclude_special: bool = True,
) -> Bool[Tensor, "batch ctx"]:
    """Positions to train and evaluate on: ``False`` at ``t < exclude_first`` and at special tokens.

        mask = make_mask(input_ids, tokenizer)            # position 0 and <|im_end|> etc. excluded
        mask = make_mask(input_ids, [2], exclude_first=0)  # only id 2 excluded
    """
    if input_ids.dim() != 2:
        raise ValueError(f"make_mask: input_ids must be [batch, ctx], got shape {tuple(input_ids.shape)}.")
    if isinstance(exclude_first, bool) or not isinstance(exclude_first, int) or exclude_first < 0:
        raise ValueError(f"make_mask: exclude_first={exclude_first!r}; it must be an int >= 0.")
    mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    mask[:, :exclude_first] = False
    if exclude_special:
        if isinstance(tokenizer_or_special_ids, Tensor):
            special = tokenizer_or_special_ids.to(device=input_ids.device, dtype=input_ids.dtype)
        elif hasattr(tokenizer_or_special_ids, "all_special_ids"):
            special = torch.tensor(special_token_ids(tokenizer_or_special_ids), dtype=input_ids.dtype,
                                   device=input_ids.device)
        else:
            special = torch.tensor([int(i) for i in tokenizer_or_special_ids], dtype=input_ids.dtype,
                                   device=input_ids.device)
        if special.numel():
            mask &= ~torch.isin(input_ids, special)
    return mask
