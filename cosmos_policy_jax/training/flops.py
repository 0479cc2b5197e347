"""Analytic model FLOPs (multiply-add = 2 FLOPs) for throughput and MFU figures.

Counted: every matmul/convolution and the attention score/value products. Not counted:
elementwise ops, norms, softmax (a few percent at most). Training FLOPs of the DiT are the forward
plus the backward, without remat recomputation (model FLOPs, as MFU conventions use). The backward
of a matmul is 2x its forward (weight and input gradients) except where the input is data that
needs no gradient: the patch embedding (noisy latent), the cross-attention k/v projections (T5
embedding) and the first timestep layer (sinusoid); these get the weight gradient only. At the
``bench`` size this is ~12% below the usual 3x forward. The frozen VAE encode is forward only and
reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiTShape:
    latent_t: int
    latent_h: int
    latent_w: int
    text_len: int


def _dit_forward_terms(net_cfg, shape: DiTShape) -> tuple[float, float]:
    """(forward FLOPs of one sample, the part of them in matmuls whose input is data).

    Data-fed matmuls get no input gradient in the backward: the patch embedding (noisy latent), the
    first timestep layer (sinusoid) and the cross-attention k/v projections (T5 embedding).
    """
    d = net_cfg.model_channels
    p = net_cfg.patch_spatial
    pt = net_cfg.patch_temporal
    t = shape.latent_t // pt
    n = t * (shape.latent_h // p) * (shape.latent_w // p)
    in_ch = net_cfg.in_channels + 1 + (1 if net_cfg.concat_padding_mask else 0)
    mlp = int(d * net_cfg.mlp_ratio)
    r = net_cfg.adaln_lora_dim
    lc, cc = shape.text_len, net_cfg.crossattn_emb_channels
    patch_embed = 2.0 * n * in_ch * p * p * pt * d
    timestep_first = t * 2.0 * d * d
    cross_kv = 2.0 * lc * cc * 2 * d
    flops = patch_embed + timestep_first + t * 2.0 * d * 3 * d  # timestep MLP (per latent frame)
    per_block = 0.0
    per_block += 2.0 * n * d * 3 * d + 2.0 * n * d * d  # self-attn q/k/v + out
    per_block += 4.0 * n * n * d  # self-attn scores + values
    per_block += 2.0 * n * d * d + cross_kv + 2.0 * n * d * d  # cross-attn q, k/v, out
    per_block += 4.0 * n * lc * d  # cross-attn scores + values
    per_block += 2.0 * 2 * n * d * mlp  # MLP
    per_block += 3 * t * (2.0 * d * r + 2.0 * r * 3 * d)  # three AdaLN-LoRA branches per frame
    flops += net_cfg.num_blocks * per_block
    flops += t * (2.0 * d * r + 2.0 * r * 2 * d) + 2.0 * n * d * p * p * pt * net_cfg.out_channels  # final layer
    return flops, patch_embed + timestep_first + net_cfg.num_blocks * cross_kv


def dit_forward_flops(net_cfg, shape: DiTShape) -> float:
    """Forward FLOPs of MinimalV1LVGDiT for one sample (video mode)."""
    return _dit_forward_terms(net_cfg, shape)[0]


def dit_train_flops(net_cfg, shape: DiTShape) -> float:
    """Forward + backward FLOPs of the DiT for one sample (no remat recomputation)."""
    forward, data_fed = _dit_forward_terms(net_cfg, shape)
    return 3.0 * forward - data_fed


def _conv(cin: int, cout: int, taps: int, outputs: int) -> float:
    return 2.0 * cin * cout * taps * outputs


def vae_encode_flops(tok_cfg, frames: int, height: int, width: int) -> float:
    """Forward FLOPs of the Wan2.1 encoder (+ its 1x1 conv) for one video of ``frames`` frames."""
    dim = tok_cfg.dim
    widths = [dim * m for m in tok_cfg.dim_mult]
    t, h, w = frames, height, width
    c = dim
    flops = _conv(3, dim, 27, t * h * w)  # conv1

    def res(cin: int, cout: int) -> float:
        f = _conv(cin, cout, 27, t * h * w) + _conv(cout, cout, 27, t * h * w)
        if cin != cout:
            f += _conv(cin, cout, 1, t * h * w)
        return f

    for level, width_l in enumerate(widths):
        for _ in range(tok_cfg.num_res_blocks):
            flops += res(c, width_l)
            c = width_l
        if level < len(widths) - 1:
            h, w = h // 2, w // 2
            flops += _conv(c, c, 9, t * h * w)  # stride-2 spatial conv
            if tok_cfg.temperal_downsample[level]:
                t_out = 1 + (t - 1) // 2
                flops += _conv(c, c, 3, (t_out - 1) * h * w)  # temporal stride-2 conv (frame 0 bypasses)
                t = t_out
    # middle: res, attention (per frame, single head over h*w tokens), res
    flops += 2 * res(c, c)
    hw = h * w
    flops += t * (_conv(c, 3 * c, 1, hw) + 4.0 * hw * hw * c + _conv(c, c, 1, hw))
    flops += _conv(c, 2 * tok_cfg.z_dim, 27, t * h * w)  # head
    flops += _conv(2 * tok_cfg.z_dim, 2 * tok_cfg.z_dim, 1, t * h * w)  # conv1 (mu, log_var)
    return flops


def policy_sample_shape(config) -> tuple[DiTShape, tuple[int, int, int]]:
    """(DiT latent shape, pixel video (frames, H, W)) of one training sample of ``config``."""
    m = config.model
    ds = config.dataloader_train.dataset
    size = ds.final_image_size
    frames = 1 + 4 * (m.state_t - 1)
    lat = size // 8
    return DiTShape(m.state_t, lat, lat, ds.text_len), (frames, size, size)


def train_flops_per_sample(config) -> dict[str, float]:
    shape, (frames, h, w) = policy_sample_shape(config)
    dit = dit_train_flops(config.model.net, shape)
    vae = vae_encode_flops(config.model.tokenizer, frames, h, w)
    return {"dit_train": dit, "vae_encode": vae, "total": dit + vae}
