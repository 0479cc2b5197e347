"""Cosmos Policy training configs.

Usage: ``--config=configs/cosmos_policy.py:ARG`` where ARG is a comma-separated list of a base
experiment and optional modifiers::

    libero            the reference experiment ``cosmos_predict2_2b_480p_libero`` (2B DiT, bf16)
    robocasa          ``cosmos_predict2_2b_480p_robocasa_50_demos_per_task`` (11 latent frames)
    aloha             ``cosmos_predict2_2b_480p_aloha_185_demos_4_tasks_mixture...`` (11 latent frames)
    demo              embedded default: tiny model, generated dataset, trains on a laptop CPU
    tiny              smallest model and data, used by the tests
    bench             fixed mid-size model for benchmarks (see docs/benchmarks.md)
    lerobot           your LeRobot dataset (v3.0/v2.1), LIBERO-like layout (primary + wrist camera);
                      lerobot_aloha (primary + two wrists), lerobot_robocasa (two primaries + wrist)

    modifiers:  tiny (shrink any base to test size; its VAE is random: test sizes have no weights),
                fp32 (float32 compute),
                synthetic (fake data source with the model's input spec, no dataset files needed;
                  the weights are untouched: libero,synthetic still loads the pretrained VAE/DiT),
                random_weights (random DiT and VAE, no weight files needed: benchmarks),
                lerobot (demo only: train from the demo dataset's LeRobot copy)

The production bases (and lerobot*) load the pretrained Wan2.1 VAE and Cosmos-Predict2 DiT from
``$BASE_CHECKPOINTS_DIR/Cosmos-Predict2-2B-Video2World``; a random VAE is only used when
``model.tokenizer.random_init=True`` (demo, tiny, bench, the tiny and random_weights modifiers), and
the trainer says so at start.

Sections follow the reference trainer: job, trainer, model (net, tokenizer, sde, sampler, ema),
optimizer, scheduler, dataloader_train, dataloader_val, checkpoint, parallel.
"""

from __future__ import annotations

import math

from ml_collections import config_dict

from cosmos_policy_jax.layouts import full_layout

LEROBOT_BASES = ("lerobot", "lerobot_aloha", "lerobot_robocasa")
BASES = ("libero", "robocasa", "aloha", "demo", "tiny", "bench", *LEROBOT_BASES)
MODIFIERS = ("tiny", "fp32", "synthetic", "lerobot", "random_weights")

# Where the pretrained Cosmos-Predict2-2B files live (the reference's defaults); a missing one is
# reported with its download command (config_lib.PRETRAINED_REPO).
PREDICT2_DIR = "${BASE_CHECKPOINTS_DIR}/Cosmos-Predict2-2B-Video2World"

# Megatron layout on `tensor` (column-parallel q/k/v/mlp-in, row-parallel out/mlp-out), parameters and
# optimizer state on `fsdp`, batch on (data, fsdp). Logical names are defined in
# cosmos_policy_jax/parallel/rules.py.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    # AdaLN up-projections are 3D wide: shard them on both model axes (the per-frame modulation
    # vectors they produce are tiny, so gathering them is cheap).
    ("modulation", ("tensor", "fsdp")),
    ("context", "fsdp"),
    ("patch", None),
    ("adaln_lora", None),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("length", None),
    ("frames", None),
    ("conv_in", None),
    ("conv_out", None),
    ("kernel", None),
)


def parse_arg(arg: str | None) -> tuple[str, set[str]]:
    """Split ``"libero,tiny"`` into the base name and the set of modifiers; unknown names raise."""
    parts = [p.strip() for p in (arg or "demo").split(",") if p.strip()]
    if not parts:
        parts = ["demo"]
    base, mods = parts[0], set(parts[1:])
    if base not in BASES:
        raise ValueError(f"unknown config arg {base!r}; choose one of {', '.join(BASES)}")
    bad = mods - set(MODIFIERS)
    if bad:
        raise ValueError(f"unknown config modifier(s) {sorted(bad)}; choose from {', '.join(MODIFIERS)}")
    return base, mods


