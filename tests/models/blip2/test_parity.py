"""Parity of the composite BLIP-2 (``mrepe_jax.models.blip2.model``) against transformers'
``Blip2ForConditionalGeneration`` (fp32, atol 1e-5): every layer of the vision tower, the Q-Former
and the OPT decoder, the image features and the logits on a left-padded prompt batch laid out as
``Blip2Processor`` writes it; greedy generation token for token; the cached decode against the
uncached forward; one compile per generation shape; an edit against an HF forward hook; configs
that cannot compose.

Tiny configs with EVERY tensor re-randomised (the vision tower's ``initializer_range`` is 1e-10,
and HF's init zeroes biases and sets LayerNorms to (1, 0), which would hide a swapped bias or a
missing LayerNorm). The three widths differ (vision 48, Q-Former 32, OPT 40) so that a tensor read
at the wrong width cannot pass.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mrepe_jax.edits import Add
from mrepe_jax.models.blip2 import convert as blip2_convert
from mrepe_jax.models.blip2 import model as blip2
from mrepe_jax.models.blip2.opt import OPTConfig
from mrepe_jax.models.blip2.qformer import Blip2QFormerConfig
from mrepe_jax.models.blip2.vision import Blip2VisionConfig

ATOL = 1e-5
NQ, IMAGE, PATCH = 4, 16, 8
VOCAB, PAD, BOS, EOS, IMG = 100, 1, 2, 2, 97  # IMG: the processor's image token, inside the vocab
VD, QD, LD = 48, 32, 40

CASES = {
    # Q-Former cross-attention every 2nd layer (0, 2); OPT 2 layers, relu, biases
    "xattn2_opt2": dict(freq=2, q_layers=3, lm_layers=2, lm_heads=4, act="relu", bias=True, qk=0.35),
    # cross-attention in every layer; OPT 3 layers, gelu, no biases
    "xattn1_opt3": dict(freq=1, q_layers=2, lm_layers=3, lm_heads=2, act="gelu", bias=False, qk=0.25),
}
ERRORS: dict[str, float] = {}  # max abs error per compared group (printed with -s)


def hf_config(freq, q_layers, lm_layers, lm_heads, act, bias, qk=None):
    vision = dict(hidden_size=VD, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  image_size=IMAGE, patch_size=PATCH, hidden_act="gelu", layer_norm_eps=1e-6)
    qformer = dict(hidden_size=QD, num_hidden_layers=q_layers, num_attention_heads=4, intermediate_size=64,
                   cross_attention_frequency=freq, encoder_hidden_size=VD)
    text = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=LD, num_hidden_layers=lm_layers, ffn_dim=72,
                                  num_attention_heads=lm_heads, max_position_embeddings=64,
                                  activation_function=act, enable_bias=bias, word_embed_proj_dim=LD,
                                  pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    config = transformers.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text.to_dict(),
                                      num_query_tokens=NQ, image_token_index=IMG)
    config._attn_implementation = "eager"
    for sub in (config.vision_config, config.qformer_config, config.text_config):
        sub._attn_implementation = "eager"
    return config


def randomise(model, seed, qk):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name.lower() for s in ("layer_norm", "layernorm")):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
            elif name.startswith("language_model.") and ("q_proj" in name or "k_proj" in name):
                # Sharper OPT attention, so that greedy decoding depends on the context; not so
                # sharp that it amplifies fp32 rounding (head_dim 20 gets the smaller scale).
                p.copy_(qk * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


@functools.cache
def hf_blip2(name: str, seed: int = 0):
    case = CASES[name]
    model = randomise(transformers.Blip2ForConditionalGeneration(hf_config(**case)), 11 + seed, case["qk"])
    tied = model.language_model.lm_head.weight.data_ptr()
    assert tied == model.language_model.model.decoder.embed_tokens.weight.data_ptr()
    return model


@functools.cache
def converted(name: str):
    return blip2_convert.from_torch_model(hf_blip2(name))


LENGTHS = (6, 3, 1)  # text tokens (BOS included) per row; the longest row is unpadded


def prompt(seed: int = 0, lengths=LENGTHS, batch_images: int | None = None):
    """Pixels (NCHW) and the ids / mask ``Blip2Processor`` writes for left-padded prompts: the
    ``NQ`` image tokens first, then the padding, then BOS and the text."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids, mask = [], []
    for n in lengths:
        text = [BOS] + list(rng.integers(3, IMG - 1, size=n - 1))
        ids.append([IMG] * NQ + [PAD] * (t - n) + text)
        mask.append([1] * NQ + [0] * (t - n) + [1] * n)
    pixels = rng.normal(size=(batch_images or len(lengths), 3, IMAGE, IMAGE)).astype(np.float32)
    return pixels, np.asarray(ids, np.int64), np.asarray(mask, np.int64)


