"""Shared helpers for the tests that compare our MLX LM with the official PyTorch `moshi`.

The reference model is built from one of *our* configs: `config.to_json_dict` gives the
`LMModel` keyword arguments, `moshi.models.loaders.get_moshi_lm` builds it, every parameter
(norm weights, biases, layer scales and the conditioner included) is randomized, and the
PyTorch state dict goes through `weights.pytorch_to_mlx` into our `Lm`. So a parity test
also checks the config translation and the weight-name mapping.

Tiny configs keep the traits of the real models (see `random_model.tiny_config`):

- "moshi":   Moshi-7B: 16 codebooks (8 generated), delay 1, interleaved RoPE.
- "hibiki":  Hibiki-1B: delay 2, "description" LUT conditioner (CFG), ff = 4 * d.
- "zero":    Hibiki-Zero: 32 codebooks (16 generated), GQA (kv_repeat 2), concat RoPE,
             depformer weights-per-step schedule, LayerNorm depformer_norm.
- "variant": traits no released model uses but the reference supports: LayerNorm main
             norm, sinusoidal positions (main and depformer), plain GELU MLP (no gating)
             in the main transformer, gelu gating in the depformer, layer scale, biases on
             the output projections, low-rank depformer embeddings, one shared
             depformer input projection (depformer_multi_linear = false).
- "shared":  "variant" with depformer_weights_per_step = false. Teacher forcing only: the
             reference cannot stream it (its depformer has no context, so
             `StreamingMultiheadAttention` refuses to size a KV cache).
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

try:
    import torch
except ImportError:  # the reference tests skip (conftest.require_reference)
    torch = None

from moshi_mac import config as C
from moshi_mac import weights as W
from moshi_mac.models import Lm
from moshi_mac.random_model import tiny_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SOURCES = {"moshi": "moshi-7b", "hibiki": "hibiki-1b", "zero": "hibiki-zero-3b", "variant": "moshi-7b",
           "shared": "moshi-7b"}
NAMES = ("moshi", "hibiki", "zero", "variant")  # the streaming-capable ones


def tiny(name: str, *, text_vocab: int = 200, card: int | None = None, context: int | None = None,
         dims: dict | None = None) -> C.LmConfig:
    """A tiny config of one family (see the module docstring). `card` shrinks the audio
    vocabulary (default: Mimi's real 2048), `context` the temporal transformer's window,
    `dims` overrides {d_model, num_heads, ff, dep_d_model, dep_num_heads, dep_ff} (`ff`:
    the Rust-schema dim_feedforward; for quantization every matrix input dim, MLP hidden
    widths included, must be a multiple of the group size)."""
    cfg = tiny_config(C.load_config(CONFIGS / f"{SOURCES[name]}.toml"), text_vocab=text_vocab)
    t = cfg.transformer
    if name in ("variant", "shared"):
        d = cfg.depformer.transformer
        cfg.moshi_mac.norm_eps = 1e-5
        t.norm = d.norm = "LayerNorm"
        t.positional_embedding = d.positional_embedding = "Sin"
        t.gating = None
        t.dim_feedforward = 3 * t.d_model
        d.gating = "gelu"
        t.layer_scale = d.layer_scale = 0.1
        cfg.moshi_mac.bias_proj = True
        cfg.depformer.low_rank_embeddings = 16
        cfg.moshi_mac.depformer_multi_linear = False
        cfg.moshi_mac.depformer_weights_per_step = name != "shared"
    if dims:
        ratio = t.dim_feedforward / t.d_model
        t.d_model = dims.get("d_model", t.d_model)
        t.num_heads = dims.get("num_heads", t.num_heads)
        t.dim_feedforward = dims.get("ff", int(ratio * t.d_model))
        if cfg.depformer is not None:
            d = cfg.depformer.transformer
            ratio = d.dim_feedforward / d.d_model
            d.d_model = dims.get("dep_d_model", d.d_model)
            d.num_heads = dims.get("dep_num_heads", d.num_heads)
            d.dim_feedforward = dims.get("dep_ff", int(ratio * d.d_model))
    if card is not None:
        cfg.audio_vocab_size = card + 1
    if context is not None:
        t.context = context
    return cfg.validate(f"tiny {name} config")


def reference_kwargs(cfg: C.LmConfig) -> dict:
    """`LMModel` keyword arguments for `cfg` (what `get_moshi_lm` takes as lm_kwargs)."""
    kwargs = C.to_json_dict(cfg)
    kwargs.pop("model_type", None)
    return kwargs


def randomize_(model: torch.nn.Module, seed: int = 0, gain: float = 1.0) -> None:
    """Randomize every parameter, so no weight (norm, bias, scale) hides a mapping bug.

    Matrices: N(0, gain^2 / fan_in). Biases and the conditioner padding: N(0, 0.2^2).
    Norm weights / RMSNorm alphas / layer scales: 1 + N(0, 0.2^2).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith(".bias") or name.endswith("learnt_padding"):
                v = 0.2 * noise
            elif all(n == 1 for n in p.shape[:-1]):  # norms, RMSNorm alpha [1, 1, d], layer scale
                v = 1.0 + 0.2 * noise
            else:
                v = noise * gain / p.shape[-1] ** 0.5
            p.copy_(v.to(p.dtype))


def build_reference(cfg: C.LmConfig, seed: int = 0) -> torch.nn.Module:
    """The PyTorch `LMModel` for `cfg`, fp32, every parameter randomized, in eval mode."""
    from moshi.models import loaders

    torch.manual_seed(seed)
    ref = loaders.get_moshi_lm(None, lm_kwargs=reference_kwargs(cfg), device="cpu",
                               dtype=torch.float32)
    randomize_(ref, seed)
    return ref.eval()


def state_dict_mlx(ref: torch.nn.Module) -> dict[str, mx.array]:
    return {k: mx.array(v.detach().float().numpy()) for k, v in ref.state_dict().items()}


def unmapped_names(cfg: C.LmConfig, ref: torch.nn.Module) -> set[str]:
    """Reference tensors that our PyTorch -> MLX plan does not consume (should be none)."""
    names = set(W.normalize_pytorch_names({k: None for k in ref.state_dict()}))
    return names - {e.name for e in W.pytorch_plan(cfg)}


def export(cfg: C.LmConfig, ref: torch.nn.Module) -> Lm:
    """Our `Lm` with the reference's weights, through `pytorch_to_mlx` (strict load)."""
    model = Lm(cfg)
    model.load_weights(list(W.pytorch_to_mlx(cfg, state_dict_mlx(ref)).items()), strict=True)
    mx.eval(model.parameters())
    return model


def make_pair(cfg: C.LmConfig, seed: int = 0) -> tuple[torch.nn.Module, Lm]:
    ref = build_reference(cfg, seed)
    return ref, export(cfg, ref)


def condition_tensors(ref: torch.nn.Module, rows: list[dict[str, str]] | None):
    """The reference's prepared condition tensors for a batch of label dicts."""
    if not rows:
        return None
    from moshi.conditioners import ConditionAttributes

    attrs = [ConditionAttributes(text=dict(r), tensor={}) for r in rows]
    return ref.condition_provider.prepare_and_provide(attrs)


def random_codes(cfg: C.LmConfig, batch: int, steps: int, seed: int = 0,
                 zero_frac: float = 0.0) -> np.ndarray:
    """Random codes [B, 1 + n_q, T] (text first); `zero_frac` of the entries set to -1."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, cfg.card, size=(batch, 1 + cfg.audio_codebooks, steps))
    codes[:, 0] = rng.integers(0, cfg.text_out_vocab_size, size=(batch, steps))
    if zero_frac > 0:
        codes[rng.random(codes.shape) < zero_frac] = -1
    return codes.astype(np.int64)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().numpy() if x.is_floating_point() else x.detach().numpy()
    return np.array(x)