def _net_2b() -> config_dict.ConfigDict:
    """MinimalV1LVGDiT at 2B; docs/reference.md."""
    return config_dict.ConfigDict(
        dict(
            max_img_h=240,
            max_img_w=240,
            max_frames=128,
            in_channels=16,
            out_channels=16,
            patch_spatial=2,
            patch_temporal=1,
            concat_padding_mask=True,
            model_channels=2048,
            num_blocks=28,
            num_heads=16,
            mlp_ratio=4.0,
            crossattn_emb_channels=1024,
            adaln_lora_dim=256,
            rope_h_extrapolation_ratio=3.0,
            rope_w_extrapolation_ratio=3.0,
            rope_t_extrapolation_ratio=1.0,
            timestep_scale=1.0,
            # JAX-side execution choices.
            dtype="bfloat16",  # compute dtype; parameters stay float32 (optimizer master weights)
            param_dtype="float32",
            attention_impl="auto",  # auto | xla | cudnn
            # none | full | attention_saveable | dots_saveable | dots_with_no_batch_dims_saveable.
            # attention_saveable (attention outputs kept, the rest recomputed, like the reference's
            # selective checkpointing) with tokenizer.batch_steps=6 plans 46 GiB per device for
            # batch 30 at fsdp=8; dots_saveable does not fit 141 GB (docs/benchmarks.md).
            remat_policy="attention_saveable",
            scan_layers=True,
        )
    )


def _tokenizer_wan21() -> config_dict.ConfigDict:
    """Wan2.1 VAE of Cosmos-Predict2-2B."""
    return config_dict.ConfigDict(
        dict(
            dim=96,
            z_dim=16,
            dim_mult=(1, 2, 4, 4),
            num_res_blocks=2,
            temperal_downsample=(False, True, True),
            dtype="bfloat16",
            # `tokenizer.pth` of Cosmos-Predict2-2B (the reference's default VAE). Required unless
            # random_init=True (demo/tests/benchmarks), which needs load_path="".
            load_path=f"{PREDICT2_DIR}/tokenizer/tokenizer.pth",
            random_init=False,
            # Must match dim_mult / temperal_downsample (checked): what the data and policy code assume.
            spatial_compression=8,
            temporal_compression=4,
            # 3x3x3 kernel: auto = XLA's conv3d on GPU and with oneDNN on CPU, else time-shifted 2D convs.
            conv_impl="auto",
            # Sequential passes over the batch in encode/decode: bounds activation memory (the
            # 30-clip 224 px encode alone needs ~25 GiB more per device in one pass).
            batch_steps=6,
        )
    )


def _layout(name: str) -> config_dict.ConfigDict:
    return config_dict.ConfigDict(full_layout(name))


def _dataset(kind: str) -> config_dict.ConfigDict:
    """Dataset section shared by LIBERO/RoboCasa/ALOHA/demo; per-benchmark values in docs/reference.md."""
    return config_dict.ConfigDict(
        dict(
            kind=kind,  # libero | robocasa | aloha | demo | synthetic
            data_dir="",
            rollout_data_dir="",
            t5_text_embeddings_path="",
            chunk_size=16,
            action_dim=7,
            proprio_dim=9,
            final_image_size=224,
            use_image_aug=True,
            use_stronger_image_aug=True,
            use_wrist_images=True,
            use_third_person_images=True,
            use_proprio=True,
            normalize_proprio=True,
            normalize_actions=True,
            num_duplicates_per_image=4,
            demonstration_sampling_prob=0.5,
            success_rollout_sampling_prob=0.5,
            treat_success_rollouts_as_demos=False,
            treat_demos_as_success_rollouts=False,
            return_value_function_returns=True,
            gamma=0.99,
            split="",  # ALOHA: "train" / "val" episode split; others ignore it
            use_jpeg_for_rollouts=False,  # ALOHA: read rollouts' *_images_jpeg datasets (the reference's flag)
            text_len=512,
            text_dim=1024,
            # demo dataset generator (kind=demo): episodes generated on first use.
            demo_num_episodes=400,
            demo_num_rollouts=200,
            demo_seed=0,
            demo_object_layout="random",  # random | fixed (see demo/sim.py)
            demo_format="hdf5",  # hdf5 | lerobot: the files the demo episodes are read from
        )
    )


