"""Parity of the Flax OPT (``mrepe_jax.models.blip2.opt``) against transformers' ``OPTForCausalLM`` (fp32,
atol 1e-5): every layer's hidden state and the logits (unpadded, left-padded, ``inputs_embeds``),
greedy generation token for token, the KV-cached decode against the uncached forward, one compile
per generation shape, edits against hooks on the torch model, and the conversion errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from mrepe_jax.edits import Add, Replace, along
from mrepe_jax.models.blip2 import opt, opt_convert
from mrepe_jax.models.convert import ConversionError, to_flax

ATOL = 1e-5
PAD, BOS, EOS = 1, 2, 2
LENGTHS = [8, 5, 3]  # left padding, as HF's decoder-only generate expects

CASES = {
    # head_dim 8: HF's q * 8**-0.5 before Q K^T and our scaling after differ in rounding only.
    "relu_2layers": dict(layers=2, activation="relu", heads=4, enable_bias=True),
    "gelu_3layers_nobias": dict(layers=3, activation="gelu", heads=2, enable_bias=False),
}
# Std of the random q/k weights (see tiny_hf_opt); head_dim 16 gets the smaller one.
QK_SCALE = {"relu_2layers": 0.4, "gelu_3layers_nobias": 0.3}


def hf_config(layers=2, activation="relu", heads=4, enable_bias=True, **overrides):
    kwargs = dict(vocab_size=100, hidden_size=32, num_hidden_layers=layers, ffn_dim=64,
                  num_attention_heads=heads, max_position_embeddings=64,
                  activation_function=activation, enable_bias=enable_bias, dropout=0.0,
                  attention_dropout=0.0, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    kwargs.update(overrides)
    config = transformers.OPTConfig(**kwargs)
    config._attn_implementation = "eager"
    return config


@functools.cache
def tiny_hf_opt(name: str, seed: int = 0):
    """A random OPT with EVERY tensor re-randomised (HF init zeroes biases, sets LN to 1/0)."""
    torch.manual_seed(seed)
    model = transformers.OPTForCausalLM(hf_config(**CASES[name])).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "layer_norm" in pname:
                p.copy_((1.0 if pname.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
            elif "q_proj" in pname or "k_proj" in pname:
                # Sharp attention makes the next token depend on the context: with small q/k
                # weights greedy decoding repeats one token. Growing every weight instead grows
                # the residual stream (|h| ~ 10), and too sharp an attention amplifies rounding
                # in the scores; either way fp32 noise alone nears 1e-5.
                p.copy_(QK_SCALE[name] * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    assert model.lm_head.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    return model


@functools.cache
def converted(name: str):
    return opt_convert.from_torch_opt(tiny_hf_opt(name))


def batch(padded: bool, seed: int = 0, tokens: int = 8):
    rng = np.random.default_rng(seed)
    lengths = LENGTHS if padded else [tokens] * len(LENGTHS)
    ids = rng.integers(3, 100, size=(len(lengths), tokens))
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, : tokens - n] = PAD
        mask[b, tokens - n:] = 1
    embeds = (0.5 * rng.normal(size=(len(lengths), tokens, 32))).astype(np.float32)
    return ids, mask, embeds


def inputs(kind: str, ids, embeds):
    return dict(input_ids=ids) if kind == "ids" else dict(inputs_embeds=embeds)


@functools.cache
def run_both(name: str, padded: bool, kind: str):
    hf = tiny_hf_opt(name)
    ids, mask, embeds = batch(padded)
    last = {}
    hook = hf.model.decoder.layers[-1].register_forward_hook(lambda m, i, o: last.update(out=o))
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v) for k, v in inputs(kind, ids, embeds).items()},
                 attention_mask=torch.tensor(mask), output_hidden_states=True, output_attentions=True)
    hook.remove()
    model, params = converted(name)
    out, acts = model.apply({"params": params}, **inputs(kind, ids, embeds), attention_mask=mask,
                            capture=("lm.embed", "lm.layers.*.resid_post", "lm.layers.*.attn.pattern"))
    return ref, last["out"], out, acts


@pytest.mark.parametrize("kind", ["ids", "embeds"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
@pytest.mark.parametrize("name", CASES)
def test_every_layer_and_logits_match(name, padded, kind):
    ref, last_layer, out, acts = run_both(name, padded, kind)
    n = CASES[name]["layers"]
    hs = ref.hidden_states
    assert len(hs) == n + 1
    np.testing.assert_allclose(acts["lm.embed"], hs[0], atol=ATOL, err_msg="embeddings + positions")
    for i in range(n - 1):
        np.testing.assert_allclose(acts[f"lm.layers.{i}.resid_post"], hs[i + 1], atol=ATOL,
                                   err_msg=f"layer {i} hidden state")
    # HF's last hidden state is after final_layer_norm; the last layer's own output came by hook.
    np.testing.assert_allclose(acts[f"lm.layers.{n - 1}.resid_post"], last_layer, atol=ATOL)
    np.testing.assert_allclose(out["last_hidden_state"], hs[-1], atol=ATOL)
    for i in range(n):
        np.testing.assert_allclose(acts[f"lm.layers.{i}.attn.pattern"], ref.attentions[i], atol=ATOL,
                                   err_msg=f"layer {i} attention pattern")
    np.testing.assert_allclose(out["logits"], ref.logits, atol=ATOL)


def test_positions_follow_left_padding():
    """The padded case really shifts positions: the unpadded rows' embeddings would differ."""
    ref_pad = run_both("relu_2layers", True, "embeds")[0].hidden_states[0]
    ref_full = run_both("relu_2layers", False, "embeds")[0].hidden_states[0]
    # Row 0 is unpadded in both batches; row 2 has 5 pads, so its token 5 is position 0, not 5.
    np.testing.assert_allclose(ref_pad[0], ref_full[0], atol=ATOL)
    assert np.abs(ref_pad[2, 5:].numpy() - ref_full[2, 5:].numpy()).max() > 1e-2


