"""Interventions (paper §3.2.3): concept edits built from directions and prototypes (eq 5, 7)."""