def _base_libero() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.job = config_dict.ConfigDict(
        dict(project="cosmos_policy", group="cosmos_v2_finetune", name="cosmos_predict2_2b_480p_libero", path_local="")
    )
    c.trainer = config_dict.ConfigDict(
        dict(
            max_iter=1_000_000,
            logging_iter=5,
            validation_iter=100,
            run_validation=False,
            max_val_iter=4,
            grad_accum_iter=1,
            seed=0,
            callbacks=("metrics_logger", "progress", "device_monitor"),
            use_wandb=False,
            # Dynamic loss scaling (only meaningful for fp16 compute; bf16 needs none, as in the reference).
            loss_scaling=False,
            init_loss_scale=2.0**15,
            loss_scale_growth_interval=2000,
            exit_code_on_preemption=143,
            # Peak TFLOP/s per device for the logged MFU; 0: looked up from the device kind.
            peak_tflops=0.0,
            # Restart with shape- or data-changing keys that differ from the job's config.yaml.
            allow_config_drift=False,
        )
    )
    m = config_dict.ConfigDict()
    m.state_t = 9
    m.state_ch = 16
    m.num_conditional_frames = 4
    m.sigma_conditional = 0.0
    m.conditioning_strategy = "frame_replace"
    m.denoise_replace_gt_frames = True
    m.scaling = "rectified_flow"
    m.sigma_data = 1.0
    m.loss_scale = 10.0
    m.adjust_video_noise = True
    m.rectified_flow_t_scaling_factor = 1.0
    m.precision = "bfloat16"  # batch floats and the net in bf16 as the reference; float32 for parity
    m.high_sigma_strategy = "none"
    m.mask_loss_for_action_future_state_prediction = False
    m.mask_value_prediction_loss_for_policy_prediction = False
    m.mask_current_state_action_for_value_prediction = False
    m.mask_future_state_for_qvalue_prediction = False
    m.action_loss_multiplier = 1
    m.text_dropout_rate = 0.0
    m.latent_layout = _layout("libero")
    m.net = _net_2b()
    m.tokenizer = _tokenizer_wan21()
    m.sde = config_dict.ConfigDict(
        dict(
            hybrid=True,
            p_mean=math.log(4.0),
            p_std=1.2,
            sigma_max=200.0,
            sigma_min=0.01,
            uniform_lower=1.0,
            uniform_upper=85.0,
            lognormal_prob=0.7,
        )
    )
    # Inference twin of the experiment (`..._inference_only`): sigma range 80..4, 5 steps, "2ab".
    m.sampler = config_dict.ConfigDict(
        dict(num_steps=5, sigma_max=80.0, sigma_min=4.0, rho=7.0, solver="2ab", seed=0, num_open_loop_steps=16)
    )
    m.ema = config_dict.ConfigDict(dict(enabled=False, rate=0.1))
    c.model = m
    c.optimizer = config_dict.ConfigDict(
        dict(name="adamw", lr=1e-4, weight_decay=0.1, b1=0.9, b2=0.99, eps=1e-8, clip_norm=1.0)
    )
    c.scheduler = config_dict.ConfigDict(
        dict(
            name="lambdalinear",
            cycle_lengths=(30000, 100_000_000_000_000),
            warm_up_steps=(1000, 0),
            f_start=(1e-6, 0.06),
            f_max=(1.0, 0.06),
            f_min=(0.3, 0.06),
        )
    )
    ds = _dataset("libero")
    ds.data_dir = "${BASE_DATASETS_DIR}/LIBERO-Cosmos-Policy/success_only"
    ds.rollout_data_dir = "${BASE_DATASETS_DIR}/LIBERO-Cosmos-Policy/all_episodes"
    ds.t5_text_embeddings_path = "${BASE_DATASETS_DIR}/LIBERO-Cosmos-Policy/success_only/t5_embeddings.pkl"
    c.dataloader_train = config_dict.ConfigDict(
        dict(
            dataset=ds,
            batch_size=30,  # per data-parallel device, as the reference's per-GPU batch
            global_batch_size=config_dict.placeholder(int),  # optional: overrides batch_size x dp devices
            num_workers=12,
            prefetch_buffer_size=2,
            shuffle=True,
            seed=0,
            drop_last=True,
            timeout=600.0,
        )
    )
    val = ds.copy_and_resolve_references()
    val.use_image_aug = False
    c.dataloader_val = config_dict.ConfigDict(
        dict(
            dataset=val,
            batch_size=30,
            global_batch_size=config_dict.placeholder(int),
            num_workers=2,
            prefetch_buffer_size=2,
            shuffle=False,
            seed=0,
            drop_last=True,
            timeout=600.0,
        )
    )
    c.checkpoint = config_dict.ConfigDict(
        dict(
            save_iter=1000,
            # Cosmos-Predict2-2B base weights (`model-480p-16fps.pt`). Unlike the reference trainer
            # (docs/reference.md), a `.pt` load_path is loaded, and the log says so.
            load_path=f"{PREDICT2_DIR}/model-480p-16fps.pt",
            load_ema_to_reg=True,
            resume_from_checkpoint="",
            keep_last=3,
            async_save=True,
            export_on_end=True,  # write {job}/export/net.safetensors when training ends
        )
    )
    c.parallel = config_dict.ConfigDict(dict(data=1, fsdp=-1, tensor=1, logical_axis_rules=DEFAULT_LOGICAL_AXIS_RULES))
    return c


