"""Random models: complete model directories with random weights in the official layouts.

Owns `tiny_config` (the `--tiny` shrink: same family traits, small dims, Mimi untouched)
and `make_random_model`, which writes config.toml, the LM weights (MLX or PyTorch layout,
bf16/q8/q4), a Mimi checkpoint in the official key layout and a SentencePiece tokenizer
trained on the fly with the right vocabulary size. Tests and benchmarks use these because
the real weights cannot be downloaded on the build machines.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .codec import MIMI_FILE
from .config import LmConfig
from .errors import MoshiMacError
from .models.lm import Lm

TINY_TEXT_VOCAB = 1000


TINY_WIDTH = 64  # the q8 group size: every tiny linear and embedding is quantizable


def _tiny_mlp(t, d_model: int) -> None:
    """Shrink `t`'s feed-forward with `t.d_model`, keeping the real hidden/d_model ratio
    and a hidden width that is a multiple of TINY_WIDTH (so `linear_out` quantizes, as it
    does at the real widths)."""
    hidden = max(1, round(t.mlp_hidden / t.d_model * d_model / TINY_WIDTH)) * TINY_WIDTH
    t.d_model = d_model
    t.dim_feedforward = hidden if t.gating is None else 3 * hidden // 2
    assert t.mlp_hidden == hidden, (t.mlp_hidden, hidden)


def tiny_config(cfg: LmConfig, text_vocab: int = TINY_TEXT_VOCAB) -> LmConfig:
    """Shrink the LM, keeping every trait that matters for parity: GQA ratio, RoPE
    layout, schedule, depformer norm, conditioner, delays and the codebook counts (Mimi
    and its 2048-entry codebooks stay real). Every width is a multiple of 64, so a tiny
    q8 (group 64) or q4 (group 32) model quantizes exactly the modules the official
    files quantize, the depformer included (the LUT conditioner never)."""
    cfg = copy.deepcopy(cfg)
    t = cfg.transformer
    _tiny_mlp(t, TINY_WIDTH)
    t.num_heads, t.num_layers = max(4, t.kv_repeat), 2
    t.context = 32
    if cfg.depformer is not None:
        d = cfg.depformer.transformer
        _tiny_mlp(d, TINY_WIDTH)
        d.num_heads, d.num_layers = max(2, d.kv_repeat), 2
        if cfg.depformer.low_rank_embeddings:
            cfg.depformer.low_rank_embeddings = 16
    for c in cfg.conditioners.values():
        c.dim = min(c.dim, 16)
    cfg.text_in_vocab_size = text_vocab + 1
    cfg.text_out_vocab_size = text_vocab
    return cfg.validate("tiny config")


def random_lm_tensors(cfg: LmConfig, seed: int = 0, dtype=mx.bfloat16) -> dict[str, mx.array]:
    """Random MLX-layout tensors: normal init scaled by 1/sqrt(fan_in), norms at 1."""
    mx.random.seed(seed)
    model = Lm(cfg)
    out = {}
    for name, p in tree_flatten(model.parameters()):
        if name.endswith(("norm1.weight", "norm2.weight", "out_norm.weight")) or ".scale" in name[-6:]:
            v = mx.ones(p.shape)
        elif name.endswith(".bias"):
            v = mx.zeros(p.shape)
        else:
            fan_in = p.shape[-1] if p.ndim > 1 else p.shape[0]
            v = mx.random.normal(p.shape) * (fan_in ** -0.5)
        keep_f32 = name.startswith("condition_provider.")
        out[name] = v.astype(mx.float32 if keep_f32 else dtype)
    return out


LM_FILE = {"bf16": "model.safetensors", "q8": "model.q8.safetensors", "q4": "model.q4.safetensors"}


@dataclass
class RandomModel:
    folder: Path
    config: LmConfig
    weights: Path
    mimi: Path
    tokenizer: Path


def make_random_model(config: LmConfig, out: str | Path, *, tiny: bool = False,
                      quantize: str | None = None, layout: str = "mlx", seed: int = 0,
                      force: bool = False, header: str = "",
                      mimi: str | Path | None = None) -> RandomModel:
    """Write a complete random model directory (see the module docstring). The random
    Mimi of the seed is built once in the user's cache folder and linked in (see
    `mimi_random.link_random_mimi`); `mimi` uses an existing checkpoint instead
    (hard-linked when possible)."""
    from .mimi_random import link_random_mimi
    from .modeldir import link_or_copy
    from .tokenizer import train_random_tokenizer
    from .safetensors_io import save_safetensors_streamed
    from .weights import QUANT_PRESETS, mlx_to_pytorch, quantization_plan, quantize_tensors

    if layout not in ("mlx", "pytorch"):
        raise MoshiMacError(f"--layout must be mlx or pytorch, got {layout!r}")
    if quantize is not None and quantize not in QUANT_PRESETS:
        raise MoshiMacError(f"--quantize must be q8 or q4, got {quantize!r}")
    if quantize and layout == "pytorch":
        raise MoshiMacError("official PyTorch checkpoints are bf16: use --layout mlx with --quantize")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise MoshiMacError(f"{out} exists and is not empty; pass --force to replace it")
    cfg = tiny_config(config) if tiny else copy.deepcopy(config)
    # Build in a sibling temp folder, then move into place: no half-written model dirs.
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work.chmod(0o755)
    try:
        (work / "config.toml").write_text(
            (header or f"# Random {'tiny ' if tiny else ''}model made by moshi-mac (seed {seed}).\n")
            + cfg.to_toml())
        tensors = random_lm_tensors(cfg, seed=seed)
        if layout == "pytorch":
            tensors = mlx_to_pytorch(cfg, tensors)
        if quantize:
            bits, group = QUANT_PRESETS[quantize]
            tensors = quantize_tensors(tensors, quantization_plan(Lm(cfg), bits, group))
        weights = work / LM_FILE[quantize or "bf16"]
        save_safetensors_streamed(weights, tensors, {"format": "pt" if layout == "pytorch" else "mlx"})
        if mimi is None:
            link_random_mimi(work / MIMI_FILE, seed=seed)
        else:
            link_or_copy(mimi, work / MIMI_FILE)
        tok = train_random_tokenizer(work / f"tokenizer_spm_{cfg.text_out_vocab_size}",
                                     cfg.text_out_vocab_size, seed=seed)
        for extra in work.glob("*.vocab"):  # SentencePiece's human-readable side file
            extra.unlink()
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return RandomModel(out, cfg, out / weights.name, out / MIMI_FILE, out / Path(tok).name)

