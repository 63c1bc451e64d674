"""The MRepE stages on a real CLAP checkpoint (``experiments/clap/pipeline.py``).

    python -m launch.run --config=configs/clap.py --workdir=runs/clap
    python -m launch.run --config=configs/clap.py --workdir=runs/clap-music \
        --config.model.name=laion/larger_clap_music --config.audio.source=folder \
        --config.audio.path=DIR --config.audio.classes="()"

Defaults: ``laion/clap-htsat-unfused``, ten spoken words of TFDS ``speech_commands`` (16 kHz,
resampled to the model's 48 kHz; downloaded by TFDS on first use, 2.5 GB; ``download=False`` to
refuse) and animal / vehicle words in COCO captions. A folder of labelled WAV files instead:
``--config.audio.source=folder --config.audio.path=DIR`` (``DIR/<split>/<class>/*.wav``, split
folders named by ``audio.folders``: train, val, test); ``--config.audio.resample=False`` refuses a
file at another rate than the model's instead of resampling it.
"""

import ml_collections

from mrepe_jax.data.labelled_audio import SPOKEN_WORD_TEMPLATES

#: speech_commands' ten words (its _silence_ and _unknown_ classes have no single name).
WORDS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes")


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"unknown config argument {arg!r}; configs/clap.py takes none")
    c = ml_collections.ConfigDict()
    c.experiment = "clap"  # launch.run's EXPERIMENTS
    c.seed = 0  # contrast pairs and bootstrap resamples

    c.model = ml_collections.ConfigDict(dict(
        name="laion/clap-htsat-unfused",  # a hub id (needs network or the HF cache) or a directory
        dtype="float32",  # or "bfloat16"
        batch_size=32,
        # Captions are padded (or cut) to this many tokens: one compiled program for every batch.
        max_text_tokens=64))

    c.audio = ml_collections.ConfigDict(dict(
        source="tfds",  # or "folder"
        name="speech_commands", path="", data_dir=ml_collections.config_dict.placeholder(str), download=True,
        resample=True,  # False: a recording at another rate than the model's is refused
        # The classes read, in label order; with a folder, () takes its train split's class subfolders.
        label_key="label", family="word", classes=WORDS, templates=SPOKEN_WORD_TEMPLATES,
        # TFDS split strings; a folder's split subfolders; how many recordings of each to read.
        splits=dict(train="train", validation="validation", test="test"),
        folders=dict(train="train", validation="val", test="test"),
        num=dict(train=2000, validation=500, test=1000)))

    c.captions = ml_collections.ConfigDict(dict(
        source="tfds",  # or "file": one caption per line at `path`
        name="coco_captions", split="val", path="", data_dir=ml_collections.config_dict.placeholder(str),
        download=True, limit=10000,
        # Things that make sounds: the text tower's concepts.
        families=dict(animal=("dog", "cat", "horse", "bird", "cow", "sheep"),
                      vehicle=("car", "bus", "train", "truck", "motorcycle", "airplane")),
        templates=("the sound of a {}.", "a recording of a {}.")))

    # Table 2: a text -> audio map (eq 4, InfoNCE eq 3) on recordings paired with a caption naming
    # their class (one of `templates`, drawn per recording), CMC (eq 8) on held-out pairs.
    c.align = ml_collections.ConfigDict(dict(
        num_train=1000, num_test=500, seeds=(0, 1, 2), map_kinds=("mrepe", "linear", "procrustes"),
        templates=("someone says {}.", "a recording of the word {}.", "a voice saying {}."),
        map=dict(hidden=128, num_anchors=32, anchors="data+learned", temperature=0.07,
                 symmetric=True, memory_size=128, batch_size=128, epochs=50, learning_rate=1e-4,
                 weight_decay=1e-4, checkpoint_every=1000)))
    # Table 3: held-out inputs steered toward each value at the last block / layer (eq 5 and
    # patching); alpha in units of the site's mean norm (0.1: the paper's).
    c.steer = ml_collections.ConfigDict(dict(num_inputs=128, alphas=(0.1, 0.3, 1.0)))
    # Eq 2: the audio tower is swept over one stage's blocks (its stages differ in tokens and
    # width); -1 is the last (HTSAT's: 2 blocks of 8x8 tokens).
    c.causal = ml_collections.ConfigDict(dict(num_pairs=16, audio_stage=-1, bootstrap_resamples=1000))
    # Each attention head of the modality's tower labelled by TextSpan's text basis (issue 27) on
    # `num_images` held-out inputs; texts: one per line at `texts_path`, or (empty) the class
    # prompts and the caption families' words. A tower that is not a plain ViT is skipped. With a
    # folder of images, `masks_path` (<split>/<class>/<image stem>.png, non-zero on the object) adds
    # zero-shot segmentation of each image's object for its class prompt.
    c.decomposition = ml_collections.ConfigDict(dict(texts_path="", num_texts=3, rank=16, num_images=128,
                                                     masks_path=""))
    # The mesh (DESIGN.md section 7): shape (data, model), None puts every device on data; a model
    # axis over 1 loads the params into shards by models/clap/sharding.py; fsdp=True also shards
    # large params over data.
    c.mesh = ml_collections.ConfigDict({"shape": ml_collections.config_dict.placeholder(tuple),
                                        "axes": ("data", "model"), "fsdp": False})
    return c
