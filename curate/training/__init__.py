"""Torch side: proxy models, and curriculum samplers for a user's training loop."""

from curate.training.infobatch import InfoBatchSampler
from curate.training.seta import (
    DistributedSeTaSampler,
    IndexedDataset,
    LossHistorySampler,
    SeTaSampler,
    gather_for_update,
)

__all__ = [
    "SeTaSampler",
    "InfoBatchSampler",
    "DistributedSeTaSampler",
    "IndexedDataset",
    "LossHistorySampler",
    "gather_for_update",
]
