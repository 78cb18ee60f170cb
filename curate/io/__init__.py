"""Bytes in and out: atomic writes, storage URLs, cache paths, input formats, part files, the store mirror."""
