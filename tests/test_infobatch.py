"""InfoBatchSampler: the baseline SeTa extends (prune below-mean losses, rescale the rest)."""

from __future__ import annotations

import numpy as np
import torch

from curate.training import InfoBatchSampler

N = 4000


def losses_for(n: int = N) -> np.ndarray:
    return np.random.default_rng(0).exponential(size=n)


def step_epoch(sampler: InfoBatchSampler, epoch: int, losses: np.ndarray) -> np.ndarray:
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64)
    sampler.update(order, losses[order])
    return order


def test_first_epoch_sees_everything_with_unit_weights():
    sampler = InfoBatchSampler(N, 10)
    order = step_epoch(sampler, 0, losses_for())
    assert np.array_equal(np.sort(order), np.arange(N))
    assert torch.equal(sampler.weights(order), torch.ones(N))


def test_prunes_half_of_below_mean_samples_and_keeps_all_hard_ones():
    losses = losses_for()
    sampler = InfoBatchSampler(N, 10, seed=1)
    step_epoch(sampler, 0, losses)
    order = step_epoch(sampler, 1, losses)
    well = losses < losses.mean()
    kept = np.zeros(N, bool)
    kept[order] = True
    assert kept[~well].all()
    share = kept[well].mean()
    assert 0.45 < share < 0.55


def test_kept_well_learned_samples_are_rescaled_by_inverse_keep_ratio():
    losses = losses_for()
    sampler = InfoBatchSampler(N, 10, prune_ratio=0.5)
    step_epoch(sampler, 0, losses)
    sampler.set_epoch(1)
    order = sampler.selection()
    w = sampler.weights(order).numpy()
    well = losses[order] < losses.mean()
    assert np.allclose(w[well], 2.0) and np.allclose(w[~well], 1.0)
    # Rescaling keeps the expected total loss weight near the full data's.
    assert abs((w * losses[order]).sum() / losses.sum() - 1.0) < 0.05


def test_annealed_epochs_use_everything_unweighted():
    losses = losses_for()
    sampler = InfoBatchSampler(N, 8, delta=0.875)  # epoch 7 anneals
    for epoch in range(7):
        assert len(step_epoch(sampler, epoch, losses)) < N or epoch == 0
    order = step_epoch(sampler, 7, losses)
    assert len(order) == N and torch.equal(sampler.weights(order), torch.ones(N))


def test_len_matches_iteration_and_seed_is_deterministic():
    losses = losses_for()
    runs = []
    for seed in (3, 3, 4):
        sampler = InfoBatchSampler(N, 10, seed=seed)
        seq = []
        for epoch in range(6):
            sampler.set_epoch(epoch)
            size = len(sampler)
            order = step_epoch(sampler, epoch, losses)
            assert size == len(order) == len(sampler)
            seq.append(order)
        runs.append(seq)
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))
