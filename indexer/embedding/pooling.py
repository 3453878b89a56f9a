"""Token vectors to one sentence vector, as sentence-transformers' ``models/Pooling.py`` does.

torch is imported inside the functions, so importing this module stays cheap.

>>> check_pooling_modes(("mean", "cls"))
('mean', 'cls')
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mitsuke.indexer.errors import ModelError

__all__ = ["POOLING_MODES", "check_pooling_modes", "exclude_prompt", "pool"]

# sentence-transformers' order: several modes are concatenated in this order.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def check_pooling_modes(modes: Iterable[str]) -> tuple[str, ...]:
    """``modes`` as a tuple, or a :class:`ModelError` naming the first unknown one."""
    modes = tuple(modes)
    for m in modes:
        if m not in POOLING_MODES:
            raise ModelError(f"pooling mode {m!r} is not one of {', '.join(POOLING_MODES)}")
    return modes


def exclude_prompt(mask: Any, prompt_len: int) -> Any:
    """sentence-transformers' ``Pooling._exclude_prompt_from_mask``: mask the prompt tokens out.

    Left padding is detected batch-wide, as there: with none, the first
    ``prompt_len`` columns go; otherwise each row's padding plus its prompt.
    """
    import torch

    mask = mask.clone()
    pad_lengths = mask.to(torch.int32).argmax(dim=1)
    if pad_lengths.sum() == 0:
        mask[:, :prompt_len] = 0
    else:
        positions = torch.arange(mask.size(1), device=mask.device).unsqueeze(0)
        mask[positions < (pad_lengths + prompt_len).unsqueeze(1)] = 0
    return mask


def pool(hidden: Any, mask: Any, modes: Sequence[str], prompt_len: int = 0) -> Any:
    """sentence-transformers' ``Pooling._forward_padded``, mode by mode, concatenated."""
    import torch

    original = mask
    if prompt_len:
        mask = exclude_prompt(mask, prompt_len)
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    out = []
    for mode in modes:
        if mode == "cls":
            # The first position the mask keeps: right after left padding / the prompt.
            first = mask.to(torch.int).argmax(dim=1)
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), first])
        elif mode == "max":
            m = mask.unsqueeze(-1).expand_as(hidden).to(hidden.dtype)
            out.append(hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            m = mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * m).sum(dim=1, dtype=acc)
            count = torch.clamp(m.sum(dim=1, dtype=acc), min=1e-9)
            denom = count if mode == "mean" else torch.sqrt(count)
            out.append((summed / denom).to(hidden.dtype))
        elif mode == "weightedmean":
            m = mask.unsqueeze(-1).to(acc)
            weights = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=acc).view(1, -1, 1)
            weights = weights - original.to(torch.int32).argmax(dim=1).view(-1, 1, 1)
            wm = m * weights
            out.append(((hidden * wm).sum(dim=1) / torch.clamp(wm.sum(dim=1), min=1e-9)).to(hidden.dtype))
        elif mode == "lasttoken":
            # The last position whose mask is 1, for left or right padding alike;
            # an all-zero mask gives a zero vector.
            seq_len = hidden.shape[1]
            values, indices = mask.flip(1).max(1)
            indices = torch.where(values == 0, seq_len - 1, indices)
            pos = seq_len - indices - 1
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
            kept = mask[torch.arange(mask.shape[0], device=mask.device), pos]
            out.append(picked * kept.unsqueeze(-1).to(hidden.dtype))
        else:  # pragma: no cover - validated on load
            raise ModelError(f"unknown pooling mode {mode!r}")
    return torch.cat(out, dim=-1) if len(out) > 1 else out[0]