# --- generation --------------------------------------------------------------------------------

N_NEW = 20


@functools.cache
def free_run(name: str, kind: str):
    """Our cached greedy decode without eos: (tokens, per-step logits)."""
    model, params = converted(name)
    ids, mask, embeds = batch(padded=True)
    return opt.generate(model, params, **inputs(kind, ids, embeds), attention_mask=mask,
                        max_new_tokens=N_NEW, eos_token_id=(), return_logits=True)


def pick_eos(tokens) -> tuple[int, int]:
    """(eos, row): a token that row first emits at a step >= 3 (not the pad), so eos stops that
    row mid-way while the others go on."""
    for b, row in enumerate(np.asarray(tokens).tolist()):
        for s in range(3, len(row) - 2):
            if row[s] != PAD and row[s] not in row[:s]:
                return int(row[s]), b
    raise AssertionError(f"every row repeats itself, no eos token exercises stopping: {tokens}")


@pytest.mark.parametrize("name,kind", [("relu_2layers", "ids"), ("gelu_3layers_nobias", "embeds")])
def test_greedy_generation_matches_hf(name, kind):
    hf = tiny_hf_opt(name)
    model, params = converted(name)
    ids, mask, embeds = batch(padded=True)
    eos, row = pick_eos(free_run(name, kind)[0])
    ours = np.asarray(opt.generate(model, params, **inputs(kind, ids, embeds), attention_mask=mask,
                                   max_new_tokens=N_NEW, eos_token_id=eos))
    with torch.no_grad():
        ref = hf.generate(**{k: torch.tensor(v) for k, v in inputs(kind, ids, embeds).items()},
                          attention_mask=torch.tensor(mask), do_sample=False, max_new_tokens=N_NEW,
                          eos_token_id=eos, pad_token_id=PAD).numpy()
    if kind == "ids":  # HF returns prompt + new tokens for ids, only the new ones for embeds
        ref = ref[:, ids.shape[1]:]
    assert ours.shape == (len(LENGTHS), N_NEW)
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
    assert (ours[:, ref.shape[1]:] == PAD).all()  # HF stopped when every row was done
    stop = list(ours[row]).index(eos)
    assert stop < N_NEW - 1 and (ours[row, stop + 1:] == PAD).all(), "eos never exercised the pad branch"


