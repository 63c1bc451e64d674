"""Stages shared by every experiment: what ToyWorld and a real checkpoint on a real dataset both
run, written against plain batches, labels and a model.

``identification`` (Table 1, streamed), ``alignment`` (Table 2's CMC row), ``steering`` (Table 3,
and the eq 5 / eq 7 edit builders), ``patching`` (eq 2 sweeps with bootstrap CIs), ``reads`` (a
tower's sites over a batch dict) and ``seeds`` (run-seed offsets, per-seed train subsets);
``dual_encoder``: the whole run of a CLIP-like model on one labelled modality and captions, which
the CLIP and CLAP experiments share."""