def nhwc(pixels):
    return pixels.transpose(0, 2, 3, 1)


def close(a, b, what, group=None):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
    err = float(np.abs(a - b).max())
    assert err <= ATOL, f"{what}: max abs error {err:.2e} > {ATOL:.0e}"
    group = group or what
    ERRORS[group] = max(ERRORS.get(group, 0.0), err)
    return err


def first(out):
    return (out[0] if isinstance(out, tuple) else out).detach().numpy()


def hf_forward(hf, pixels, ids, mask, hooks=()):
    """HF logits and every layer's output, recorded by forward hooks: ``hooks`` are extra
    ``(module, fn)`` pairs (edits), applied while the reference runs."""
    seen = {}
    taps = {"vision.embed": hf.vision_model.embeddings, "qformer.embed": hf.qformer.layernorm,
            "image_features": hf.language_projection}
    taps |= {f"vision.layers.{i}.resid_post": m for i, m in enumerate(hf.vision_model.encoder.layers)}
    taps |= {f"qformer.layers.{i}.resid_post": m for i, m in enumerate(hf.qformer.encoder.layer)}
    taps |= {f"lm.layers.{i}.resid_post": m for i, m in enumerate(hf.language_model.model.decoder.layers)}
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    handles += [m.register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, first(out)))
                for n, m in taps.items()]
    try:
        with torch.no_grad():
            out = hf(pixel_values=torch.tensor(pixels), input_ids=torch.tensor(ids),
                     attention_mask=torch.tensor(mask), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, seen


@pytest.mark.parametrize("name", CASES)
def test_every_layer_and_logits_match(name):
    hf = hf_blip2(name)
    model, params = converted(name)
    pixels, ids, mask = prompt()
    ERRORS.clear()
    ref, seen = hf_forward(hf, pixels, ids, mask)
    out, acts = model.apply({"params": params}, nhwc(pixels), ids, mask,
                            capture=("*.embed", "*.resid_post"))
    c = CASES[name]
    close(acts["vision.embed"], seen["vision.embed"], "vision embeddings", "vision")
    for i in range(2):
        close(acts[f"vision.layers.{i}.resid_post"], seen[f"vision.layers.{i}.resid_post"],
              f"vision layer {i}", "vision")
    close(out["vision_outputs"]["last_hidden_state"], ref.vision_outputs.last_hidden_state,
          "vision last_hidden_state (post-LN)", "vision")
    close(acts["qformer.embed"], seen["qformer.embed"], "qformer embed (layernormed queries)", "qformer")
    for i in range(c["q_layers"]):
        close(acts[f"qformer.layers.{i}.resid_post"], seen[f"qformer.layers.{i}.resid_post"],
              f"qformer layer {i}", "qformer")
    close(out["qformer_outputs"]["last_hidden_state"], ref.qformer_outputs.last_hidden_state,
          "qformer last_hidden_state", "qformer")
    close(out["image_features"], seen["image_features"], "projected queries", "image_features")
    hs = ref.language_model_outputs.hidden_states
    close(acts["lm.embed"], hs[0], "lm embeddings (image features scattered + positions)", "lm")
    for i in range(c["lm_layers"]):
        close(acts[f"lm.layers.{i}.resid_post"], seen[f"lm.layers.{i}.resid_post"], f"lm layer {i}", "lm")
    close(out["language_model_outputs"]["last_hidden_state"], hs[-1], "lm final LayerNorm", "lm")
    close(out["logits"], ref.logits, "logits", "logits")
    # The image really enters the logits, at the positions of the image tokens only.
    embeds = np.asarray(acts["lm.embed"])
    assert np.abs(embeds[:, :NQ] - embeds[:, NQ:NQ + 1]).max() > 1e-2
    print(f"\n{name} max abs errors:", {k: f"{v:.1e}" for k, v in ERRORS.items()})


def test_site_table_and_unknown_sites():
    model, params = converted("xattn2_opt2")
    names = model.site_names()
    assert names[0] == "vision.embed" and names[-1] == "lm.layers.1.resid_post"
    assert "qformer.layers.2.xattn.q" in names and "qformer.layers.1.xattn.q" not in names
    assert not any(n.endswith((".proj", "qformer.pooled")) for n in names)  # no [B, Nq, D] proj site
    assert set(model.tower_layers()) == {"vision", "qformer", "lm"}
    pixels, ids, mask = prompt()
    with pytest.raises(ValueError, match=r"unknown site 'qformer.proj'"):
        model.apply({"params": params}, nhwc(pixels), ids, mask, capture=("qformer.proj",))
    with pytest.raises(ValueError, match=r"did you mean lm.layers.0.resid_post"):
        model.apply({"params": params}, nhwc(pixels), ids, mask, edits={"lm.layers.0.resid_psot": Add(1.0)})
    bad = ids.copy()
    bad[0, -1] = IMG  # one image token too many for 3 images x NQ queries: torch's masked_scatter fails
    with pytest.raises(ValueError, match=rf"input_ids hold {3 * NQ + 1} image tokens .* 3 image\(s\) give "
                                         rf"{3 * NQ} query features"):
        model.apply({"params": params}, nhwc(pixels), bad, mask)


def test_image_tokens_fill_in_batch_order_like_masked_scatter():
    """Rows whose image-token count is not NQ: torch's masked_scatter fills the image positions in
    row-major order over the batch, so features shift across rows; the same here, logits equal."""
    name = "xattn2_opt2"
    model, params = converted(name)
    pixels, ids, mask = prompt()
    ids = ids.copy()
    ids[0, 0] = BOS + 1  # row 0 has NQ - 1 image tokens: row 1 starts with image 0's last query
    ids[2, -1] = IMG  # row 2 has NQ + 1: the total (3 NQ) still fits the 3 images' features
    ref, seen = hf_forward(hf_blip2(name), pixels, ids, mask)
    out, acts = model.apply({"params": params}, nhwc(pixels), ids, mask, capture=("lm.embed",))
    close(acts["lm.embed"], ref.language_model_outputs.hidden_states[0], "lm embeddings, shifted features")
    close(out["logits"], ref.logits, "logits, shifted features")
    features = np.asarray(out["image_features"]).reshape(-1, LD)
    np.testing.assert_allclose(seen["image_features"].reshape(-1, LD), features, atol=ATOL)


def test_add_edit_at_a_qformer_site_equals_hf_hook():
    """``Add`` at ``qformer.layers.1.resid_post`` = adding the vector to HF's Q-Former layer 1
    output: the logits move identically."""
    name = "xattn2_opt2"
    hf = hf_blip2(name)
    model, params = converted(name)
    pixels, ids, mask = prompt()
    delta = np.random.default_rng(3).normal(size=(QD,)).astype(np.float32)

    def hook(mod, args, out):
        return (out[0] + 0.8 * torch.tensor(delta),) + tuple(out[1:]) if isinstance(out, tuple) \
            else out + 0.8 * torch.tensor(delta)

    ref, _ = hf_forward(hf, pixels, ids, mask, hooks=[(hf.qformer.encoder.layer[1], hook)])
    clean, _ = model.apply({"params": params}, nhwc(pixels), ids, mask)
    edited, _ = model.apply({"params": params}, nhwc(pixels), ids, mask,
                            edits={"qformer.layers.1.resid_post": Add(jnp.asarray(delta), alpha=0.8)})
    close(edited["logits"], ref.logits, "logits after Add at qformer.layers.1.resid_post vs HF hook", "edit")
    assert np.abs(np.asarray(edited["logits"]) - np.asarray(clean["logits"])).max() > 1e-2


# --- generation --------------------------------------------------------------------------------

N_NEW = 20


@pytest.mark.parametrize("name", CASES)
def test_greedy_generate_matches_hf(name):
    hf = hf_blip2(name)
    model, params = converted(name)
    pixels, ids, mask = prompt(seed=1)
    ours = np.asarray(blip2.generate(model, params, nhwc(pixels), ids, mask, max_new_tokens=N_NEW))
    with torch.no_grad():
        ref = hf.generate(pixel_values=torch.tensor(pixels), input_ids=torch.tensor(ids),
                          attention_mask=torch.tensor(mask), do_sample=False, max_new_tokens=N_NEW).numpy()
    np.testing.assert_array_equal(ref[:, :ids.shape[1]], ids)  # HF returns the prompt first
    ref = ref[:, ids.shape[1]:]
    assert ours.shape == (len(LENGTHS), N_NEW)
    np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)
    assert (ours[:, ref.shape[1]:] == PAD).all()  # HF stops when every row has emitted EOS
    assert len({tuple(r) for r in ours.tolist()}) > 1 and len(set(ours[0].tolist())) > 2, \
        f"degenerate decode, the comparison would prove little: {ours}"


