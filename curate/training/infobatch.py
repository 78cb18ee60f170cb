"""InfoBatch (Qin et al., ICLR 2024), the baseline SeTa extends, as a sampler.

Each epoch before `delta * epochs`, samples whose last loss is below the mean are
"well learned"; a random `prune_ratio` of them is skipped and the rest have their loss
scaled by `1 / (1 - prune_ratio)` (`weights(indices)`) so the expected gradient is
unchanged. Later epochs anneal to the full data with weight 1. The first epoch sees
everything because every sample starts at the same loss (nothing is below the mean).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from curate.algorithms.loss_clusters import epoch_seed
from curate.training.seta import DEFAULT_INITIAL_LOSS, LossHistorySampler, _as_numpy


class InfoBatchSampler(LossHistorySampler):
    """Soft random pruning of below-mean-loss samples with loss rescaling, then annealing."""

    def __init__(
        self,
        n: int,
        epochs: int,
        seed: int = 0,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        initial_loss: float = DEFAULT_INITIAL_LOSS,
    ):
        super().__init__(n, epochs, seed, initial_loss)
        if not 0.0 <= prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
        if not 0.0 <= delta <= 1.0:
            raise ValueError(f"delta must be in [0, 1], got {delta}")
        self.prune_ratio = float(prune_ratio)
        self.delta = float(delta)
        self._weights = np.ones(self.n, dtype=np.float32)

    def annealed(self, epoch: int | None = None) -> bool:
        return (self.epoch if epoch is None else epoch) >= self.delta * self.epochs

    def _select(self, epoch: int) -> np.ndarray:
        self._weights = np.ones(self.n, dtype=np.float32)
        if self.annealed(epoch) or self.n == 0 or self.prune_ratio == 0.0:
            return np.arange(self.n, dtype=np.int64)
        well_learned = self.losses < self.losses.mean()
        candidates = np.nonzero(well_learned)[0]
        rng = epoch_seed(self.seed, epoch, 2)
        dropped = candidates[rng.random(len(candidates)) < self.prune_ratio]
        kept_well = np.setdiff1d(candidates, dropped, assume_unique=True)
        self._weights[kept_well] = 1.0 / (1.0 - self.prune_ratio)
        keep = np.ones(self.n, dtype=bool)
        keep[dropped] = False
        return np.nonzero(keep)[0].astype(np.int64)

    def weights(self, indices: Any) -> torch.Tensor:
        """Loss multipliers for `indices` this epoch: 1/(1 - prune_ratio) for kept
        well-learned samples, 1 otherwise. Multiply the per-sample losses before the mean."""
        self.selection()  # weights belong to this epoch's draw
        idx = _as_numpy(indices).astype(np.int64, copy=False).reshape(-1)
        return torch.from_numpy(self._weights[idx].copy())
