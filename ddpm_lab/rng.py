"""Capture and restore every random number generator training draws from (Python, NumPy,
torch CPU and CUDA), so a resumed run continues the exact random stream of the original.

States are kept as tensors, ints and tuples only, so checkpoints still load with
`torch.load(weights_only=True)`. Ours rather than `torch.random.fork_rng`: that scopes torch's own
generators around a block; a checkpoint needs Python's and NumPy's as well, as plain objects.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """The state of all global generators, as plain objects a checkpoint can hold."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (CUDA states only when CUDA is in use here)."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
