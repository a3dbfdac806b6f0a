"""Experiment scripts: one claim each; run by `densityformula reproduce` (see densityformula/cli.py)."""
