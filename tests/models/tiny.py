"""A tiny randomly initialised Flax CLIP shared by tests that don't need transformers."""

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.models.clip import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

CONFIG = CLIPConfig(
    CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, image_size=16, patch_size=8),
    CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, vocab_size=100, max_position_embeddings=10,
                   eos_token_id=99),
    projection_dim=16,
)


def tiny_clip(seed: int = 0):
    """(model, variables, pixels [2,16,16,3], ids [2,5], mask [2,5]) with a padded second row."""
    model = CLIPModel(CONFIG)
    rng = np.random.default_rng(seed)
    pixels = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    ids = jnp.array([[0, 5, 7, 8, 99], [0, 11, 99, 1, 1]], jnp.int32)
    mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], jnp.int32)
    variables = model.init(jax.random.key(seed), pixels, ids, mask)
    return model, variables, pixels, ids, mask
