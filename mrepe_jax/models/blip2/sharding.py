"""BLIP-2's sharding rule tables (``models.sharding``): one per part, and the composite's.

- EVA ViT: CLIP's layout with BLIP-2's packed ``qkv`` (column-parallel over its 3D outputs; GSPMD
  re-splits q, k and v where the heads need it) and ``projection`` (row-parallel).
- Q-Former: column-parallel ``query`` / ``key`` / ``value`` (self- and cross-attention) and
  ``intermediate_query``, row-parallel ``output/dense`` and ``output_query/dense``.
- OPT: column-parallel q/k/v and ``fc1``, row-parallel ``out_proj`` and ``fc2``, ``embed_tokens``
  split over the vocabulary (the lm_head is tied to it), learned positions replicated.
- The composite adds ``language_projection`` (column-parallel) and the replicated ``query_tokens``.
"""

from jax.sharding import PartitionSpec as P

from mrepe_jax.models.clip.sharding import CLIP_RULES
from mrepe_jax.models.sharding import COLUMN, COLUMN_BIAS, MODEL, REPLICATED, ROW

EVA_RULES = (
    (r"self_attn/qkv/kernel$", COLUMN),
    (r"self_attn/qkv/bias$", COLUMN_BIAS),
    (r"self_attn/projection/kernel$", ROW),
    (r"self_attn/projection/bias$", REPLICATED),
    (r"patch_embedding/bias$", P(MODEL)),
    (r"embeddings/(class_embedding|position_embedding)$", REPLICATED),
    *CLIP_RULES,
)

QFORMER_RULES = (
    (r"attention/(query|key|value)/kernel$", COLUMN),
    (r"attention/(query|key|value)/bias$", COLUMN_BIAS),
    (r"output/dense/kernel$", ROW),
    (r"intermediate_query/dense/kernel$", COLUMN),
    (r"intermediate_query/dense/bias$", COLUMN_BIAS),
    (r"output_query/dense/kernel$", ROW),
    (r"(output|output_query)/dense/bias$", REPLICATED),
    (r"(LayerNorm|layernorm)/(scale|bias)$", REPLICATED),
)

OPT_RULES = (
    (r"self_attn/(q_proj|k_proj|v_proj)/kernel$", COLUMN),
    (r"self_attn/(q_proj|k_proj|v_proj)/bias$", COLUMN_BIAS),
    (r"self_attn/out_proj/kernel$", ROW),
    (r"(^|/)fc1/kernel$", COLUMN),
    (r"(^|/)fc1/bias$", COLUMN_BIAS),
    (r"(^|/)fc2/kernel$", ROW),
    (r"(out_proj|fc2)/bias$", REPLICATED),
    (r"embed_tokens/embedding$", ROW),  # [vocab, D]
    (r"embed_positions/embedding$", REPLICATED),
    (r"(self_attn_layer_norm|final_layer_norm)/(scale|bias)$", REPLICATED),
)

BLIP2_RULES = (
    *((rf"^vision_model/.*{pattern}", spec) for pattern, spec in EVA_RULES),
    *((rf"^qformer/.*{pattern.lstrip('^')}", spec) for pattern, spec in QFORMER_RULES),
    *((rf"^language_model/.*{pattern.lstrip('^')}", spec) for pattern, spec in OPT_RULES),
    (r"^language_projection/kernel$", COLUMN),
    (r"^language_projection/bias$", COLUMN_BIAS),
    (r"^query_tokens$", REPLICATED),
)
