"""CLIP's sharding rule table (``models.sharding``): Megatron tensor parallelism over ``model``.

Column-parallel q/k/v and ``fc1``, row-parallel ``out_proj`` and ``fc2``, the token embedding split
over the vocabulary, the projections split over their input features, the patch embedding over its
output channels; norms, position and class embeddings, row-parallel biases and the logit scale
replicated. Paths are the checkpoint's (``vision_model/encoder/layers/3/self_attn/q_proj/kernel``),
so the table serves every tower built from CLIP's layers (the ToyWorld CLIP's audio tower too).
"""

from jax.sharding import PartitionSpec as P

from mrepe_jax.models.sharding import COLUMN, COLUMN_BIAS, MODEL, REPLICATED, ROW

CLIP_RULES = (
    (r"self_attn/(q_proj|k_proj|v_proj)/kernel$", COLUMN),
    (r"self_attn/(q_proj|k_proj|v_proj)/bias$", COLUMN_BIAS),
    (r"self_attn/out_proj/kernel$", ROW),
    (r"mlp/fc1/kernel$", COLUMN),
    (r"mlp/fc1/bias$", COLUMN_BIAS),
    (r"mlp/fc2/kernel$", ROW),
    (r"token_embedding/embedding$", ROW),  # [vocab, D]: vocabulary-parallel
    (r"(^|/)\w+_projection/kernel$", ROW),  # visual / text / audio projection [D, proj]
    (r"patch_embedding(/kernel)?$", P(None, None, None, MODEL)),  # conv [kh, kw, c, D]
    (r"(out_proj|fc2)/bias$", REPLICATED),
    (r"(layer_norm\d|pre_layrnorm|post_layernorm|final_layer_norm)/(scale|bias)$", REPLICATED),
    (r"(class_embedding|position_embedding/embedding|logit_scale)$", REPLICATED),
)
