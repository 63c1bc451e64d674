"""The MRepE stages on a real BLIP-2 (OPT) checkpoint (``experiments/blip2/pipeline.py``).

    python -m launch.run --config=configs/blip2.py --workdir=runs/blip2-opt-2.7b
    python -m launch.run --config=configs/blip2.py --workdir=runs/blip2-local \
        --config.model.name=/path/to/blip2-opt-2.7b --config.model.dtype=bfloat16 \
        --config.data.source=folder --config.data.path=/data/images \
        --config.data.captions_file=/data/captions.jsonl

Defaults: ``Salesforce/blip2-opt-2.7b`` and COCO captions through TFDS (``coco_captions``, Karpathy
splits; downloaded by TFDS on first use, ``download=False`` to refuse). A folder instead: images
under ``data.path`` and a JSONL file with one ``{"image": "rel/path.jpg", "captions": ["..."]}`` per
line (records split by position, 3:1:1). Concepts are caption words, listed by family.
"""

import ml_collections


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown config argument {arg!r}; configs/blip2.py takes none")
    c = ml_collections.ConfigDict()
    c.experiment = "blip2"  # launch.run's EXPERIMENTS
    c.seed = 0  # contrast pairs and bootstrap resamples

    c.model = ml_collections.ConfigDict(dict(
        name="Salesforce/blip2-opt-2.7b",  # a hub id (needs network or the HF cache) or a directory
        dtype="float32",  # or "bfloat16"
        batch_size=16))

    c.data = ml_collections.ConfigDict(dict(
        source="tfds",  # or "folder"
        name="coco_captions", data_dir=ml_collections.config_dict.placeholder(str), download=True,
        splits=dict(train="train", validation="val", test="test"),  # TFDS split strings
        path="", captions_file="",  # folder: the image root and the JSONL captions file
        num=dict(train=2000, validation=500, test=500),  # images read per split (at most)
        # An image has a value when its captions name it and no other value of the family.
        # A family listed empty is left out (--config.data.families.object="()").
        families=dict(colour=("red", "blue", "green", "yellow", "white", "black"),
                      animal=("dog", "cat", "horse", "bird", "cow", "sheep"),
                      object=("bus", "train", "pizza", "umbrella", "clock", "boat"))))

    # Table 3: held-out images steered toward each value at the Q-Former output and at OPT layer
    # `lm_layer` (None: the middle one; negative counts from the end); alpha in units of the site's
    # mean norm; greedy captions of `max_new_tokens`; `chunk` interventions per compiled call.
    c.steer = ml_collections.ConfigDict(dict(
        num_inputs=32, alphas=(0.5, 1.0, 2.0), lm_layer=ml_collections.config_dict.placeholder(int),
        max_new_tokens=20, chunk=8))
    # Eq 2: image pairs of two values of a family; the metric is the logit difference of the two
    # words at the first token generated after `prompt`.
    c.causal = ml_collections.ConfigDict(dict(num_pairs=8, prompt="a picture of a", bootstrap_resamples=1000))
    # The mesh (DESIGN.md section 7): shape (data, model), None puts every device on data. A model
    # axis over 1 loads the params straight into shards by the family's rule table
    # (models/blip2/sharding.py); fsdp=True also shards large params over data. For a model that no
    # one device holds (blip2-opt-6.7b on 16 GB cores): --config.mesh.shape="(1,8)".
    c.mesh = ml_collections.ConfigDict({"shape": ml_collections.config_dict.placeholder(tuple),
                                        "axes": ("data", "model"), "fsdp": False})
    return c
