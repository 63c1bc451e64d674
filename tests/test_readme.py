"""The README's code example runs as written (on a tiny checkpoint saved to a temp directory)."""

import re
from pathlib import Path

import jax.numpy as jnp

from tests.models.tiny import tiny_clip

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_verbatim(tmp_path, monkeypatch):
    """The first block as written: its checkpoint path and image exist in the working directory."""
    import numpy as np
    from PIL import Image

    from bench import common

    monkeypatch.chdir(tmp_path)
    common.write_hf_clip(tmp_path / "path" / "to" / "clip-vit-base-patch32", shape="tiny8")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save("cat.png")
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    scope = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["pixels"].shape == (1, 32, 32, 3) and scope["input_ids"].shape == (2, 40)
    assert scope["logits"].shape == (64, 1, 2)
    assert scope["ablated"]["image_embeds"].shape == (1, 16) and scope["image_emb"].shape == (1, 16)
    assert set(scope["acts"]) == {f"vision.layers.{i}.resid_post" for i in range(8)}
    # The steered run moved away from the clean one.
    assert np.abs(np.asarray(scope["steered"]["image_embeds"] - scope["outputs"]["image_embeds"])).max() > 1e-3


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


def _steering_compiles(code: str, runs: int = 3) -> list[int]:
    """Programs ``steered_predictions`` compiled by each of ``runs`` executions of ``code`` (a
    notebook cell rerun), on a model of a width no other test uses (so the first run compiles)."""
    import dataclasses

    import jax
    import numpy as np

    from mrepe_jax.control import evaluate
    from mrepe_jax.models.clip import CLIPModel
    from mrepe_jax.models.layers import normalize
    from tests.models.tiny import CONFIG

    vision = dataclasses.replace(CONFIG.vision_config, intermediate_size=40)
    model = CLIPModel(dataclasses.replace(CONFIG, vision_config=vision))
    _, variables, pixels, ids, mask = tiny_clip()
    variables = model.init(jax.random.key(3), pixels, ids, mask)
    rng = np.random.default_rng(0)
    reps = rng.normal(size=(20, 32)).astype(np.float32)
    prompts = {"colour": np.asarray(normalize(jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)))}
    counts = []
    for _ in range(runs):
        scope = {"model": model, "params": variables["params"], "pixels": pixels, "reps": reps,
                 "pos": np.arange(20) < 8, "prompts": prompts, "labels": np.array([0, 2])}
        before = evaluate._predict._cache_size()
        exec(compile(code, str(README), "exec"), scope)
        counts.append(evaluate._predict._cache_size() - before)
    return counts


def test_readme_steering_example_rerun_compiles_once():
    """Issue 30: the README's steering cell, rerun three times, compiles one program. The idiom it
    warns against (a ``def edits(p)`` in the cell) compiles on every run."""
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[2]
    assert _steering_compiles(code) == [1, 0, 0]
    closure = code.replace('edits = DirectEdits("vision.layers.1.resid_post")',
                           'def edits(p):\n    return DirectEdits("vision.layers.1.resid_post")(p)')
    assert closure != code
    assert _steering_compiles(closure) == [1, 1, 1]


def test_readme_sae_example_runs(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    model, variables, *_ = tiny_clip()

    def images(step):
        return {"image": np.random.default_rng(step).normal(size=(64, 16, 16, 3)).astype(np.float32)}

    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[4]
    assert "SAEClamp" in code
    scope = {"model": model, "params": variables["params"], "images": images}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["z"].shape == (256, 256) and int((np.asarray(scope["z"]) > 0).sum(1).max()) <= 8
    assert (tmp_path / "runs" / "sae" / "topk" / "cfg.json").is_file()
    assert 0 <= scope["metrics"].fvu < 1 and scope["metrics"].l0 <= 8
    assert scope["steered"].shape == (64, 16)


def test_readme_decomposition_example_runs():
    import numpy as np

    model, variables, pixels, *_ = tiny_clip()
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[5]
    assert "text_span" in code
    texts = np.random.default_rng(0).normal(size=(12, 16)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=-1, keepdims=True)
    scope = {"model": model, "params": variables["params"], "pixels": np.asarray(pixels), "texts": texts}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["heads"].shape == (2, 2, 4, 16) and len(np.asarray(scope["basis"].indices)) == 3
