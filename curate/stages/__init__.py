"""Pipeline stages: one module per kind, each defines `STAGE` (see `base.py`)."""
