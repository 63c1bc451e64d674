"""Evaluation metrics (paper §3.3): cross-modal consistency (eq 8) and the statistics of tables."""
