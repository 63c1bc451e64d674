"""Model shapes for the param-sharding section of ``bench/scaling.py`` (transformers' field names):
the bench shapes that run here, and real checkpoints' shapes that are only projected (no weights:
``jax.eval_shape``)."""

from __future__ import annotations

CLIP = {
    "clip_tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=32, patch_size=8),
                      text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=512, max_position_embeddings=16), projection_dim=16),
    "clip_b32": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                 image_size=224, patch_size=32),
                     text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                               vocab_size=49408, max_position_embeddings=77), projection_dim=512),
    # laion/CLIP-ViT-bigG-14-laion2B-39B-b160k
    "clip_bigG": dict(vision=dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48,
                                  num_attention_heads=16, image_size=224, patch_size=14),
                      text=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                                vocab_size=49408, max_position_embeddings=77), projection_dim=1280),
}


def _blip2(vision, qformer, text, nq=32):
    return {"model_type": "blip-2", "vision_config": vision,
            "qformer_config": dict(qformer, encoder_hidden_size=vision["hidden_size"]),
            "text_config": dict(text, model_type="opt", word_embed_proj_dim=text["hidden_size"]),
            "num_query_tokens": nq, "image_token_index": text["vocab_size"] - 7}


QFORMER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               cross_attention_frequency=2)
BLIP2 = {
    "blip2_tiny": _blip2(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8),
                         dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              cross_attention_frequency=2),
                         dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                              max_position_embeddings=64), nq=8),
    # bench/generate.py's shape: EVA 12 x 768, the Q-Former, an OPT-125m-shaped decoder.
    "blip2_bench": _blip2(dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                               image_size=224, patch_size=14), QFORMER,
                          dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072,
                               num_attention_heads=12, max_position_embeddings=2048)),
    # Salesforce/blip2-opt-6.7b: EVA ViT-g/14, the Q-Former, OPT-6.7b.
    "blip2_opt_6.7b": _blip2(dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                                  num_attention_heads=16, image_size=224, patch_size=14), QFORMER,
                             dict(vocab_size=50272, hidden_size=4096, num_hidden_layers=32, ffn_dim=16384,
                                  num_attention_heads=32, max_position_embeddings=2048)),
}
