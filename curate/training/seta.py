"""SeTa as a `torch.utils.data.Sampler` for a user's training loop.

    sampler = SeTaSampler(len(dataset), epochs=10, seed=0)
    loader = DataLoader(IndexedDataset(dataset), sampler=sampler, batch_size=256)
    for epoch in range(10):
        sampler.set_epoch(epoch)
        for indices, (x, y) in loader:
            losses = F.cross_entropy(model(x), y, reduction="none")
            losses.mean().backward(); opt.step(); opt.zero_grad()
            sampler.update(indices, losses)

The selection for an epoch is drawn once (on the first `len()` or iteration after
`set_epoch`) from the losses recorded so far, so `len(sampler)` always equals what that
epoch yields. The algorithm lives in `curate.algorithms.loss_clusters`.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from curate.algorithms.loss_clusters import SeTaConfig, epoch_mode, epoch_seed, select_epoch

DEFAULT_INITIAL_LOSS = 3.0  # InfoBatch's starting score: unseen samples look hard, not easy


class LossHistorySampler(Sampler[int]):
    """Shared machinery: per-sample last-seen losses, per-epoch frozen selections, shuffling.

    Subclasses implement `_select(epoch) -> sorted indices`. Without `set_epoch`, each new
    iteration moves to the next epoch, so forgetting it does not replay one epoch forever."""

    def __init__(self, n: int, epochs: int, seed: int = 0, initial_loss: float = DEFAULT_INITIAL_LOSS):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if not math.isfinite(initial_loss):
            raise ValueError(f"initial_loss must be finite, got {initial_loss}")
        self.n = int(n)
        self.epochs = int(epochs)
        self.seed = int(seed)
        self.initial_loss = float(initial_loss)
        self.losses = np.full(self.n, self.initial_loss, dtype=np.float64)
        self.seen = np.zeros(self.n, dtype=bool)
        self.epoch = 0
        self._selection: np.ndarray | None = None
        self._iterated = False
        self.visits = 0

    # -- epoch control --------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self._selection = None
        self._iterated = False

    def selection(self) -> np.ndarray:
        """Sorted indices of this epoch's samples (drawn now if not yet drawn)."""
        if self._selection is None:
            self._selection = np.asarray(self._select(self.epoch), dtype=np.int64)
        return self._selection

    def order(self) -> np.ndarray:
        """This epoch's selection in its (seeded) shuffled training order."""
        selected = self.selection()
        return selected[epoch_seed(self.seed, self.epoch, 1).permutation(len(selected))]

    def __len__(self) -> int:
        return len(self.selection())

    def __iter__(self) -> Iterator[int]:
        if self._iterated:
            self.set_epoch(self.epoch + 1)
        self._iterated = True
        order = self.order()
        self.visits += len(order)
        return iter(order.tolist())

    # -- loss feedback --------------------------------------------------------------
    def update(self, indices: Any, losses: Any) -> None:
        """Record per-sample losses (`reduction="none"`) for `indices`; the last one wins."""
        idx = _as_numpy(indices).astype(np.int64, copy=False).reshape(-1)
        values = _as_numpy(losses).astype(np.float64, copy=False).reshape(-1)
        if len(idx) != len(values):
            raise ValueError(f"update got {len(idx)} indices but {len(values)} losses (use reduction='none')")
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"indices must be in [0, {self.n}), got {idx.min()}..{idx.max()}")
        finite = np.isfinite(values)
        self.losses[idx[finite]] = values[finite]
        self.seen[idx[finite]] = True

    def _select(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything needed to resume mid-run (losses, epoch, visit count)."""
        return {"losses": self.losses.copy(), "seen": self.seen.copy(), "epoch": self.epoch, "visits": self.visits}

    def load_state_dict(self, state: dict) -> None:
        self.losses = np.asarray(state["losses"], dtype=np.float64).copy()
        self.seen = np.asarray(state["seen"], dtype=bool).copy()
        self.visits = int(state["visits"])
        self.set_epoch(int(state["epoch"]))


class SeTaSampler(LossHistorySampler):
    """SeTa: random pruning, loss clusters easy to hard, a sliding window of clusters, annealing.

    Defaults are the authors' (`groups=10`, `window_scale=0.5`, `delta=0.875`, no random
    pruning). Epoch 0 and epochs at or past `delta * epochs` see the whole (randomly pruned)
    set; the others see one window of clusters. No loss rescaling (unlike InfoBatch)."""

    def __init__(
        self,
        n: int,
        epochs: int,
        seed: int = 0,
        prune_ratio: float = 0.0,
        groups: int = 10,
        window_scale: float = 0.5,
        delta: float = 0.875,
        initial_loss: float = DEFAULT_INITIAL_LOSS,
    ):
        super().__init__(n, epochs, seed, initial_loss)
        self.config = SeTaConfig(
            epochs=epochs, prune_ratio=prune_ratio, groups=groups, window_scale=window_scale, delta=delta
        )

    def mode(self, epoch: int | None = None) -> str:
        """'full', 'window' or 'annealed' for `epoch` (default: the current one)."""
        return epoch_mode(self.epoch if epoch is None else epoch, self.config)

    def _select(self, epoch: int) -> np.ndarray:
        return select_epoch(self.losses, epoch, self.config, self.seed)


class DistributedSeTaSampler(Sampler[int]):
    """One rank's share of a SeTa (or InfoBatch) epoch for DistributedDataParallel.

    Every rank holds an identical `base` sampler (same n, seed, options) and must feed it the
    same losses: call `update` with all ranks' (indices, losses), e.g. gathered with
    `gather_for_update`. The shuffled epoch order is padded by wrapping around to a multiple
    of `num_replicas` (as `DistributedSampler` does) and rank r takes positions r, r + R, ..."""

    def __init__(self, base: LossHistorySampler, num_replicas: int | None = None, rank: int | None = None):
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("pass num_replicas and rank, or initialize torch.distributed first")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.base = base
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.base) / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        if self.base._iterated:
            self.base.set_epoch(self.base.epoch + 1)
        self.base._iterated = True
        order = self.base.order()
        total = math.ceil(len(order) / self.num_replicas) * self.num_replicas
        if total > len(order) and len(order):
            order = np.resize(order, total)  # wrap-around padding keeps ranks in step
        mine = order[self.rank : total : self.num_replicas]
        self.base.visits += len(mine)
        return iter(mine.tolist())

    def update(self, indices: Any, losses: Any) -> None:
        self.base.update(indices, losses)

    def weights(self, indices: Any) -> torch.Tensor:
        return self.base.weights(indices)  # type: ignore[attr-defined]


def gather_for_update(indices: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' (indices, losses) of this step, for `DistributedSeTaSampler.update`.
    Ranks must pass equal-length tensors (true with the padded, equal-length shards)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return indices, losses
    world = dist.get_world_size()
    idx = [torch.empty_like(indices) for _ in range(world)]
    val = [torch.empty_like(losses.detach()) for _ in range(world)]
    dist.all_gather(idx, indices.contiguous())
    dist.all_gather(val, losses.detach().contiguous())
    return torch.cat(idx), torch.cat(val)


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so each item comes with its index: `(index, item)`.
    The default collate turns the indices into a tensor the sampler's `update` accepts."""

    def __init__(self, dataset: Sequence):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
