"""ToyWorld end to end: train the tri-modal CLIP, evaluate, write the paper's tables.

Run: python -m launch.run --config=configs/toyworld.py --workdir=runs/demo
Override any field: --config.train.num_steps=500
"""

import ml_collections

from mrepe_jax.train import captioner

# The hard world's difficulty knobs (ToyWorldConfig documents each). Measured at the demo's
# training budget (world and train seed 0), test-split zero-shot accuracy default -> hard: image
# shape 0.995 -> 0.655, audio shape 1.000 -> 0.733, text size 0.994 -> 0.767, every other cell
# >= 0.94; text identification then differs between baseline and MRepE (position 0.877 vs 0.930).
# spurious=0.9 put image shape at chance (0.374): nothing left for methods to tell apart there.
# Each knob alone hurts: spurious -> shape in every tower; distractors -> image/audio shape and
# text size; caption_noise -> the text tower (size 0.831).
HARD_WORLD = dict(spurious=0.7, caption_noise=0.2, distractors=2)


def get_config(arg=None):
    """``arg="tiny"`` (``--config=configs/toyworld.py:tiny``) shrinks everything for smoke tests;
    ``arg="hard"`` (``--config=configs/toyworld.py:hard``) turns on the world's difficulty knobs
    (DESIGN.md section 5) and is otherwise the default; ``arg="paper"`` runs the paper's protocol
    (5 seeds that each retrain the CLIP)."""
    if arg not in (None, "", "tiny", "hard", "paper"):
        raise ValueError(f"unknown config argument {arg!r}; use nothing, 'tiny', 'hard' or 'paper'")
    c = ml_collections.ConfigDict()
    c.experiment = "toyworld"  # launch.run's EXPERIMENTS
    # The run seed: every seed below is shifted by 1000 x seed (experiments/toyworld/seeds.py), so
    # 0 runs them as written and --config.seed=1 changes every random choice of the run (world,
    # CLIP, maps, steering subsets, contrast pairs, bootstrap, permutation tests). results.json
    # records the effective seeds under "seeds".
    c.seed = 0

    # Difficulty knobs off: the default world (see ToyWorldConfig for what each knob does).
    c.world = ml_collections.ConfigDict(dict(seed=0, image_size=32, sample_rate=8000,
                                             clip_seconds=0.5, max_len=16, spurious=0.0,
                                             spurious_pair=("colour", "shape"), caption_noise=0.0,
                                             distractors=0))

    c.model = m = ml_collections.ConfigDict()
    m.hidden_size = 64
    m.mlp_size = 128
    m.num_layers = 2
    m.num_heads = 4
    m.patch_size = 8
    m.audio_patch_size = 16
    m.projection_dim = 64

    c.train = t = ml_collections.ConfigDict()
    t.seed = 0
    t.pool_size = 8192
    t.batch_size = 128
    t.num_steps = 1000
    t.learning_rate = 2e-3
    t.warmup_steps = 100
    t.weight_decay = 1e-4
    # Captions replaced by one-family class prompts. Worst zero-shot accuracy over families and
    # modalities (text "size" lags): 0.3 needed 2000 steps for >= 0.95 (1500: 0.956); 0.5 at 1500
    # steps gave 0.997; 0.7 at 1000 steps 0.994 (world seed 0) -- the demo's training budget.
    t.prompt_fraction = 0.7
    t.checkpoint_every = 500
    # Steps per compiled call (loop.fit: a lax.scan of steps): the host's per-call work is paid once
    # per 10 steps. Measured at batch 128 on 2 CPU cores: 41 ms per step against 53 ms. Execution
    # only: the same trajectory (to float rounding), and a resume may change it.
    t.steps_per_call = 10

    # The mesh: shape (data, model); None puts every device (of every process) on data. A model
    # axis over 1 shards the CLIP's params (and Adam's moments) by its rule table
    # (models/trimodal/sharding.py); fsdp=True also shards large params over data.
    c.mesh = ml_collections.ConfigDict({"shape": ml_collections.config_dict.placeholder(tuple),
                                        "axes": ("data", "model"), "fsdp": False})

    c.eval = e = ml_collections.ConfigDict()
    e.num_test = 1024

    c.identify = i = ml_collections.ConfigDict()
    i.num_train = 1024
    i.num_validation = 512
    i.num_pairs = 16
    # Causal sweeps compile once per (tower, family): restrict them for quick runs.
    i.causal_towers = ("vision", "text", "audio")
    i.causal_families = ("colour", "shape", "size", "position", "emblem")
    i.bootstrap_resamples = 1000  # the top cell's CI (the paper's §4.1.3: 1,000)

    # Alignment maps (eq 3-4), Table 2 and the transfer table. The map's defaults are the paper's
    # §4.1.3 (AdamW, lr 1e-4, 50 epochs); everything fitted on top of the one CLIP varies by seed.
    c.align = a = ml_collections.ConfigDict()
    a.seeds = (0, 1, 2)
    a.train_fraction = 0.9  # each seed's maps see their own random 90% of the train split
    a.map = ml_collections.ConfigDict(dict(
        kind="mrepe", hidden=128, num_anchors=32, anchors="data+learned", temperature=0.07,
        symmetric=True, memory_size=128, batch_size=128, epochs=50, learning_rate=1e-4,
        weight_decay=1e-4, checkpoint_every=1000,
        steps_per_call=10))  # no seed: each map's is one of align.seeds
    a.ablation_anchors = ("data", "learned")  # the default "data+learned" is the main row
    # Steering steps, in units of the site's mean representation norm (0.1: the paper's alpha).
    a.steer_alphas = (0.1, 0.3, 1.0)
    a.num_steer = 256

    # Steering (Table 3): every concept value a target, at each tower's last layer.
    c.control = k = ml_collections.ConfigDict()
    k.towers = ("vision", "text", "audio")
    k.num_inputs = 128  # held-out test inputs steered per target
    # eq 5's alpha in units of the site's mean norm (0.1: the paper's): the dose-response sweep
    # (one compiled call, plotted) and the alphas Table 3 prints.
    k.alphas = (0.03, 0.1, 0.3, 0.6, 1.0, 2.0)
    k.table_alphas = (0.1, 0.3, 1.0)
    # eq 7's boost, as a shift of the softmax input. Measured on the default world at alpha 1.0:
    # 2.0 moved nothing (attention success <= 0.2 %); 8.0 gives 1-6 %, and Combined > Direct.
    k.attention_strength = 8.0
    k.seeds = (0, 1, 2)
    k.train_fraction = 0.9
    # The FT baseline's heads (control.finetune): full-batch Adam on the train split. Measured on
    # the hard world (seed 0, image / text): 200 steps at 1e-2 reach success 1.000 / 1.000 with
    # collateral 0.933 / 0.920 in 9 s per tower; 50 steps at 2e-2 reach 1.000 / 1.000 with
    # 0.920 / 0.913 in 2.7 s; 25 steps at 3e-2 lose collateral (0.912 / 0.891).
    k.ft = ml_collections.ConfigDict(dict(steps=50, learning_rate=2e-2, keep_weight=1.0))
    # Table 4: the "make it safe" intervention (eq 5 + 7 toward safe emblems) and its PGD attack,
    # L-inf radius per input kind (pixels in [0, 1], waveforms in [-1, 1]). Measured on the default
    # world's Baseline: pixels 8/255 flip 99 % of emblem predictions, 1/255 none; waveform 0.01
    # flips all, 0.001 a third. A radius where the Baseline saturates separates nothing.
    k.safety_alpha = 1.0
    k.pgd_epsilon = ml_collections.ConfigDict({"vision": 2 / 255, "audio": 0.001})
    k.pgd_step_size = ml_collections.ConfigDict({"vision": 0.5 / 255, "audio": 0.00025})
    k.pgd_steps = 10
    k.efficiency_iters = 20  # Table 5: timed calls per method (interleaved, median)

    # Sparse autoencoders at the vision tower's steering site (experiments/toyworld/features.py),
    # one per architecture, scored against the world's concepts; the first architecture's
    # features steer (Table 3's SAE feature column). JumpReLU's and ReLU's coefficients put their L0
    # near k on the default world (measured: see BUILD.md).
    c.features = s = ml_collections.ConfigDict()
    s.architectures = ("topk", "batchtopk", "jumprelu", "relu")
    s.latents = 256
    s.k = 8
    s.steps = 400
    s.batch_size = 512  # token rows per step, drawn from images_per_step train images' tokens
    s.images_per_step = 32
    s.learning_rate = 2e-3
    s.aux_k = 64
    s.dead_steps = 100
    s.seed = 0
    s.coefficients = ml_collections.ConfigDict(dict(
        jumprelu=dict(l0_coefficient=0.5, bandwidth=0.5, init_threshold=1.0), relu=dict(l1_coefficient=4.0)))
    s.recovery_auroc = 0.95  # a concept value counts as recovered when a feature reaches this AUROC
    s.purity = 0.9
    s.top_examples = 20
    s.probe_k = 4
    s.clamp_scale = 1.0

    # Where the image embedding comes from (experiments/toyworld/decomposition.py): TextSpan's
    # terms and per-head text basis over the class prompts, mean-ablations, and the spurious pair's
    # source-family heads ablated against `random_sets` random sets of as many heads.
    c.decomposition = ml_collections.ConfigDict(dict(num_texts=3, rank=8, seed=0, random_sets=5,
                                                     min_group=10))

    # The ToyWorld captioner (train/captioner.py: Q-Former + OPT over the frozen CLIP vision
    # tower), main world only: caption accuracy on `eval_images` held-out images, its Table 3
    # row (eq 5 at the Q-Former, control.seeds / table_alphas / num_inputs) and Table 4 rows.
    c.captioner = captioner.default_config()
    c.captioner.eval_images = 512

    # Transfer across architectures (experiments/toyworld/transfer.py), main world only: the CLIP,
    # a second CLIP of another width and depth (`transfer.clip` overrides model + train) and the
    # captioner; maps as `align.map` with align.seeds. Measured for the second CLIP on the default
    # world (2 CPU cores): 48 wide x 1 layer, 500 steps, 4096 pool: 18 s, image zero-shot
    # accuracy >= 0.87 per family; 32 x 3 at 600 steps took 40 s.
    c.transfer = x = ml_collections.ConfigDict()
    x.clip = ml_collections.ConfigDict(dict(hidden_size=48, mlp_size=96, num_layers=1, num_heads=4,
                                            projection_dim=48, num_steps=500, pool_size=4096))
    x.map_kinds = ("linear", "procrustes", "mrepe")
    x.map_epochs = 50  # the other map settings are align.map's
    x.alphas = (0.3, 1.0)  # units of the target site's mean norm
    x.num_steer = 64  # held-out test inputs steered per direction

    # The demo also runs the hard world (its own CLIP) and reports Tables 1-2 for it.
    c.compare_hard = True
    # The CLIP itself retrained per seed (experiments/toyworld/paper_protocol.py); empty: one CLIP, and only
    # what is fitted on top of it varies by seed (align.seeds, control.seeds). Set, its seeds
    # replace train.seed, align.seeds and control.seeds (paper_protocol.seed_config).
    c.clip_seeds = ()
    c.hard_world = ml_collections.ConfigDict(HARD_WORLD)

    if arg == "paper":
        # The full protocol: 5 seeds, each retraining the CLIP and refitting everything on it
        # (both worlds), 1,000 bootstrap resamples. BUILD.md states its run time.
        c.clip_seeds = (0, 1, 2, 3, 4)
        i.bootstrap_resamples = 1000
    if arg == "hard":
        c.world.update(HARD_WORLD)
        c.compare_hard = False  # the main world is the hard one
    if arg == "tiny":
        # projection_dim == hidden_size: maps between `pooled` sites reuse the `proj` maps' programs.
        m.update(hidden_size=16, mlp_size=32, num_layers=1, num_heads=2, projection_dim=16)
        t.update(pool_size=64, batch_size=16, num_steps=4, warmup_steps=1, checkpoint_every=2)
        e.num_test = 64
        i.update(num_train=96, num_validation=64, num_pairs=2, causal_towers=("vision",),
                 causal_families=("colour",))
        a.update(seeds=(0, 1), num_steer=16, steer_alphas=(0.3, 1.0))
        c.compare_hard = False  # --config.compare_hard=True adds the hard world (its own CLIP)
        k.update(towers=("vision",), num_inputs=16, alphas=(1.0,), table_alphas=(1.0,), seeds=(0,),
                 pgd_steps=2)
        k.ft.steps = 5
        k.efficiency_iters = 2
        a.map.update(hidden=8, num_anchors=4, batch_size=16, epochs=2, memory_size=16)
        c.captioner.update(qformer_hidden_size=16, qformer_heads=2, qformer_mlp_size=32,
                           num_query_tokens=2, lm_hidden_size=16, lm_layers=1, lm_heads=2,
                           lm_ffn_dim=32, num_steps=4, warmup_steps=1, batch_size=16, pool_size=32,
                           checkpoint_every=2, eval_images=16)
        # The tiny CLIP's own shapes and schedule with another seed: its compiled programs serve
        # both, the train step included (the optimizer, and so the train state's structure, is the
        # same only at the same num_steps). The widths-differ mechanics are
        # tests/align/test_transfer.py's; the default config's second CLIP differs in width and depth.
        x.clip = ml_collections.ConfigDict(dict(seed=1, pool_size=32))
        x.map_kinds = ("procrustes", "mrepe")
        x.map_epochs = 2
        x.alphas = (1.0,)
        x.num_steer = 16
        a.ablation_anchors = ("data",)
        c.decomposition.update(random_sets=2, min_group=1)
        s.update(architectures=("topk", "jumprelu"), latents=32, k=4, steps=6, batch_size=64,
                 images_per_step=8, aux_k=8, dead_steps=3, top_examples=8)
    return c
