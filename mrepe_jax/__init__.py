"""mrepe_jax: multimodal representation engineering in JAX/Flax.

Every intermediate state is a named site (``mrepe_jax.sites``); interventions are pure edit
pytrees (``mrepe_jax.edits``) passed into ``model.apply``. See README.md for a tour.
"""

__version__ = "0.1.0"
