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


def dit_forward_flops(net_cfg, shape: DiTShape) -> float:
    """Forward FLOPs of MinimalV1LVGDiT for one sample (video mode)."""
    d = net_cfg.model_channels
    p = net_cfg.patch_spatial
    pt = net_cfg.patch_temporal
    t = shape.latent_t // pt
    n = t * (shape.latent_h // p) * (shape.latent_w // p)
    in_ch = net_cfg.in_channels + 1 + (1 if net_cfg.concat_padding_mask else 0)
    mlp = int(d * net_cfg.mlp_ratio)
    r = net_cfg.adaln_lora_dim
    lc, cc = shape.text_len, net_cfg.crossattn_emb_channels
    flops = 2.0 * n * in_ch * p * p * pt * d  # patch embedding
    flops += t * (2.0 * d * d + 2.0 * d * 3 * d)  # timestep MLP (per latent frame)
    per_block = 0.0
    per_block += 2.0 * n * d * 3 * d + 2.0 * n * d * d  # self-attn q/k/v + out
    per_block += 4.0 * n * n * d  # self-attn scores + values
    per_block += 2.0 * n * d * d + 2.0 * lc * cc * 2 * d + 2.0 * n * d * d  # cross-attn q, k/v, out
    per_block += 4.0 * n * lc * d  # cross-attn scores + values
    per_block += 2.0 * 2 * n * d * mlp  # MLP
    per_block += 3 * t * (2.0 * d * r + 2.0 * r * 3 * d)  # three AdaLN-LoRA branches per frame
    flops += net_cfg.num_blocks * per_block
    flops += t * (2.0 * d * r + 2.0 * r * 2 * d) + 2.0 * n * d * p * p * pt * net_cfg.out_channels  # final layer
    return flops


def _dit_data_input_flops(net_cfg, shape: DiTShape) -> float:
    """Forward FLOPs of the matmuls whose input is data (no input gradient in the backward)."""
    d = net_cfg.model_channels
    p, pt = net_cfg.patch_spatial, net_cfg.patch_temporal
    t = shape.latent_t // pt
    n = t * (shape.latent_h // p) * (shape.latent_w // p)
    in_ch = net_cfg.in_channels + 1 + (1 if net_cfg.concat_padding_mask else 0)
    flops = 2.0 * n * in_ch * p * p * pt * d  # patch embedding
    flops += t * 2.0 * d * d  # first timestep layer
    flops += net_cfg.num_blocks * 2.0 * shape.text_len * net_cfg.crossattn_emb_channels * 2 * d  # cross-attn k/v
    return flops


def dit_train_flops(net_cfg, shape: DiTShape) -> float:
    """Forward + backward FLOPs of the DiT for one sample (no remat recomputation)."""
    forward = dit_forward_flops(net_cfg, shape)
    return 3.0 * forward - _dit_data_input_flops(net_cfg, shape)


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
