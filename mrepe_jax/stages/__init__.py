"""Stages shared by every experiment: what ToyWorld and a real checkpoint on a real dataset both
run (identification, causal patching), written against plain batches, labels and a model."""
