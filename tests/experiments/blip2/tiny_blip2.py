"""A tiny transformers BLIP-2 (OPT) that has learnt to caption a tiny world, saved as a checkpoint
directory with its processor files (a test helper, not a test).

The world: 32x32 images whose tint is a colour (red, green, blue) and whose stripes' direction is
an animal (horizontal: dog, vertical: cat); the captions say so, "a red dog on the grass .", and
one in four names no animal ("a red thing on the grass ."). A random BLIP-2 says nothing about
its images, so no steering could make it name a target; this one is trained for a few hundred
steps (torch, a few seconds) until its greedy captions name the image's colour, which gives the
stages something true to find.
"""

from __future__ import annotations

import json
import os

import numpy as np

COLOURS = ("red", "green", "blue")
ANIMALS = ("dog", "cat")
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
WORDS = ("a", "on", "the", "grass", ".", "thing", "in", "photo", "picture", "of") + COLOURS + ANIMALS
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS + ("<image>",))}
PAD, BOS, EOS, IMG = VOCAB["<pad>"], VOCAB["</s>"], VOCAB["</s>"], VOCAB["<image>"]
NQ, SIZE = 4, 32
TINTS = np.array([[200, 40, 40], [40, 190, 40], [40, 60, 210]])


def examples(n: int, seed: int = 0):
    """``(images uint8 [n, 32, 32, 3], captions [n][1..2], colour [n], animal [n] (-1: none))``."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, len(COLOURS), n)
    animal = np.where(rng.random(n) < 0.75, rng.integers(0, len(ANIMALS), n), -1)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        stripes = (np.arange(SIZE) // 4 % 2).astype(float)
        grid = stripes[:, None] * np.ones(SIZE) if animal[i] != 1 else np.ones(SIZE)[:, None] * stripes
        if animal[i] == -1:
            grid = np.zeros((SIZE, SIZE))
        img = TINTS[colour[i]] * (0.7 + 0.3 * grid[..., None]) + rng.integers(-20, 20, (SIZE, SIZE, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    captions = []
    for c, a in zip(colour, animal):
        thing = ANIMALS[a] if a >= 0 else "thing"
        captions.append([f"a {COLOURS[c]} {thing} on the grass .", f"a photo of a {COLOURS[c]} {thing} ."])
    return images, captions, colour, animal


def _write_processor(directory) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", BOS)])
    tok.save(os.path.join(directory, "tokenizer.json"))
    special = {"lstrip": False, "rstrip": False, "single_word": False, "special": True, "normalized": False}
    added = {str(VOCAB[t]): {"content": t, **special} for t in SPECIALS + ("<image>",)}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "</s>", "eos_token": "</s>",
                   "pad_token": "<pad>", "unk_token": "<unk>", "added_tokens_decoder": added,
                   "image_token": "<image>"}, f)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump({"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
                   "image_processor_type": "BlipImageProcessor", "resample": 3,
                   "rescale_factor": 1 / 255, "size": {"height": SIZE, "width": SIZE}}, f)
    with open(os.path.join(directory, "processor_config.json"), "w") as f:
        json.dump({"num_query_tokens": NQ, "processor_class": "Blip2Processor"}, f)


def hf_config(lm: str = "opt"):
    import transformers

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=SIZE, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6)
    qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   cross_attention_frequency=1, encoder_hidden_size=32)
    if lm == "t5":
        text = transformers.T5Config(vocab_size=len(VOCAB), d_model=32, d_ff=64, num_layers=1, num_heads=4,
                                     d_kv=8).to_dict()
    else:
        text = transformers.OPTConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                      num_attention_heads=4, max_position_embeddings=32, word_embed_proj_dim=32,
                                      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS).to_dict()
    return transformers.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                                    num_query_tokens=NQ, image_token_index=IMG)


def write_trained(directory, steps: int = 150, seed: int = 0) -> None:
    """Trains the tiny BLIP-2 on 384 examples of the world (teacher-forced cross-entropy on the first
    caption, Adam) and writes it with its processor files to ``directory``."""
    import torch

    os.makedirs(directory, exist_ok=True)
    # One thread: the model is too small to gain from two, and a second thread spinning while
    # another process holds a core makes every step many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(directory, steps, seed)
    finally:
        torch.set_num_threads(threads)
    _write_processor(directory)


def _train(directory, steps: int, seed: int) -> None:
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.Blip2ForConditionalGeneration(hf_config())
    with torch.no_grad():  # HF's init leaves the vision tower at ~1e-10: give every tensor a scale
        for name, p in model.named_parameters():
            if "layernorm" in name.lower() or "layer_norm" in name.lower():
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    images, captions, _, _ = examples(384, seed=seed + 100)
    pixels = torch.tensor(((images / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2), dtype=torch.float32)
    ids = torch.tensor([[IMG] * NQ + [BOS] + [VOCAB[w] for w in c[0].split()] + [EOS] for c in captions])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        b = torch.tensor(rng.choice(len(ids), 32, replace=False))
        logits = model(pixel_values=pixels[b], input_ids=ids[b]).logits
        loss = torch.nn.functional.cross_entropy(logits[:, NQ:-1].reshape(-1, logits.shape[-1]),
                                                 ids[b][:, NQ + 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)


def write_t5(directory) -> None:
    """A BLIP-2 config with a Flan-T5 language model (no weights needed: it is refused first)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config("t5").to_dict(), f)