def uncached_logits(name, kind, tokens, edits=None):
    """One uncached forward over prompt + generated tokens: by causality its logits at position
    T-1+k are those of the uncached forward over the prompt and the first k new tokens."""
    model, params = converted(name)
    ids, mask, embeds = batch(padded=True)
    new = np.asarray(tokens[:, :-1])
    full_mask = np.concatenate([mask, np.ones_like(new)], 1)
    if kind == "ids":
        full = dict(input_ids=np.concatenate([ids, new], 1))
    else:
        tok_embeds = np.asarray(params["model"]["decoder"]["embed_tokens"]["embedding"])[new]
        full = dict(inputs_embeds=np.concatenate([embeds, tok_embeds], 1))
    out, _ = model.apply({"params": params}, **full, attention_mask=full_mask, edits=edits)
    return np.asarray(out["logits"][:, ids.shape[1] - 1:])


@pytest.mark.parametrize("name,kind", [("relu_2layers", "ids"), ("gelu_3layers_nobias", "embeds")])
def test_cached_decode_equals_uncached_forward(name, kind):
    tokens, step_logits = free_run(name, kind)
    np.testing.assert_allclose(step_logits, uncached_logits(name, kind, tokens), atol=ATOL)
    np.testing.assert_array_equal(tokens, np.argmax(step_logits, -1))


def test_edits_apply_in_the_cached_path():
    """Edits at the embeddings, the keys and values (which enter the cache) and a residual act the
    same in the cached decode as in the uncached forward, and change the output."""
    name = "relu_2layers"
    model, params = converted(name)
    ids, mask, _ = batch(padded=True)
    rng = np.random.default_rng(1)
    edits = {"lm.embed": Add(jnp.asarray(rng.normal(size=32), jnp.float32), alpha=0.3),
             # A [Dh] shift of every key leaves the softmax unchanged, one of every value does not:
             # applied twice (to the cache as well as the new token) it would show.
             "lm.layers.0.attn.k": Add(jnp.asarray(rng.normal(size=8), jnp.float32)),
             "lm.layers.1.attn.v": Add(jnp.asarray(rng.normal(size=8), jnp.float32)),
             "lm.layers.1.resid_post": Add(jnp.asarray(rng.normal(size=32), jnp.float32), alpha=0.5)}
    tokens, step_logits = opt.generate(model, params, input_ids=ids, attention_mask=mask,
                                       max_new_tokens=N_NEW, eos_token_id=(), edits=edits,
                                       return_logits=True)
    np.testing.assert_allclose(step_logits, uncached_logits(name, "ids", tokens, edits), atol=ATOL)
    assert np.abs(np.asarray(step_logits[:, 0]) - np.asarray(free_run(name, "ids")[1][:, 0])).max() > 1e-2


def test_prefill_edits_act_at_the_prompt_pass_only():
    """A ``prefill_edits`` patch of the prompt's last position acts once, in the prompt pass: the
    cached decode equals the uncached forward with the patch at that position alone (the new tokens
    read it through the cache). At a site it shares with a per-step edit, it applies after it."""
    name = "relu_2layers"
    model, params = converted(name)
    ids, mask, _ = batch(padded=True)
    t, site = ids.shape[1], "lm.layers.0.resid_post"
    rng = np.random.default_rng(2)
    value = jnp.asarray(3 * rng.normal(size=32), jnp.float32)
    every = Add(jnp.asarray(rng.normal(size=32), jnp.float32), alpha=0.2)
    tokens, step_logits = opt.generate(
        model, params, input_ids=ids, attention_mask=mask, max_new_tokens=N_NEW, eos_token_id=(),
        edits={site: every}, prefill_edits={site: Replace(value, along(np.arange(t) == t - 1, "token"))},
        return_logits=True)
    last = along(np.arange(t + N_NEW - 1) == t - 1, "token")
    np.testing.assert_allclose(step_logits, uncached_logits(name, "ids", tokens, {site: (every, Replace(value, last))}),
                               atol=ATOL)
    plain = opt.generate(model, params, input_ids=ids, attention_mask=mask, max_new_tokens=N_NEW, eos_token_id=(),
                         edits={site: every}, return_logits=True)[1]
    assert np.abs(np.asarray(step_logits) - np.asarray(plain)).max() > 1e-2


