"""The MRepE stages on a real CLIP checkpoint (``experiments/clip/pipeline.py``).

    python -m launch.run --config=configs/clip.py --workdir=runs/clip-b32
    python -m launch.run --config=configs/clip.py --workdir=runs/clip-l14 \
        --config.model.name=openai/clip-vit-large-patch14 --config.model.dtype=bfloat16

Defaults: ``openai/clip-vit-base-patch32``, CIFAR-10's classes through TFDS and colour / animal
words in COCO captions (both downloaded by TFDS on first use; ``download=False`` to refuse).
A folder of labelled images instead: ``--config.images.source=folder --config.images.path=DIR``
(``DIR/<split>/<class>/<image>``, split folders named by ``images.folders``: train, val, test).
"""

import ml_collections

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown config argument {arg!r}; configs/clip.py takes none")
    c = ml_collections.ConfigDict()
    c.experiment = "clip"  # launch.run's EXPERIMENTS
    c.seed = 0  # contrast pairs and bootstrap resamples

    c.model = ml_collections.ConfigDict(dict(
        name="openai/clip-vit-base-patch32",  # a hub id (needs network or the HF cache) or a directory
        dtype="float32",  # or "bfloat16"
        batch_size=64))

    c.images = ml_collections.ConfigDict(dict(
        source="tfds",  # or "folder"
        name="cifar10", path="", data_dir=ml_collections.config_dict.placeholder(str), download=True,
        # The classes read, in label order: CIFAR-10's for the TFDS default; with a folder, () takes
        # its train split's class subfolders.
        label_key="label", family="object", classes=CIFAR10,
        templates=("a photo of a {}.", "a blurry photo of a {}.", "a photo of the small {}."),
        # TFDS split strings; a folder's split subfolders; how many examples of each to read.
        splits=dict(train="train[:40000]", validation="train[40000:]", test="test"),
        folders=dict(train="train", validation="val", test="test"),
        num=dict(train=2000, validation=500, test=1000)))

    c.captions = ml_collections.ConfigDict(dict(
        source="tfds",  # or "file": one caption per line at `path`
        name="coco_captions", split="val", path="", data_dir=ml_collections.config_dict.placeholder(str),
        download=True, limit=10000,
        families=dict(colour=("red", "blue", "green", "yellow", "white", "black"),
                      animal=("dog", "cat", "horse", "bird", "cow", "sheep")),
        templates=("a photo of {}.", "a picture with {} in it.")))

    # Table 2: a text -> image map (eq 4, InfoNCE eq 3) on images paired with a caption naming their
    # class (one of `templates`, drawn per image), CMC (eq 8) on held-out pairs; the map settings
    # are the paper's §4.1.3 (align.train.MapTrainConfig), one map per seed and kind.
    c.align = ml_collections.ConfigDict(dict(
        num_train=1000, num_test=500, seeds=(0, 1, 2), map_kinds=("mrepe", "linear", "procrustes"),
        templates=("a picture of a {}.", "an image showing a {}.", "a {} in a photo."),
        map=dict(hidden=128, num_anchors=32, anchors="data+learned", temperature=0.07,
                 symmetric=True, memory_size=128, batch_size=128, epochs=50, learning_rate=1e-4,
                 weight_decay=1e-4, checkpoint_every=1000)))
    # Table 3: held-out inputs steered toward each value at the last layer (eq 5 and patching);
    # alpha in units of the site's mean norm (0.1: the paper's).
    c.steer = ml_collections.ConfigDict(dict(num_inputs=128, alphas=(0.1, 0.3, 1.0)))
    c.causal = ml_collections.ConfigDict(dict(num_pairs=16, heads=True, bootstrap_resamples=1000))
    # Each attention head of the modality's tower labelled by TextSpan's text basis (issue 27) on
    # `num_images` held-out inputs; texts: one per line at `texts_path`, or (empty) the class
    # prompts and the caption families' words. A tower that is not a plain ViT is skipped. With a
    # folder of images, `masks_path` (<split>/<class>/<image stem>.png, non-zero on the object) adds
    # zero-shot segmentation of each image's object for its class prompt.
    c.decomposition = ml_collections.ConfigDict(dict(texts_path="", num_texts=3, rank=16, num_images=128,
                                                     masks_path=""))
    # The mesh (DESIGN.md section 7): shape (data, model), None puts every device on data. A model
    # axis over 1 loads the params straight into shards by the family's rule table
    # (models/clip/sharding.py); fsdp=True also shards large params over data.
    c.mesh = ml_collections.ConfigDict({"shape": ml_collections.config_dict.placeholder(tuple),
                                        "axes": ("data", "model"), "fsdp": False})
    return c
