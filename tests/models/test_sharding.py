"""The sharding rule tables: every parameter of every family matched, Megatron's layout, stacked
layers, FSDP, and the errors (unmatched, rank, indivisible). Shapes and axis sizes only: no devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.models import sharding
from mrepe_jax.models.blip2.sharding import BLIP2_RULES
from mrepe_jax.models.clap import convert as clap_convert
from mrepe_jax.models.clap.sharding import CLAP_RULES
from mrepe_jax.models.clip.sharding import CLIP_RULES
from mrepe_jax.models.layer_stack import stack_layer_params
from mrepe_jax.models.trimodal.sharding import TRIMODAL_RULES
from mrepe_jax.train import toyclip
from tests.models.blip2.test_parity import converted
from tests.models.clap.hf_tiny import tiny_hf_clap
from tests.models.tiny import tiny_clip
from tests.train.test_toyclip import tiny_cfg


def _flat(specs):
    return {sharding.path_of(kp): s for kp, s in
            jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))}


@pytest.fixture(scope="module")
def families():
    _, clip_vars, *_ = tiny_clip()
    _, blip2_params = converted("xattn2_opt2")
    world = ToyWorld(ToyWorldConfig())
    model = toyclip.TriModalCLIP(toyclip.model_config(world, tiny_cfg(hidden_size=32, num_heads=4)))
    tri = jax.eval_shape(lambda: toyclip.init_state(model, world, tiny_cfg(hidden_size=32, num_heads=4)).params)
    _, clap_params = clap_convert.from_torch_model(tiny_hf_clap("fused"))
    return {"clip": (clip_vars["params"], CLIP_RULES), "blip2": (blip2_params, BLIP2_RULES),
            "trimodal": (tri, TRIMODAL_RULES), "clap": (clap_params, CLAP_RULES)}


@pytest.mark.parametrize("family", ["clip", "blip2", "trimodal", "clap"])
def test_every_parameter_is_matched_and_model_8_shards_the_matmuls(families, family):
    params, rules = families[family]
    specs = _flat(sharding.param_specs(params, rules, {"data": 1, "model": 8}, indivisible="replicate"))
    assert specs and all(isinstance(s, P) for s in specs.values())
    for path, spec in specs.items():
        if path.endswith(("q_proj/kernel", "fc1/kernel", "query/kernel", "qkv/kernel")):
            assert tuple(spec)[-1] == "model", (path, spec)
        if path.endswith(("out_proj/kernel", "fc2/kernel", "output/dense/kernel")):
            assert tuple(spec)[-2] == "model", (path, spec)
        if "norm" in path.lower() or path.endswith(("fc2/bias", "out_proj/bias")):
            assert set(spec) <= {None}, (path, spec)
    one = sharding.per_device_bytes(params, sharding.param_specs(params, rules, {"model": 1}), {"model": 1})
    eight = sharding.per_device_bytes(params, _unflat(params, specs), {"data": 1, "model": 8})
    assert eight < one


def _unflat(params, flat):
    return jax.tree_util.tree_map_with_path(lambda kp, _: flat[sharding.path_of(kp)], params)


def test_the_composite_splits_the_vocabulary_and_keeps_positions_whole(families):
    params, rules = families["blip2"]
    specs = _flat(sharding.param_specs(params, rules, {"data": 2, "model": 4}, indivisible="replicate"))
    assert specs["language_model/model/decoder/embed_tokens/embedding"] == P("model", None)
    assert specs["language_model/model/decoder/embed_positions/embedding"] == P(None, None)
    assert specs["query_tokens"] == P(None, None, None)
    assert specs["vision_model/encoder/layers/0/self_attn/qkv/kernel"] == P(None, "model")


def test_stacked_layers_keep_the_layer_axis_whole(families):
    params, rules = families["clip"]
    stacked = stack_layer_params(params)
    specs = _flat(sharding.param_specs(stacked, rules, {"data": 2, "model": 2}))
    assert specs["vision_model/encoder/layers/self_attn/q_proj/kernel"] == P(None, None, "model")
    assert specs["vision_model/encoder/layers/mlp/fc2/kernel"] == P(None, "model", None)
    fsdp = _flat(sharding.param_specs(stacked, rules, {"data": 2, "model": 2}, fsdp=True, fsdp_min_size=1))
    assert fsdp["vision_model/encoder/layers/self_attn/q_proj/kernel"] == P(None, "data", "model")
    assert tuple(fsdp["vision_model/encoder/layers/layer_norm1/scale"])[0] is None  # never the layer axis


def test_clap_splits_both_towers_and_keeps_its_windows_tables_and_norms_whole(families):
    params, rules = families["clap"]
    specs = _flat(sharding.param_specs(clap_convert.stack_text_layers(params), rules, {"data": 2, "model": 4},
                                       indivisible="replicate"))
    block = "audio_model/audio_encoder/layers/2/blocks/0"
    assert specs[f"{block}/attention/self/query/kernel"] == P(None, "model")
    assert specs[f"{block}/output/dense/kernel"] == P("model", None)
    assert specs[f"{block}/attention/self/relative_position_bias_table"] == P(None, None)
    assert specs["audio_model/audio_encoder/batch_norm/running_var"] == P(None)
    assert specs["audio_model/audio_encoder/patch_embed/proj/kernel"] == P(None, None, None, "model")
    assert specs["text_model/encoder/layers/attention/self/key/kernel"] == P(None, None, "model")  # stacked
    assert specs["text_model/embeddings/word_embeddings/embedding"] == P("model", None)
    assert specs["logit_scale_a"] == P()


def test_fsdp_shards_the_largest_free_dimension_of_large_params_over_data(families):
    params, rules = families["clip"]
    specs = _flat(sharding.param_specs(params, rules, {"data": 4, "model": 1}, fsdp=True, fsdp_min_size=1024))
    assert specs["text_model/embeddings/token_embedding/embedding"] == P("data", None)  # [100, 32]: 100 the largest
    assert specs["text_model/encoder/layers/0/mlp/fc1/kernel"] == P(None, "data")  # [32, 64]: 64 the largest
    assert specs["text_model/encoder/layers/0/layer_norm1/scale"] == P(None)  # 32 < 1024 elements
    # data=1: nothing to split over.
    assert set(_flat(sharding.param_specs(params, rules, {"data": 1}, fsdp=True, fsdp_min_size=1)).values()) \
        == {P(*(None,) * len(s)) for s in _flat(sharding.param_specs(params, rules, {"data": 1})).values()}


def test_errors_name_the_parameter_dim_and_axis():
    params = {"encoder": {"layers": {"0": {"self_attn": {"q_proj": {"kernel": np.zeros((6, 6))}},
                                           "mystery": {"kernel": np.zeros((6, 6))}}}}}
    with pytest.raises(ValueError, match=r"no sharding rule matches parameter "
                                         r"'encoder/layers/0/mystery/kernel' of shape \(6, 6\)"):
        sharding.param_specs(params, CLIP_RULES, {"model": 2})
    q = {"self_attn": {"q_proj": {"kernel": np.zeros((6, 6))}}}
    with pytest.raises(ValueError, match=r"parameter 'self_attn/q_proj/kernel' dim 1 of size 6 does not "
                                         r"divide over mesh axis 'model' of size 4"):
        sharding.param_specs(q, CLIP_RULES, {"model": 4})
    with pytest.warns(UserWarning, match="dim 1 of size 6 does not divide over mesh axis 'model' of size 4: "
                                         "left replicated"):
        spec = sharding.param_specs(q, CLIP_RULES, {"model": 4}, indivisible="replicate")
    assert spec["self_attn"]["q_proj"]["kernel"] == P(None, None)
    with pytest.raises(ValueError, match=r"rule for 'self_attn/q_proj/kernel' gives .* \(2 axes\) but the "
                                         r"parameter has shape \(6,\)"):
        sharding.param_specs({"self_attn": {"q_proj": {"kernel": np.zeros(6)}}}, CLIP_RULES, {"model": 2})
    with pytest.raises(ValueError, match="indivisible must be one of"):
        sharding.param_specs(q, CLIP_RULES, {"model": 2}, indivisible="pad")


def test_a_mesh_without_a_model_axis_replicates_what_the_table_splits(families):
    params, rules = families["clip"]
    specs = _flat(sharding.param_specs(params, rules, {"data": 8}))
    assert all(set(s) <= {None} for s in specs.values())


def test_a_train_states_moments_shard_as_their_params_and_counters_replicate():
    kernel = np.zeros((8, 8))
    params = {"vision_model": {"encoder": {"layers": {"0": {"mlp": {"fc1": {"kernel": kernel}}}}}}}
    state = {"step": np.int32(0), "params": params,
             "opt_state": ({"mu": params, "nu": params}, {"count": np.int32(0)})}
    specs = _flat(sharding.state_specs(state, CLIP_RULES, {"data": 2, "model": 4}))
    tail = "vision_model/encoder/layers/0/mlp/fc1/kernel"
    assert specs["params/" + tail] == specs["opt_state/0/mu/" + tail] == specs["opt_state/0/nu/" + tail] \
        == P(None, "model")
    assert specs["step"] == specs["opt_state/1/count"] == P()
    with pytest.raises(ValueError, match=r"no sharding rule matches any tail of the state's 'extra' of shape \(3,\)"):
        sharding.state_specs({"extra": np.zeros(3)}, CLIP_RULES, {"model": 2})