@pytest.mark.slow  # the stop-at-eos path is opt.generate's, checked against HF in test_opt_parity
def test_generate_stops_at_eos_like_hf():
    """An eos that one row emits mid-way: that row is padded from then on, the others go on, and
    decoding ends when all rows are done, as in HF."""
    name = "xattn1_opt3"
    hf = hf_blip2(name)
    model, params = converted(name)
    pixels, ids, mask = prompt(seed=1)
    free = np.asarray(blip2.generate(model, params, nhwc(pixels), ids, mask, N_NEW, eos_token_id=()))
    eos, row = next((int(tok), b) for b, r in enumerate(free.tolist()) for s, tok in enumerate(r)
                    if 3 <= s < N_NEW - 2 and tok not in r[:s] and tok != PAD)
    ours = np.asarray(blip2.generate(model, params, nhwc(pixels), ids, mask, N_NEW, eos_token_id=eos))
    with torch.no_grad():
        ref = hf.generate(pixel_values=torch.tensor(pixels), input_ids=torch.tensor(ids),
                          attention_mask=torch.tensor(mask), do_sample=False, max_new_tokens=N_NEW,
                          eos_token_id=eos, pad_token_id=PAD).numpy()[:, ids.shape[1]:]
    np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)
    assert (ours[:, ref.shape[1]:] == PAD).all()
    stop = list(ours[row]).index(eos)
    assert stop < N_NEW - 1 and (ours[row, stop + 1:] == PAD).all(), "eos never exercised the pad branch"


