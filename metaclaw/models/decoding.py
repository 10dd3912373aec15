"""Pieces of batched decoding shared by the policy server's engine and the local training
backend, so both batch and seed the same way."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def left_padded(
    prompts: Sequence[Sequence[int]], pad_id: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts right-aligned in one tensor, the mask of their real tokens, and each token's
    position (counted from its row's first real token): left padding puts every row's next
    token in the last column, so a batch decodes in lockstep."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad_id or 0), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def seeded_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with `seed`, or from the OS when there is none."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return gen
