"""The README's code example runs as written (on a tiny checkpoint saved to a temp directory)."""

import re
from pathlib import Path

import jax.numpy as jnp

from mrepe_jax.models.clip import save_pretrained
from tests.models.tiny import tiny_clip

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path):
    model, variables, pixels, ids, mask = tiny_clip()
    save_pretrained(tmp_path / "clip", model.config, variables["params"])
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = code.replace('"path/to/clip-vit-base-patch32"', repr(str(tmp_path / "clip")))
    code = code.replace("vision.layers.6.", "vision.layers.1.")  # the tiny model has 2 layers
    scope = {"pixels": pixels, "input_ids": ids, "attention_mask": mask, "delta": jnp.ones(32)}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["logits"].shape == (64, 2, 2)
    assert scope["ablated"]["image_embeds"].shape == (2, 16)
    assert set(scope["acts"]) == {"vision.layers.0.resid_post", "vision.layers.1.resid_post"}


def test_readme_alignment_example_runs(tmp_path):
    import numpy as np

    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    code = code.replace('"runs/x/', '"' + str(tmp_path) + '/')
    rng = np.random.default_rng(0)
    text = rng.normal(size=(128, 12)).astype(np.float32)
    scope = {"text_reps": text, "image_reps": np.tanh(text @ rng.normal(size=(12, 10))),
             "text_pos": text[:40], "text_neg": text[40:]}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["mapped"].shape == (128, 10) and scope["delta_v"].shape == (10,)
    assert (tmp_path / "maps" / "text_to_vision.json").is_file() and (tmp_path / "phi").is_dir()


def test_readme_steering_example_runs():
    import numpy as np

    from mrepe_jax.models.layers import normalize

    model, variables, pixels, _, _ = tiny_clip()
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[2]
    rng = np.random.default_rng(0)
    reps = rng.normal(size=(20, 32)).astype(np.float32)
    prompts = {"colour": np.asarray(normalize(jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)))}
    scope = {"model": model, "params": variables["params"], "pixels": pixels, "reps": reps,
             "pos": np.arange(20) < 8, "prompts": prompts, "labels": np.array([0, 2])}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["preds"]["colour"].shape == (5, 2) and len(scope["moved"]) == 5


def test_readme_captioning_example_runs():
    import numpy as np

    from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
    from mrepe_jax.train import captioner
    from tests.train.test_captioner import make_clip, tiny_cfg

    world = ToyWorld(ToyWorldConfig())
    clip, clip_params = make_clip(world)
    model = captioner.ToyCaptioner(captioner.model_config(world, clip, tiny_cfg()))
    params = captioner.init_state(model, world, tiny_cfg()).params  # untrained: mechanics only
    source = captioner.vision_states(clip, clip_params, world.batch(range(3), split="test")["image"])
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[3]
    scope = {"model": model, "params": params, "source": source, "world": world,
             "delta": np.ones(16, np.float32)}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["ids"].shape == (4, 3, 15) and scope["said"]["colour"].shape == (4, 3)
