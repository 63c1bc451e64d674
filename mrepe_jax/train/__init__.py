"""Training: one generic, resumable loop (``loop.fit``) that every trained component reuses."""
