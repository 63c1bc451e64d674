"""mrepe_jax: multimodal representation engineering in JAX/Flax.

Every intermediate state is a named site (``mrepe_jax.sites``); interventions are pure edit
pytrees (``mrepe_jax.edits``) passed into ``model.apply``. See README.md for a tour.

``mrepe_jax.clear_caches()`` forgets every compiled program and cache of the package (and JAX's),
so that a long process (a notebook) that drops a model frees it (``mrepe_jax.caches``).
"""

from mrepe_jax.caches import clear_caches

__all__ = ["clear_caches"]
__version__ = "0.1.0"
