"""CLAP's sharding rule table (``models.sharding``): Megatron tensor parallelism over ``model``.

Both towers' blocks: column-parallel ``attention/self/query|key|value`` and
``intermediate/dense`` (the output features split), row-parallel ``attention/output/dense`` and
``output/dense`` (the input features split). RoBERTa's word embedding is split over its vocabulary.
The patch embedding convolutions split their output channels; each patch merging's ``reduction``
and each projection's ``linear1`` are column-parallel, ``linear2`` row-parallel. Replicated: every
LayerNorm and BatchNorm (running statistics included), the biases of row-parallel layers, the
position and token-type embeddings, the relative position bias tables, the pooler, the small
1x1 convolutions of the fusion block, and the two logit scales. Paths are the checkpoint's
(``audio_model/audio_encoder/layers/1/blocks/0/attention/self/query/kernel``,
``text_model/encoder/layers/3/...``, stacked or not).
"""

from jax.sharding import PartitionSpec as P

from mrepe_jax.models.sharding import COLUMN, COLUMN_BIAS, MODEL, REPLICATED, ROW

CLAP_RULES = (
    (r"attention/self/(query|key|value)/kernel$", COLUMN),
    (r"attention/self/(query|key|value)/bias$", COLUMN_BIAS),
    (r"attention/self/relative_position_bias_table$", REPLICATED),
    (r"attention/output/dense/kernel$", ROW),
    (r"intermediate/dense/kernel$", COLUMN),
    (r"intermediate/dense/bias$", COLUMN_BIAS),
    (r"(^|/)output/dense/kernel$", ROW),
    (r"(^|/)output/dense/bias$", REPLICATED),
    (r"word_embeddings/embedding$", ROW),  # [vocab, D]: vocabulary-parallel
    (r"(position|token_type)_embeddings/embedding$", REPLICATED),
    (r"pooler/dense/(kernel|bias)$", REPLICATED),
    (r"_projection/linear1/kernel$", COLUMN),
    (r"_projection/linear1/bias$", COLUMN_BIAS),
    (r"_projection/linear2/kernel$", ROW),
    (r"_projection/linear2/bias$", REPLICATED),
    (r"downsample/reduction/kernel$", COLUMN),
    (r"patch_embed/(proj|mel_conv2d)/kernel$", P(None, None, None, MODEL)),  # conv [kh, kw, c, D]
    (r"patch_embed/(proj|mel_conv2d)/bias$", P(MODEL)),
    (r"fusion_model/(local|global)_att/\d+/(kernel|bias|scale|running_mean|running_var)$", REPLICATED),
    (r"(LayerNorm|layernorm_before|layernorm_after|norm|batch_norm)/(scale|bias|running_mean|running_var)$",
     REPLICATED),
    (r"^logit_scale_[at]$", REPLICATED),
)
