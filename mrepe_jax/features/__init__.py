"""Sparse-autoencoder features at any named site: the SAE architectures as pure functions of a
params pytree (``sae``), training a stack of them on activations streamed from a model through
``train/loop.fit`` (``train``, ``stream``), and SAELens' saved format (``saelens``)."""
