"""curate's benchmarks, one module each: `python -m bench.NAME --help` from the repository root.

Each run prints its figures beside the machine's, compares ours with a peer or a baseline in
the same run, and writes `bench/results/NAME.json`; `python -m bench.report` renders them all
into `bench/RESULTS.md`. Shared pieces live in `bench._harness`.
"""

import os

# Benchmarks never download a model: the Hugging Face hub is offline unless the caller says otherwise.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
