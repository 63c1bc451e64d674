"""Training: one generic, resumable loop (``loop.fit``) that every trained component reuses, the
contrastive objectives (``contrastive``: InfoNCE, eq 3), and what the project trains itself on
ToyWorld: the tri-modal CLIP (``toyclip``), the captioner (``captioner``) and zero-shot heads."""