def _set_layout(c: config_dict.ConfigDict, name: str, state_t: int, num_cond: int) -> None:
    c.model.latent_layout = _layout(name)
    c.model.state_t = state_t
    c.model.num_conditional_frames = num_cond


def _robocasa() -> config_dict.ConfigDict:
    c = _base_libero()
    c.job.name = "cosmos_predict2_2b_480p_robocasa_50_demos_per_task"
    _set_layout(c, "robocasa", state_t=11, num_cond=5)
    ds = c.dataloader_train.dataset
    ds.kind = "robocasa"
    ds.chunk_size = 32
    ds.data_dir = "${BASE_DATASETS_DIR}/RoboCasa-Cosmos-Policy/success_only"
    ds.rollout_data_dir = "${BASE_DATASETS_DIR}/RoboCasa-Cosmos-Policy/all_episodes"
    ds.t5_text_embeddings_path = "${BASE_DATASETS_DIR}/RoboCasa-Cosmos-Policy/success_only/t5_embeddings.pkl"
    c.dataloader_train.batch_size = 25
    c.dataloader_train.num_workers = 8
    c.dataloader_val.dataset = ds.copy_and_resolve_references()
    c.dataloader_val.dataset.use_image_aug = False
    c.dataloader_val.batch_size = 25
    # The reference's RoboCasa evaluation executes 16 of the 32 predicted actions per query.
    c.model.sampler.num_open_loop_steps = 16
    return c


def _aloha() -> config_dict.ConfigDict:
    c = _base_libero()
    c.job.name = (
        "cosmos_predict2_2b_480p_aloha_185_demos_4_tasks_mixture"
        "_foldshirt15_candiesinbowl45_candyinbag45_eggplantchickenonplate80"
    )
    _set_layout(c, "aloha", state_t=11, num_cond=5)
    ds = c.dataloader_train.dataset
    ds.kind = "aloha"
    ds.chunk_size = 50
    ds.action_dim = 14
    ds.proprio_dim = 14
    ds.gamma = 0.998
    ds.treat_demos_as_success_rollouts = True
    ds.data_dir = "${BASE_DATASETS_DIR}/ALOHA-Cosmos-Policy/preprocessed"
    ds.rollout_data_dir = ""
    ds.t5_text_embeddings_path = "${BASE_DATASETS_DIR}/ALOHA-Cosmos-Policy/preprocessed/t5_embeddings.pkl"
    c.dataloader_train.batch_size = 25
    ds.split = "train"
    c.dataloader_val.dataset = ds.copy_and_resolve_references()
    c.dataloader_val.dataset.use_image_aug = False
    c.dataloader_val.dataset.split = "val"
    c.dataloader_val.batch_size = 25
    c.scheduler.cycle_lengths = (20000, 100_000_000_000_000)
    c.scheduler.warm_up_steps = (2000, 0)
    c.model.sampler.num_open_loop_steps = 50
    return c