def test_generation_compiles_once():
    """A second call with other prompt values and other edit values reuses the compiled program."""
    model, params = converted("relu_2layers")
    ids, mask, _ = batch(padded=True)
    def edit(v):
        return {"lm.layers.0.resid_post": Add(jnp.full((32,), v, jnp.float32))}
    before = opt._generate._cache_size()
    a = opt.generate(model, params, input_ids=ids, attention_mask=mask, max_new_tokens=5, edits=edit(0.1))
    after_first = opt._generate._cache_size()
    other_ids, other_mask, _ = batch(padded=False, seed=7)
    b = opt.generate(model, params, input_ids=other_ids, attention_mask=other_mask, max_new_tokens=5,
                     edits=edit(-2.0))
    assert after_first == before + 1
    assert opt._generate._cache_size() == after_first, "generate retraced for new values"
    assert not np.array_equal(a, b)


# --- edits and captures ------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["lm.layers.0.resid_post", "lm.layers.1.attn.v"])
def test_add_edit_matches_hf_hook(site):
    """``Add`` at a site = adding the same tensor to the HF module output there: layer 0's output
    for ``resid_post``, ``v_proj``'s output (heads merged) for ``attn.v`` (applied once, not again
    inside the attention)."""
    name = "relu_2layers"
    hf = tiny_hf_opt(name)
    model, params = converted(name)
    ids, mask, _ = batch(padded=True)
    rng = np.random.default_rng(2)
    if site.endswith("resid_post"):
        delta = rng.normal(size=(*ids.shape, 32)).astype(np.float32)
        torch_delta, module = torch.tensor(delta), hf.model.decoder.layers[0]
    else:
        delta = rng.normal(size=(*ids.shape, 4, 8)).astype(np.float32)  # [B, T, H, Dh]
        torch_delta, module = torch.tensor(delta.reshape(*ids.shape, 32)), hf.model.decoder.layers[1].self_attn.v_proj
    hook = module.register_forward_hook(lambda m, i, o: o + 0.7 * torch_delta)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    hook.remove()
    out, _ = model.apply({"params": params}, input_ids=ids, attention_mask=mask,
                         edits={site: Add(delta, alpha=0.7)})
    np.testing.assert_allclose(out["logits"], ref, atol=ATOL)
    assert np.abs(ref - run_both(name, True, "ids")[0].logits.numpy()).max() > 1e-2


def test_capture_returns_every_site_with_documented_shapes():
    model, params = converted("gelu_3layers_nobias")
    ids, mask, _ = batch(padded=True)
    _, acts = model.apply({"params": params}, input_ids=ids, attention_mask=mask, capture=("lm.*",))
    assert set(acts) == set(model.site_names())
    b, t, d, h, f = *ids.shape, 32, 2, 64
    shapes = {"embed": (b, t, d), "attn.q": (b, t, h, d // h), "attn.z": (b, t, h, d // h),
              "attn.logits": (b, h, t, t), "attn.pattern": (b, h, t, t), "mlp.hidden": (b, t, f),
              "resid_pre": (b, t, d), "resid_post": (b, t, d), "attn_out": (b, t, d)}
    for site, value in acts.items():
        point = site.split(".", 3)[-1] if ".layers." in site else "embed"
        if point in shapes:
            assert value.shape == shapes[point], site
    # attn.logits is raw Q K^T: scaled, masked and softmaxed it is the pattern.
    scores = np.where(opt.layer_mask(mask, t), acts["lm.layers.1.attn.logits"] * (d // h) ** -0.5,
                      np.finfo(np.float32).min)
    np.testing.assert_allclose(jax.nn.softmax(scores, -1), acts["lm.layers.1.attn.pattern"], atol=1e-6)
    with pytest.raises(ValueError, match="lm.layers.1.resid_post"):
        model.apply({"params": params}, input_ids=ids, edits={"lm.layers.1.resid_pots": Add(1.0)})


def test_staged_forward_equals_full():
    """``embed`` -> ``run_layers`` in two pieces -> ``readout`` is the full forward (patching
    sweeps reuse a clean prefix this way)."""
    model, params = converted("gelu_3layers_nobias")
    ids, mask, _ = batch(padded=True)
    v = {"params": params}
    h, _ = model.apply(v, input_ids=ids, attention_mask=mask, method="embed")
    h, _ = model.apply(v, h, 0, 1, mask, method="run_layers")
    h, _ = model.apply(v, h, 1, None, mask, method="run_layers")
    (logits, _), _ = model.apply(v, h, method="readout")
    np.testing.assert_allclose(logits, run_both("gelu_3layers_nobias", True, "ids")[2]["logits"], atol=ATOL)


# --- configs and checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("override,field", [
    (dict(do_layer_norm_before=False), "do_layer_norm_before"),
    (dict(word_embed_proj_dim=16), "word_embed_proj_dim"),
    (dict(layer_norm_elementwise_affine=False), "layer_norm_elementwise_affine"),
    (dict(activation_function="silu"), "activation_function"),
])
def test_unsupported_config_is_refused_by_name(override, field):
    with pytest.raises(ValueError, match=field):
        opt.OPTConfig.from_hf_dict(hf_config(**override).to_dict())


