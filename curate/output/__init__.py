"""The output directory: its names, the manifest, the ledger, local and object-store commits, readers."""
