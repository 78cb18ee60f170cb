"""Indexes of finished outputs, so later runs deduplicate new rows against them without reading
the old data: `store` (the versioned on-disk format), one module per dedup kind (`exact`,
`minhash`), `earlier` (the ledger side of a match), `build` (`curate index`) and `origin` (where a local
copy of an earlier output in a store came from, for workers that fetch its files)."""