def test_bad_checkpoint_names_every_problem():
    hf = tiny_hf_opt("relu_2layers")
    config = opt.OPTConfig.from_hf_dict(hf.config.to_dict())
    sd = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
    del sd["model.decoder.layers.1.fc2.weight"]
    sd["model.decoder.layers.0.self_attn.rotary.weight"] = np.zeros(3, np.float32)
    sd["model.decoder.layers.0.fc1.bias"] = np.zeros(65, np.float32)
    with pytest.raises(ConversionError) as err:
        opt_convert.convert_state_dict(sd, config)
    msg = str(err.value)
    assert "model/decoder/layers/1/fc2/kernel" in msg
    assert "model.decoder.layers.0.self_attn.rotary.weight" in msg
    assert "model.decoder.layers.0.fc1.bias: checkpoint (65,)" in msg and "expects (64,)" in msg
    sd = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
    sd["lm_head.weight"] = sd["model.decoder.embed_tokens.weight"] + 1.0
    with pytest.raises(ConversionError, match="untied lm_head"):
        opt_convert.convert_state_dict(sd, config)


def test_blip2_language_model_keys_convert():
    """The keys transformers' Blip2ForConditionalGeneration gives its OPT convert with the same
    table, whole (``OPT_RULES``, Flax paths under ``language_model/``) or by prefix."""
    opt_cfg = hf_config(**CASES["relu_2layers"])
    config = transformers.Blip2Config(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=8, patch_size=4),
        qformer_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, encoder_hidden_size=16, vocab_size=50),
        text_config=opt_cfg.to_dict(), num_query_tokens=2)
    blip = transformers.Blip2ForConditionalGeneration(config)
    sd = {k: v.detach().numpy() for k, v in blip.state_dict().items()}
    lm_keys = [k for k in sd if k.startswith("language_model.")]
    assert "language_model.model.decoder.layers.0.self_attn.q_proj.weight" in lm_keys
    params = opt_convert.convert_state_dict(sd, opt.OPTConfig.from_hf_dict(opt_cfg.to_dict()),
                                            prefix="language_model.")
    shapes = {("language_model",) + k: v
              for k, v in opt_convert.opt_param_shapes(opt.OPTForCausalLM(opt.OPTConfig.from_hf_dict(
                  opt_cfg.to_dict()))).items()}
    lm_sd = {k: v for k, v in sd.items() if k in lm_keys}
    whole = to_flax(lm_sd, opt_convert.OPT_RULES, shapes, opt_convert.lm_head_ignored("language_model."))
    a, b = traverse_util.flatten_dict(whole["language_model"]), traverse_util.flatten_dict(params)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # The prefixed table leaves the other towers' keys alone (no fc1/fc2 of the vision tower).
    rules = opt_convert.opt_rules("language_model.")
    claimed = [k for k in sd if any(r.match(k) for r in rules)]
    assert claimed and all(k.startswith("language_model.model.decoder.") for k in claimed)
