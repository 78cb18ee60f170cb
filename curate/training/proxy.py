"""A small, fast proxy classifier (fastText-like bag of hashed n-grams) and per-sample losses.

Proxy models give difficulty signals (per-sample loss) and the small training runs that
scaling-law fits need, on CPU in seconds. Out-of-fold losses make sure a sample's loss is
never measured by a model that trained on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from curate.training.features import Bags


class BagClassifier(nn.Module):
    """Mean of hashed n-gram embeddings -> optional hidden layer -> class logits."""

    def __init__(self, num_buckets: int, num_classes: int, dim: int = 64, hidden: bool = False):
        super().__init__()
        self.bag = nn.EmbeddingBag(num_buckets, dim, mode="mean", sparse=True)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(dim, num_classes)) if hidden else nn.Linear(dim, num_classes)

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(indices, offsets))


@dataclass
class ProxyConfig:
    num_buckets: int = 1 << 18
    dim: int = 64
    hidden: bool = False
    lr: float = 0.02
    batch_size: int = 256
    weight_decay: float = 0.0


class _Optimizers:
    """Sparse Adam for the embedding table (only touched rows update), Adam for the head."""

    def __init__(self, model: BagClassifier, config: ProxyConfig):
        self.sparse = torch.optim.SparseAdam(list(model.bag.parameters()), lr=config.lr)
        self.dense = torch.optim.Adam(model.head.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none=set_to_none)
        self.dense.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.sparse.step()
        self.dense.step()


def build_model(config: ProxyConfig, num_classes: int, seed: int) -> tuple[BagClassifier, _Optimizers]:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = BagClassifier(config.num_buckets, num_classes, config.dim, config.hidden)
    torch.random.set_rng_state(generator_state)
    return model, _Optimizers(model, config)


def _tensors(bags: Bags, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    part = bags.take(rows)
    return torch.from_numpy(part.indices), torch.from_numpy(part.offsets[:-1])


def train_steps(
    model: BagClassifier,
    optimizer: _Optimizers,
    bags: Bags,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    weights: Callable[[np.ndarray], np.ndarray] | None = None,
    on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> np.ndarray:
    """One pass over `order` (row indices, repeats allowed) in minibatches.
    Returns the per-sample training losses in `order`'s order; `on_batch(rows, losses)` sees each
    step's losses (what a SeTa/InfoBatch sampler's `update` needs); `weights(rows)` rescales them."""
    model.train()
    label_tensor = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    losses = np.empty(len(order), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        indices, offsets = _tensors(bags, rows)
        per_sample = nn.functional.cross_entropy(model(indices, offsets), label_tensor[rows], reduction="none")
        loss = per_sample * torch.from_numpy(weights(rows).astype(np.float32)) if weights is not None else per_sample
        optimizer.zero_grad(set_to_none=True)
        loss.mean().backward()
        optimizer.step()
        detached = per_sample.detach().numpy()
        losses[start : start + len(rows)] = detached
        if on_batch is not None:
            on_batch(rows, detached)
    return losses


@torch.no_grad()
def predict_losses(
    model: BagClassifier, bags: Bags, labels: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample cross-entropy and correctness for `rows` (default: all)."""
    model.eval()
    rows = np.arange(bags.rows) if rows is None else np.asarray(rows)
    label_tensor = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    losses = np.empty(len(rows), dtype=np.float32)
    correct = np.empty(len(rows), dtype=bool)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        logits = model(*_tensors(bags, chunk))
        target = label_tensor[chunk]
        losses[start : start + len(chunk)] = nn.functional.cross_entropy(logits, target, reduction="none").numpy()
        correct[start : start + len(chunk)] = (logits.argmax(1) == target).numpy()
    return losses, correct


def out_of_fold_losses(
    bags: Bags,
    labels: np.ndarray,
    *,
    folds: int = 5,
    epochs: int = 3,
    seed: int = 0,
    config: ProxyConfig = ProxyConfig(),
    on_epoch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Each sample's loss from a model trained on the other folds only.
    `on_epoch(fold, epoch)` is called after each training epoch (progress bars)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    num_classes = int(labels.max()) + 1 if n else 1
    fold_of = fold_assignment(n, folds, seed)
    losses = np.empty(n, dtype=np.float32)
    for fold in range(max(folds, 2)):
        held_out, held_out_losses = fold_losses(
            bags, labels, fold_of, fold, num_classes, epochs=epochs, seed=seed, config=config, on_epoch=on_epoch
        )
        losses[held_out] = held_out_losses
    return losses


def fold_assignment(n: int, folds: int, seed: int) -> np.ndarray:
    """The fold of each of n samples (seeded, balanced)."""
    return np.random.default_rng(seed).permutation(n) % max(folds, 2)


def fold_losses(
    bags: Bags,
    labels: np.ndarray,
    fold_of: np.ndarray,
    fold: int,
    num_classes: int,
    *,
    epochs: int = 3,
    seed: int = 0,
    config: ProxyConfig = ProxyConfig(),
    on_epoch: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows, their losses) for one fold: a model trained on every other fold. Folds
    are independent, so they can run in any process and order with the same result."""
    labels = np.asarray(labels, dtype=np.int64)
    held_out = np.nonzero(fold_of == fold)[0]
    train_rows = np.nonzero(fold_of != fold)[0]
    model, optimizer = build_model(config, num_classes, seed + fold)
    for epoch in range(epochs):
        order = train_rows[np.random.default_rng([seed, fold, epoch]).permutation(len(train_rows))]
        train_steps(model, optimizer, bags, labels, order, config.batch_size)
        if on_epoch is not None:
            on_epoch(fold, epoch)
    losses, _ = predict_losses(model, bags, labels, held_out)
    return held_out, losses


def encode_labels(labels: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Labels -> dense ints by sorted label value (deterministic across runs and shard
    layouts), computed column-wise by Arrow; returns the codes and the number of classes."""
    values = labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    classes = pc.unique(values)
    classes = classes.take(pc.sort_indices(classes))
    return np.asarray(pc.index_in(values, value_set=classes)).astype(np.int64), len(classes)