def _shrink_to_tiny(c: config_dict.ConfigDict) -> None:
    """Test-size model and data, keeping the layout and every flag of the base."""
    n = c.model.net
    n.model_channels = 128
    n.num_blocks = 2
    n.num_heads = 4
    n.adaln_lora_dim = 32
    n.crossattn_emb_channels = 64
    n.remat_policy = "none"
    t = c.model.tokenizer
    t.dim = 8
    _random_weights(c)
    t.batch_steps = 1  # small activations: one pass is fastest
    for dl in (c.dataloader_train, c.dataloader_val):
        dl.dataset.final_image_size = 32
        dl.dataset.text_len = 16
        dl.dataset.text_dim = 64
        dl.batch_size = 2
        dl.num_workers = 0
    c.checkpoint.load_path = ""
    c.checkpoint.save_iter = 10
    c.trainer.logging_iter = 1
    c.trainer.max_iter = 4
    c.scheduler.warm_up_steps = (2, 0)
    c.scheduler.cycle_lengths = (100, 100_000_000_000_000)


def _random_weights(c: config_dict.ConfigDict) -> None:
    """Random DiT and VAE: no weight files needed (tests, demo, benchmarks); announced at start."""
    c.model.tokenizer.load_path = ""
    c.model.tokenizer.random_init = True
    c.checkpoint.load_path = ""


def _use_fp32(c: config_dict.ConfigDict) -> None:
    c.model.precision = "float32"
    c.model.net.dtype = "float32"
    c.model.tokenizer.dtype = "float32"


def _demo() -> config_dict.ConfigDict:
    """Embedded default: a small policy on a generated reach-the-coloured-target task, CPU friendly."""
    c = _base_libero()
    c.job.group = "demo"
    c.job.name = "cosmos_policy_demo"
    _shrink_to_tiny(c)
    _use_fp32(c)
    n = c.model.net
    n.model_channels = 128
    n.num_blocks = 2
    n.num_heads = 4
    for dl in (c.dataloader_train, c.dataloader_val):
        ds = dl.dataset
        ds.kind = "demo"
        ds.data_dir = "${COSMOS_POLICY_DATA_ROOT}/demo_reach_fixed/success_only"
        ds.rollout_data_dir = "${COSMOS_POLICY_DATA_ROOT}/demo_reach_fixed/all_episodes"
        ds.t5_text_embeddings_path = "${COSMOS_POLICY_DATA_ROOT}/demo_reach_fixed/success_only/t5_embeddings.pkl"
        # Colour-specific home positions: a random frozen tiny VAE does not preserve where a target is
        # in a 32 px image, so the demo keeps the task solvable from instruction + proprio.
        ds.demo_object_layout = "fixed"
        ds.chunk_size = 8
        ds.action_dim = 2
        ds.proprio_dim = 2
        ds.final_image_size = 32
        ds.use_image_aug = False
        ds.gamma = 0.99
        dl.batch_size = 8
        dl.num_workers = 0
    c.dataloader_val.batch_size = 8
    c.trainer.max_iter = 1500
    c.trainer.logging_iter = 25
    c.trainer.run_validation = True
    c.trainer.validation_iter = 500
    c.trainer.max_val_iter = 2
    # Measured on a 2-core CPU: lr 1e-3 reaches action L1 ~0.14 in 1500 steps (3e-4 plateaus near 0.5).
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 0.0
    c.scheduler.warm_up_steps = (50, 0)
    c.scheduler.cycle_lengths = (1500, 100_000_000_000_000)
    c.scheduler.f_min = (0.3, 0.3)
    c.scheduler.f_start = (1e-3, 0.3)
    c.scheduler.f_max = (1.0, 0.3)
    c.checkpoint.save_iter = 500
    c.model.sampler.num_open_loop_steps = 8
    c.parallel.fsdp = 1
    c.parallel.data = -1
    return c


def _tiny() -> config_dict.ConfigDict:
    c = _base_libero()
    c.job.group = "tests"
    c.job.name = "cosmos_policy_tiny"
    _shrink_to_tiny(c)
    _use_fp32(c)
    for dl in (c.dataloader_train, c.dataloader_val):
        dl.dataset.kind = "synthetic"
        dl.dataset.chunk_size = 16
    c.parallel.fsdp = 1
    c.parallel.data = -1
    return c


