"""Random Mimi checkpoints in the official key layout, for tests and CI (no torch).

Owns `mimi_key_shapes` (the name -> shape list of `tokenizer-e351c8d8-checkpoint125.safetensors`,
derived from Mimi's hyper-parameters as in PyTorch `moshi.models.loaders._mimi_config`) and
`write_random_mimi`, which fills those keys with small random weights that keep the codec
numerically tame (unit norms, layer scales 0.01, fan-in scaled convs, non-zero codebooks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codec import CARDINALITY as BINS
from .codec import CODEBOOK_DIM as QUANTIZER_DIM
from .codec import MAX_CODEBOOKS  # 1 semantic (rvq_first) + 31 acoustic (rvq_rest)

# Mimi hyper-parameters (PyTorch `_seanet_kwargs`, `_quantizer_kwargs`, `_transformer_kwargs`;
# n_residual_layers = 1, true_skip, no weight norm in the file).
CHANNELS = 1
DIMENSION = 512
N_FILTERS = 64
RATIOS = (8, 6, 5, 4)
COMPRESS = 2
KERNEL_SIZE = 7
RESIDUAL_KERNEL_SIZE = 3
LAST_KERNEL_SIZE = 3
TRANSFORMER_LAYERS = 8
DIM_FEEDFORWARD = 2048
RESAMPLE_STRIDE = 2  # encoder frame rate 25 Hz -> 12.5 Hz

CODEBOOK_SUFFIX = "._codebook.embedding_sum"

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class _Conv:
    """A (transposed) convolution: key prefix, weight shape, and the fan-in of its init."""

    prefix: str
    shape: tuple[int, ...]
    bias: bool = True
    transposed: bool = False
    fan_in: int = 0  # 0: in_channels * kernel (plain conv)


def _resblock(prefix: str, dim: int) -> list[_Conv]:
    """SEANetResnetBlock (true_skip): Sequential(ELU, conv k3, ELU, conv k1) as `block`."""
    hidden = dim // COMPRESS
    return [_Conv(f"{prefix}.block.1.conv.conv", (hidden, dim, RESIDUAL_KERNEL_SIZE)),
            _Conv(f"{prefix}.block.3.conv.conv", (dim, hidden, 1))]


def _encoder_convs() -> list[_Conv]:
    convs = [_Conv("encoder.model.0.conv.conv", (N_FILTERS, CHANNELS, KERNEL_SIZE))]
    idx, mult = 1, 1
    for ratio in reversed(RATIOS):
        dim = mult * N_FILTERS
        convs += _resblock(f"encoder.model.{idx}", dim)
        # idx + 1 is an ELU; idx + 2 the strided downsampling conv.
        convs.append(_Conv(f"encoder.model.{idx + 2}.conv.conv", (2 * dim, dim, 2 * ratio)))
        idx, mult = idx + 3, mult * 2
    # idx is an ELU, idx + 1 the last conv.
    convs.append(_Conv(f"encoder.model.{idx + 1}.conv.conv",
                       (DIMENSION, mult * N_FILTERS, LAST_KERNEL_SIZE)))
    return convs


def _decoder_convs() -> list[_Conv]:
    mult = 2 ** len(RATIOS)
    convs = [_Conv("decoder.model.0.conv.conv", (mult * N_FILTERS, DIMENSION, KERNEL_SIZE))]
    idx = 1
    for ratio in RATIOS:
        dim = mult * N_FILTERS
        # idx is an ELU, idx + 1 the transposed upsampling conv ([in, out, k]), idx + 2 a block.
        # Each output of a stride-r, kernel-2r transposed conv sees 2 taps per input channel.
        convs.append(_Conv(f"decoder.model.{idx + 1}.convtr.convtr", (dim, dim // 2, 2 * ratio),
                           transposed=True, fan_in=2 * dim))
        convs += _resblock(f"decoder.model.{idx + 2}", dim // 2)
        idx, mult = idx + 3, mult // 2
    convs.append(_Conv(f"decoder.model.{idx + 1}.conv.conv",
                       (CHANNELS, N_FILTERS, LAST_KERNEL_SIZE)))
    return convs


def _resample_convs() -> list[_Conv]:
    k = 2 * RESAMPLE_STRIDE  # ConvDownsample1d / ConvTrUpsample1d: kernel 2 * stride
    return [
        _Conv("downsample.conv.conv.conv", (DIMENSION, DIMENSION, k), bias=False),
        # Depthwise (groups = DIMENSION) transposed conv: [in, out / groups, k].
        _Conv("upsample.convtr.convtr.convtr", (DIMENSION, 1, k), bias=False, transposed=True,
              fan_in=2),
    ]


def _transformer_shapes(prefix: str) -> Shapes:
    # The file names attention weights as torch.nn.MultiheadAttention does
    # (`in_proj_weight`, `out_proj.weight`); PyTorch moshi's load hook renames them to
    # `in_projs.0.weight` / `out_projs.0.weight`, rustymimi reads them as they are.
    d, ff = DIMENSION, DIM_FEEDFORWARD
    shapes: Shapes = {}
    for i in range(TRANSFORMER_LAYERS):
        p = f"{prefix}.transformer.layers.{i}"
        shapes.update({
            f"{p}.self_attn.in_proj_weight": (3 * d, d),
            f"{p}.self_attn.out_proj.weight": (d, d),
            f"{p}.norm1.weight": (d,), f"{p}.norm1.bias": (d,),
            f"{p}.norm2.weight": (d,), f"{p}.norm2.bias": (d,),
            f"{p}.linear1.weight": (ff, d),
            f"{p}.linear2.weight": (d, ff),
            f"{p}.layer_scale_1.scale": (d,),
            f"{p}.layer_scale_2.scale": (d,),
        })
    return shapes


def _quantizer_shapes(num_codebooks: int) -> Shapes:
    shapes: Shapes = {}
    for name, count in (("rvq_first", 1), ("rvq_rest", num_codebooks - 1)):
        p = f"quantizer.{name}"
        shapes[f"{p}.input_proj.weight"] = (QUANTIZER_DIM, DIMENSION, 1)
        shapes[f"{p}.output_proj.weight"] = (DIMENSION, QUANTIZER_DIM, 1)
        for i in range(count):
            cb = f"{p}.vq.layers.{i}._codebook"
            shapes[f"{cb}._initialized"] = (1,)
            shapes[f"{cb}.cluster_usage"] = (BINS,)
            shapes[f"{cb}.embedding_sum"] = (BINS, QUANTIZER_DIM)
    return shapes


def _all_convs() -> list[_Conv]:
    return _encoder_convs() + _decoder_convs() + _resample_convs()


def mimi_key_shapes(num_codebooks: int = MAX_CODEBOOKS) -> Shapes:
    """Every tensor name of an official Mimi checkpoint with its shape."""
    _check_count(num_codebooks)
    shapes: Shapes = {}
    for c in _all_convs():
        shapes[f"{c.prefix}.weight"] = c.shape
        if c.bias:
            out_ch = c.shape[1] if c.transposed else c.shape[0]
            shapes[f"{c.prefix}.bias"] = (out_ch,)
    shapes.update(_transformer_shapes("encoder_transformer"))
    shapes.update(_transformer_shapes("decoder_transformer"))
    shapes.update(_quantizer_shapes(num_codebooks))
    return shapes


def _check_count(num_codebooks: int) -> None:
    if not 1 <= num_codebooks <= MAX_CODEBOOKS:
        raise ValueError(f"num_codebooks must be in 1..{MAX_CODEBOOKS}, got {num_codebooks}")


# Init scales: codebooks near the scale of the projected latent (~0.25 for speech-level
# input with these weights), so codes vary; the decoder's last conv damped to keep |pcm| < ~1.
CODEBOOK_STD = 0.25
LAST_DECODER_GAIN = 0.2


def _conv_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fan-in scaled normal conv weights (variance-preserving through the ELU stacks)."""
    convs = _all_convs()
    last_decoder = _decoder_convs()[-1].prefix
    out: dict[str, np.ndarray] = {}
    for c in convs:
        fan_in = c.fan_in or int(np.prod(c.shape[1:]))
        gain = LAST_DECODER_GAIN if c.prefix == last_decoder else 1.0
        out[f"{c.prefix}.weight"] = _normal(rng, c.shape, gain / np.sqrt(fan_in))
    return out


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def _other(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A value for a non-conv tensor, chosen by the role its name gives it."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "_initialized":
        return np.ones(shape, np.float32)
    if leaf == "cluster_usage":
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if leaf == "embedding_sum":  # embedding * usage is applied by the caller
        return _normal(rng, shape, CODEBOOK_STD)
    if leaf == "scale":  # layer scales, as the config's layer_scale
        return np.full(shape, 0.01, np.float32)
    if ".norm" in name and leaf == "weight":
        return np.ones(shape, np.float32)
    if leaf == "bias":
        return np.zeros(shape, np.float32)
    return _normal(rng, shape, 1.0 / np.sqrt(shape[1] * (shape[2] if len(shape) > 2 else 1)))


def random_mimi_tensors(seed: int = 0, num_codebooks: int = MAX_CODEBOOKS) -> dict[str, np.ndarray]:
    """The tensors of a random Mimi with `num_codebooks` codebooks, float32."""
    rng = np.random.default_rng(seed)
    shapes = mimi_key_shapes(num_codebooks)
    out = _conv_weights(rng)
    for name, shape in shapes.items():
        if name not in out:
            out[name] = _other(name, shape, rng)
    for name in shapes:
        if name.endswith(CODEBOOK_SUFFIX):
            # Stored as the EMA sum: embedding = embedding_sum / cluster_usage.
            out[name] *= out[name[: -len("embedding_sum")] + "cluster_usage"][:, None]
    assert out.keys() == shapes.keys()
    return out


def write_random_mimi(path: str | Path, seed: int = 0, num_codebooks: int = MAX_CODEBOOKS) -> Path:
    """Write a random Mimi checkpoint (safetensors, float32, ~385 MB for 32 codebooks),
    atomically and with the mode a plain `open()` gives (safetensors itself makes 0600)."""
    from safetensors.numpy import save_file

    from .outputs import atomic_path
    from .paths import file_mode

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(random_mimi_tensors(seed, num_codebooks), str(tmp))
        tmp.chmod(file_mode())
    return path


def cached_random_mimi(seed: int = 0) -> Path:
    """The random Mimi of a seed (all 32 codebooks), written once into the user's cache
    folder (`paths.cache_dir`) and reused by every random model and benchmark."""
    from .codec import MIMI_FILE
    from .paths import cache_dir

    path = cache_dir("random-mimi", f"seed-{seed}") / MIMI_FILE
    if not path.is_file():
        write_random_mimi(path, seed=seed)
    return path


def link_random_mimi(dst: str | Path, seed: int = 0) -> Path:
    """Put the cached random Mimi of a seed at `dst`: a hard link (no extra disk), else a
    symbolic link (the cache is on another file system), else a copy."""
    import os
    import shutil

    src, dst = cached_random_mimi(seed), Path(dst)
    try:
        os.link(src, dst)
    except OSError:
        try:
            os.symlink(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
            dst.chmod(src.stat().st_mode & 0o777)
    return dst
