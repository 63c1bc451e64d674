"""SAE features as edits at a site (``edits.Edit``): a latent clamped through encode-edit-decode
with the SAE's error term kept, and the reconstruction spliced in (what the SAE's downstream cost
measures).

The decoder is affine, so clamping latent ``l`` to ``v`` moves ``x`` by ``(v - z_l) W_dec[l]``:
``x' = x + decode(z') - decode(z)`` keeps ``x - decode(z)``, the part of ``x`` the SAE does not
explain, and a clamp to the value a latent already has is the identity. (Templeton et al. 2024,
"Scaling Monosemanticity", steer by clamping features this way.)
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from mrepe_jax.edits import Edit, select
from mrepe_jax.features import sae as sae_lib


@struct.dataclass
class SAEClamp(Edit):
    """Latent ``latent`` (an int, traced or not) clamped to ``value`` on the tokens ``where``
    selects, error term kept. ``params``: SAELens-named SAE params (arrays, so a sweep over clamp
    values or over SAEs of one shape is one program); ``cfg``, ``k``: how it encodes."""

    params: dict
    latent: jnp.ndarray
    value: jnp.ndarray
    k: jnp.ndarray = 0
    where: jnp.ndarray | None = None
    cfg: sae_lib.SAEConfig = struct.field(pytree_node=False, default=None)

    def __call__(self, x, site: str):
        member = sae_lib.Member(jnp.asarray(self.k, jnp.int32), jnp.ones((self.cfg.d_sae,), bool))
        z = sae_lib.encode(self.params, x, self.cfg, member)
        current = jnp.take(z, jnp.asarray(self.latent), axis=-1)
        row = jnp.take(self.params["W_dec"], jnp.asarray(self.latent), axis=0)
        edited = x + ((self.value - current)[..., None] * row).astype(x.dtype)
        return select(self.where, edited, x, site)


@struct.dataclass
class SAESplice(Edit):
    """The site's value replaced by the SAE's reconstruction (its error term dropped)."""

    params: dict
    k: jnp.ndarray = 0
    where: jnp.ndarray | None = None
    cfg: sae_lib.SAEConfig = struct.field(pytree_node=False, default=None)

    def __call__(self, x, site: str):
        member = sae_lib.Member(jnp.asarray(self.k, jnp.int32), jnp.ones((self.cfg.d_sae,), bool))
        return select(self.where, sae_lib.reconstruct(self.params, x, self.cfg, member).astype(x.dtype), x, site)