def _bench() -> config_dict.ConfigDict:
    """Fixed benchmark size (issue: benchmarks). Figures in docs/benchmarks.md use exactly this."""
    c = _base_libero()
    c.job.group = "bench"
    c.job.name = "cosmos_policy_bench"
    _use_fp32(c)
    n = c.model.net
    n.num_blocks = 4
    n.model_channels = 512
    n.num_heads = 8
    n.adaln_lora_dim = 128
    n.crossattn_emb_channels = 1024
    n.remat_policy = "none"
    c.model.tokenizer.dim = 96
    c.model.tokenizer.num_res_blocks = 2
    _random_weights(c)
    c.model.tokenizer.batch_steps = 1  # one pass over the batch of 2, as the figures were measured
    for dl in (c.dataloader_train, c.dataloader_val):
        dl.dataset.kind = "synthetic"
        dl.dataset.final_image_size = 64
        dl.dataset.text_len = 512
        dl.dataset.text_dim = 1024
        dl.batch_size = 2
        dl.num_workers = 0
    c.checkpoint.load_path = ""
    c.parallel.fsdp = 1
    c.parallel.data = -1
    return c


def _lerobot(layout: str = "libero") -> config_dict.ConfigDict:
    """Your own LeRobot dataset: the user maps its features onto the policy's slots (README section).

    ``layout`` (from the base name) fixes which cameras exist: libero = primary + wrist, aloha =
    primary + wrist + wrist2, robocasa = primary + primary2 + wrist. The model is the 2B one.
    """
    c = _aloha() if layout == "aloha" else _robocasa() if layout == "robocasa" else _base_libero()
    c.job.group = "lerobot"
    c.job.name = f"cosmos_policy_lerobot_{layout}"
    cams = dict(primary="observation.images.image", wrist="observation.images.wrist_image")
    cams.update(wrist2="", primary2="")
    if layout == "aloha":
        cams.update(primary="observation.images.cam_high", wrist="observation.images.cam_left_wrist")
        cams["wrist2"] = "observation.images.cam_right_wrist"
    if layout == "robocasa":
        cams["primary2"] = "observation.images.image2"
    for dl in (c.dataloader_train, c.dataloader_val):
        ds = dl.dataset
        ds.kind = "lerobot"
        ds.data_dir = "${LEROBOT_DATASET}"  # the dataset root (the folder holding meta/info.json)
        ds.rollout_data_dir = ""  # optional second LeRobot dataset of policy rollouts (needs success_key)
        ds.t5_text_embeddings_path = "${LEROBOT_DATASET}/t5_embeddings.pkl"
        ds.split = ""
        ds.treat_demos_as_success_rollouts = False
        # Feature names as in meta/info.json; success_key: per-frame flag, false on the last frame = failure.
        ds.lerobot = config_dict.ConfigDict(
            dict(cameras=cams, state_key="observation.state", action_key="action", success_key="")
        )
    c.dataloader_val.dataset.use_image_aug = False
    return c


def _demo_from_lerobot(c: config_dict.ConfigDict) -> None:
    """Modifier ``lerobot`` on ``demo``: the same generated episodes, written by ``lerobot``, read back."""
    if c.dataloader_train.dataset.kind != "demo":
        raise ValueError("config modifier 'lerobot' applies to the demo base only (use base 'lerobot' for your data)")
    c.job.name = "cosmos_policy_demo_lerobot"
    for dl in (c.dataloader_train, c.dataloader_val):
        dl.dataset.demo_format = "lerobot"


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    base, mods = parse_arg(arg)
    c = {
        "lerobot": _lerobot,
        "lerobot_aloha": lambda: _lerobot("aloha"),
        "lerobot_robocasa": lambda: _lerobot("robocasa"),
        "libero": _base_libero,
        "robocasa": _robocasa,
        "aloha": _aloha,
        "demo": _demo,
        "tiny": _tiny,
        "bench": _bench,
    }[base]()
    if "tiny" in mods:
        _shrink_to_tiny(c)
    if "fp32" in mods:
        _use_fp32(c)
    if "lerobot" in mods:
        _demo_from_lerobot(c)
    if "synthetic" in mods:
        for dl in (c.dataloader_train, c.dataloader_val):
            dl.dataset.kind = "synthetic"
    if "random_weights" in mods:
        _random_weights(c)
    c.config_arg = ",".join([base, *sorted(mods)])
    return c
