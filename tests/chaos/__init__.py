"""Fault and bad-input runs (marker `chaos`): see docs/reliability.md."""