def uncached_logits(model, params, pixels, ids, mask, tokens, edits=None):
    """One uncached forward over prompt + generated tokens: by causality its logits at position
    T-1+k are the cached decode's logits at step k."""
    new = np.asarray(tokens[:, :-1])
    assert not (new == IMG).any(), "a generated image token would be scattered in the uncached forward"
    out, _ = model.apply({"params": params}, nhwc(pixels), np.concatenate([ids, new], 1),
                         np.concatenate([mask, np.ones_like(new)], 1), edits=edits)
    return np.asarray(out["logits"][:, ids.shape[1] - 1:])


def test_cached_decode_equals_uncached_forward_with_and_without_edits():
    """Step k of the cached decode = the uncached forward at every step, also with edits at a
    Q-Former site (applied once, to the image features) and an lm site (at every step); a second
    call with new pixels, prompt and edit values reuses the compiled program."""
    model, params = converted("xattn1_opt3")
    pixels, ids, mask = prompt(seed=2)
    tokens, logits = blip2.generate(model, params, nhwc(pixels), ids, mask, N_NEW, eos_token_id=(),
                                    return_logits=True)
    close(logits, uncached_logits(model, params, pixels, ids, mask, tokens), "cached vs uncached decode",
          "cached decode")
    np.testing.assert_array_equal(tokens, np.argmax(logits, -1))

    rng = np.random.default_rng(4)

    def edits(scale):
        return {"qformer.layers.1.xattn_out": Add(jnp.asarray(scale * rng.normal(size=QD), jnp.float32)),
                "lm.layers.2.resid_post": Add(jnp.asarray(scale * rng.normal(size=LD), jnp.float32), alpha=0.5)}

    e = edits(1.0)
    before = blip2._generate._cache_size()
    etok, elogits = blip2.generate(model, params, nhwc(pixels), ids, mask, N_NEW, edits=e, eos_token_id=(),
                                   return_logits=True)
    close(elogits, uncached_logits(model, params, pixels, ids, mask, etok, e), "cached vs uncached, edited",
          "cached decode")
    assert np.abs(np.asarray(elogits[:, 0]) - np.asarray(logits[:, 0])).max() > 1e-2
    compiled = blip2._generate._cache_size()
    assert compiled == before + 1
    pixels2, ids2, mask2 = prompt(seed=5)
    again = blip2.generate(model, params, nhwc(pixels2), ids2, mask2, N_NEW, edits=edits(-2.0),
                           eos_token_id=(), return_logits=True)
    assert blip2._generate._cache_size() == compiled, "generate retraced for new values"
    assert not np.array_equal(np.asarray(again[1]), np.asarray(elogits))


