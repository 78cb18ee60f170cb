"""Every name an output directory holds, and which of them a commit publishes.

OUT/
  manifest.json        the commit record, written last
  kept/, removed/      the kept rows and the ledger, as part files
  _stages/NN-name/     each stage's finished parts and fitted state; its `work/` is scratch
  <side outputs>       what stages declare (`Stage.side_outputs`: embeddings/, prototypes/, ...)
  report.html, ...     what commands write (the report, `curate export`)
"""

from __future__ import annotations

from typing import Iterable

MANIFEST_NAME = "manifest.json"
KEPT_DIR = "kept"
REMOVED_DIR = "removed"
STAGES_DIR = "_stages"
STAGE_WORK = "work"  # a stage's scratch: never committed, removed when the stage is done
INPUT_STAGE = "input"  # the input check's entry in the manifest's stage list
LOCK_NAME = ".curate-lock"  # a local output's writer lock (curate.output.lock)
LEASE_NAME = ".curate-lease.json"  # an object-store output's writer lease
# What commands (not stages) write at the top level of an output.
COMMAND_OUTPUTS = ("report.html", "report.json", "plots", "scaling", "kept-jsonl")


def output_names(side_outputs: Iterable[str]) -> frozenset[str]:
    """The top-level names an output may hold: curate's own, the commands', and the stages' side
    outputs. Anything else under an output prefix is not curate's."""
    return frozenset(
        {MANIFEST_NAME, KEPT_DIR, REMOVED_DIR, STAGES_DIR, LOCK_NAME, LEASE_NAME, *COMMAND_OUTPUTS, *side_outputs}
    )


def is_hidden(rel: str) -> bool:
    """A temp name or an unfinished attempt (a dot-named part anywhere in the path)."""
    return any(part.startswith(".") for part in rel.split("/"))


def is_stage_work(rel: str) -> bool:
    """Inside a stage's scratch folder: `_stages/NN-name/work/...`."""
    parts = rel.split("/")
    return len(parts) > 2 and parts[0] == STAGES_DIR and parts[2] == STAGE_WORK


def is_committed(rel: str) -> bool:
    """A file the commit record lists: not hidden, not a stage's scratch, not the manifest (the
    commit writes it last)."""
    return not is_hidden(rel) and rel != MANIFEST_NAME and not is_stage_work(rel)
