"""Layer-by-layer parity of the Flax CLIP against transformers' PyTorch CLIPModel (fp32, atol 1e-5),
for every way the model runs: layers unrolled or scanned over stacked params, attention explicit or
fused (``jax.nn.dot_product_attention`` where no attention site is edited or captured)."""

import functools

import numpy as np
import pytest
import torch

from mrepe_jax.models.clip import from_torch_model
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layer_stack import stack_layer_params
from tests.models.hf_tiny import random_batch, tiny_hf_clip

ATOL = 1e-5

CASES = {
    # legacy eos_token_id == 2: pooled by argmax of ids; quick_gelu; unpadded
    "argmax_eos_quick_gelu": dict(model=dict(eos_token_id=2, hidden_act="quick_gelu"), lengths=None),
    # in-vocab EOS: pooled at the first EOS; exact gelu; padded batch
    "first_eos_gelu_padded": dict(model=dict(eos_token_id=40, hidden_act="gelu"), lengths=[8, 5, 3]),
    # deeper, wider heads, tanh gelu, padded, patch 4 (17 tokens)
    "deep_gelu_new_padded": dict(
        model=dict(eos_token_id=77, hidden_act="gelu_new", layers=3, heads=2, patch_size=4),
        lengths=[2, 8, 6],
    ),
}


EXECUTIONS = {
    "unrolled": Execution(attention="explicit"),
    "scanned": Execution(scan_layers=True, attention="explicit"),
    "scanned_fused": Execution(scan_layers=True, attention="fused"),
}


@functools.cache
def run_both(name, execution="unrolled", seed=0):
    case = CASES[name]
    hf = tiny_hf_clip(seed, **case["model"])
    pixels, ids, mask = random_batch(hf, seed, lengths=case["lengths"])
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(pixels), input_ids=torch.tensor(ids),
                 attention_mask=torch.tensor(mask), output_hidden_states=True, output_attentions=True)
        ref_img = hf.get_image_features(pixel_values=torch.tensor(pixels)).pooler_output
        ref_txt = hf.get_text_features(input_ids=torch.tensor(ids),
                                       attention_mask=torch.tensor(mask)).pooler_output
        # CLIPModel's tower outputs carry the *projected* pooler_output; the towers' own is pre-projection.
        pooled = {"vision": hf.vision_model(pixel_values=torch.tensor(pixels)).pooler_output,
                  "text": hf.text_model(input_ids=torch.tensor(ids),
                                        attention_mask=torch.tensor(mask)).pooler_output}
    model, params = from_torch_model(hf)
    run = EXECUTIONS[execution]
    if run.scan_layers:
        params = stack_layer_params(params)
    model = model.clone(execution=run)
    # Outputs without captures (the fused attention path where allowed), then every layer's states.
    out, _ = model.apply({"params": params}, pixels.transpose(0, 2, 3, 1), ids, mask)
    _, acts = model.apply({"params": params}, pixels.transpose(0, 2, 3, 1), ids, mask,
                          capture=("*.resid_pre", "*.resid_post", "*.attn.pattern", "*.pooled", "*.proj"))
    return pooled, ref, ref_img, ref_txt, out, acts, mask


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("name", CASES)
def test_every_layer_matches(name, execution):
    pooled, ref, ref_img, ref_txt, out, acts, mask = run_both(name, execution)
    for tower, hf_out in (("vision", ref.vision_model_output), ("text", ref.text_model_output)):
        n = len(hf_out.hidden_states) - 1
        np.testing.assert_allclose(acts[f"{tower}.layers.0.resid_pre"], hf_out.hidden_states[0], atol=ATOL)
        for i in range(n):
            np.testing.assert_allclose(acts[f"{tower}.layers.{i}.resid_post"],
                                       hf_out.hidden_states[i + 1], atol=ATOL,
                                       err_msg=f"{tower} layer {i} hidden state")
            np.testing.assert_allclose(acts[f"{tower}.layers.{i}.attn.pattern"],
                                       hf_out.attentions[i], atol=ATOL,
                                       err_msg=f"{tower} layer {i} attention pattern")
        np.testing.assert_allclose(acts[f"{tower}.pooled"], pooled[tower], atol=ATOL)


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("name", CASES)
def test_outputs_match(name, execution):
    _, ref, ref_img, ref_txt, out, acts, _ = run_both(name, execution)
    # transformers' CLIPModel fields of these names are L2-normalised; the raw projections are
    # get_*_features, our proj sites.
    np.testing.assert_allclose(out["image_embeds"], ref.image_embeds, atol=ATOL)
    np.testing.assert_allclose(out["text_embeds"], ref.text_embeds, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(out["image_embeds"], axis=-1), 1.0, atol=ATOL)
    np.testing.assert_allclose(acts["vision.proj"], ref_img, atol=ATOL)
    np.testing.assert_allclose(acts["text.proj"], ref_txt, atol=ATOL)
    np.testing.assert_allclose(out["logits_per_text"], ref.logits_per_text, atol=ATOL)
    np.testing.assert_allclose(out["logits_per_image"], ref.logits_per_image, atol=ATOL)


def test_pooling_branches_differ():
    """The first-EOS case really exercises its branch: argmax pooling would pick another token."""
    hf = tiny_hf_clip(0, **CASES["first_eos_gelu_padded"]["model"])
    _, ids, _ = random_batch(hf, 0, lengths=CASES["first_eos_gelu_padded"]["lengths"])
    first_eos = (ids == hf.config.text_config.eos_token_id).argmax(-1)
    assert (ids.argmax(-1) != first_eos).any()
