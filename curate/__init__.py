"""curate: streaming data curation, pruning and compute-aware data mixes."""

__version__ = "0.1.0"
