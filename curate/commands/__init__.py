"""Verbs composed of the lower layers: demo, index, evaluate, export, inspect and verify."""
