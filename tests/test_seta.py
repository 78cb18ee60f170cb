"""SeTaSampler: the sliding-window curriculum in a user's PyTorch loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from curate.training import DistributedSeTaSampler, IndexedDataset, SeTaSampler

N = 1000


def known_losses(n: int = N) -> np.ndarray:
    """Evenly spread fixed losses: sample i has loss i / n, so clusters are index ranges."""
    return np.arange(n) / n


def run_epochs(sampler: SeTaSampler, epochs: int, losses: np.ndarray) -> list[np.ndarray]:
    seen = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
        sampler.update(order, losses[order])
        seen.append(order)
    return seen


def test_most_epochs_visit_fewer_than_70_percent():
    epochs = run_epochs(SeTaSampler(N, 10, seed=0), 10, known_losses())
    small = [len(e) < 0.7 * N for e in epochs]
    assert sum(small) >= 5


def test_first_and_annealed_epochs_see_everything():
    sampler = SeTaSampler(N, 16, seed=0)  # delta 0.875 -> epochs 14 and 15 anneal
    epochs = run_epochs(sampler, 16, known_losses())
    for e in (0, 14, 15):
        assert np.array_equal(np.sort(epochs[e]), np.arange(N)), e
    assert all(len(epochs[e]) < N for e in range(1, 14))
    assert sampler.mode(13) == "window" and sampler.mode(14) == "annealed"


def test_window_slides_easy_to_hard_then_starts_over():
    losses = known_losses()
    epochs = run_epochs(SeTaSampler(N, 20, seed=0), 20, losses)
    means = [losses[e].mean() for e in epochs[1:6]]  # window starts 1..5
    assert all(a < b for a, b in zip(means, means[1:]))
    assert losses[epochs[5]].max() == losses.max()  # the last window reaches the hardest cluster
    assert losses[epochs[6]].min() == losses.min()  # epoch 6: start 0, back at the easy end
    assert losses[epochs[6]].max() < 0.6


def test_every_sample_visited_once_per_cycle():
    losses = known_losses()
    epochs = run_epochs(SeTaSampler(N, 30, seed=3), 30, losses)
    cycle = 10 - 5 + 1
    for first in range(1, 26 - cycle + 1):  # every run of `cycle` consecutive windowed epochs
        visited = np.unique(np.concatenate(epochs[first : first + cycle]))
        assert len(visited) == N, first


def test_epoch_has_no_repeats_and_is_shuffled():
    sampler = SeTaSampler(N, 10, seed=0)
    for order in run_epochs(sampler, 10, known_losses()):
        assert len(np.unique(order)) == len(order)
        assert not np.all(np.diff(order) > 0)


def test_same_seed_same_sequence_other_seed_differs():
    losses = np.random.default_rng(5).lognormal(size=N)
    a = run_epochs(SeTaSampler(N, 10, seed=7), 10, losses)
    b = run_epochs(SeTaSampler(N, 10, seed=7), 10, losses)
    c = run_epochs(SeTaSampler(N, 10, seed=8), 10, losses)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_len_matches_iteration_even_with_updates_mid_epoch():
    losses = known_losses()
    sampler = SeTaSampler(N, 10, seed=0)
    run_epochs(sampler, 1, losses)
    rng = np.random.default_rng(0)
    for epoch in range(1, 10):
        sampler.set_epoch(epoch)
        before = len(sampler)
        yielded = []
        for i in sampler:
            yielded.append(i)
            if len(yielded) % 100 == 0:  # losses change during the epoch
                sampler.update(np.array(yielded[-100:]), rng.random(100))
        assert before == len(yielded) == len(sampler)


def test_unseen_samples_start_at_the_initial_loss():
    sampler = SeTaSampler(1000, 10, seed=0, initial_loss=3.0)
    sampler.update(np.arange(500), np.linspace(0.0, 1.0, 500))
    sampler.set_epoch(5)  # window start 5: clusters 5..9, the hardest
    chosen = np.array(list(sampler))
    assert set(range(500, 1000)) <= set(chosen.tolist())


def test_update_accepts_tensors_and_checks_lengths():
    sampler = SeTaSampler(10, 4)
    sampler.update(torch.tensor([1, 2]), torch.tensor([0.5, 1.5], requires_grad=True))
    assert sampler.losses[1] == 0.5 and sampler.losses[2] == 1.5
    with pytest.raises(ValueError):
        sampler.update([1, 2, 3], [0.1])
    with pytest.raises(IndexError):
        sampler.update([10], [0.1])


def test_random_pruning_shrinks_every_epoch_after_the_first():
    sampler = SeTaSampler(N, 10, seed=0, prune_ratio=0.4)
    epochs = run_epochs(sampler, 10, known_losses())
    assert len(epochs[0]) == N
    assert len(epochs[9]) == int(N * 0.6)  # annealed: a uniform subset of the pruned size
    assert all(len(e) <= int(N * 0.6) for e in epochs[1:])


def test_without_set_epoch_each_iteration_is_the_next_epoch():
    losses = known_losses()
    auto = SeTaSampler(N, 10, seed=1)
    explicit = SeTaSampler(N, 10, seed=1)
    for epoch in range(4):
        a = np.array(list(auto))
        auto.update(a, losses[a])
        explicit.set_epoch(epoch)
        b = np.array(list(explicit))
        explicit.update(b, losses[b])
        assert np.array_equal(a, b)


def test_dataloader_training_loop():
    torch.set_num_threads(1)  # tiny model: threads only add contention on a shared machine
    torch.manual_seed(0)
    n = 512
    x = torch.randn(n, 8)
    y = (x[:, 0] > 0).long()
    sampler = SeTaSampler(n, 6, seed=0)
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), sampler=sampler, batch_size=64)
    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(6):
        sampler.set_epoch(epoch)
        seen = []
        for indices, (xb, yb) in loader:
            losses = torch.nn.functional.cross_entropy(model(xb), yb, reduction="none")
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
            sampler.update(indices, losses)
            seen.append(indices)
        seen = torch.cat(seen).numpy()
        assert np.array_equal(np.sort(seen), sampler.selection())
        assert len(seen) == len(sampler) and len(loader) == -(-len(sampler) // 64)
    assert sampler.seen.all()
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


def test_distributed_shards_cover_the_epoch_evenly():
    losses = known_losses()
    ranks = [DistributedSeTaSampler(SeTaSampler(N, 10, seed=2), num_replicas=3, rank=r) for r in range(3)]
    for epoch in range(4):
        shards = []
        for d in ranks:
            d.set_epoch(epoch)
            shards.append(np.array(list(d)))
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(ranks[0])
        union = np.unique(np.concatenate(shards))
        assert np.array_equal(union, ranks[0].base.selection())
        everything = np.concatenate(shards)
        for d in ranks:  # every rank records all ranks' losses
            d.update(everything, losses[everything])