def test_default_prompt_is_hfs():
    """Without input_ids, HF prompts with ``[IMG]*NQ + [BOS]``: same tokens."""
    name = "xattn2_opt2"
    hf = hf_blip2(name)
    model, params = converted(name)
    pixels = prompt(seed=6)[0][:2]
    ours = np.asarray(blip2.generate(model, params, nhwc(pixels), max_new_tokens=6))
    with torch.no_grad():
        ref = hf.generate(pixel_values=torch.tensor(pixels), do_sample=False, max_new_tokens=6).numpy()
    np.testing.assert_array_equal(ref[:, :NQ + 1], [[IMG] * NQ + [BOS]] * 2)
    ref = ref[:, NQ + 1:]
    np.testing.assert_array_equal(ours[:, :ref.shape[1]], ref)


# --- configs -----------------------------------------------------------------------------------


def test_configs_that_cannot_compose_are_clear_errors():
    vision = Blip2VisionConfig(hidden_size=VD, num_attention_heads=4, image_size=IMAGE, patch_size=PATCH)
    text = OPTConfig(vocab_size=VOCAB, hidden_size=LD, num_attention_heads=4, ffn_dim=72)
    qformer = Blip2QFormerConfig(hidden_size=QD, num_attention_heads=4, encoder_hidden_size=QD)
    with pytest.raises(ValueError, match=r"encoder_hidden_size 32 does not match .*Blip2VisionConfig.hidden_size 48"):
        blip2.Blip2Config(vision, qformer, text, NQ, IMG)
    qformer = Blip2QFormerConfig(hidden_size=QD, num_attention_heads=4, encoder_hidden_size=VD)
    with pytest.raises(ValueError, match=r"image_token_index 100 is outside .*vocabulary \[0, 100\)"):
        blip2.Blip2Config(vision, qformer, text, NQ, 100)
    with pytest.raises(TypeError, match=r"Blip2Config.text_config must be a OPTConfig"):
        blip2.Blip2Config(vision, qformer, {"hidden_size": LD}, NQ, IMG)
    assert blip2.Blip2Config(vision, qformer, text, NQ, IMG).num_query_tokens == NQ

    d = hf_config(**CASES["xattn2_opt2"]).to_dict()
    assert blip2.Blip2Config.from_hf_dict(d).image_token_index == IMG
    t5 = transformers.T5Config(vocab_size=VOCAB, d_model=LD, num_layers=1, num_heads=2, d_ff=64, d_kv=8)
    flan = transformers.Blip2Config(vision_config=d["vision_config"], qformer_config=d["qformer_config"],
                                    text_config=t5.to_dict(), num_query_tokens=NQ, image_token_index=IMG)
    with pytest.raises(ValueError, match=r"'t5' language model \(text_config.model_type\) is not supported"):
        blip2.Blip2Config.from_hf_dict(flan.to_dict())
    with pytest.raises(ValueError, match=r"image_token_index is None"):
        blip2.Blip2Config.from_hf_dict(dict(d, image_token_index=None))
    with pytest.raises(ValueError, match=r"OPTConfig.do_layer_norm_before=False"):
        blip2.Blip2Config.from_hf_dict(dict(d, text_config=dict(d["text_config"], do_layer_norm_before=False)))
