"""Strict, diagnosed weight loading for the LM.

Owns: reading safetensors headers without loading data, telling the MLX layout from the
PyTorch one, the PyTorch <-> MLX name mapping (`in_proj_weight`, multi-linear depformer
chunks, `.alpha` norms, weights-per-step schedules), the expected tensor list of a config,
quantization detection from the tensors themselves (bits and group size from shapes,
never from a file name), and loading into an `Lm` with tensors memory-mapped.

On any mismatch a `WeightsMismatchError` says in one line what is wrong and what the file
looks like (e.g. Moshi-7B weights given the hibiki-1b config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .config import LmConfig
from .errors import MoshiMacError, WeightsMismatchError
from .models.lm import Lm
from .quant import QUANT_PRESETS  # noqa: F401  (the presets' home is quant.py)
from .safetensors_io import TensorInfo
from .safetensors_io import read_header as _read_header

FLOAT_DTYPES = {"BF16", "F16", "F32"}
_VALID_BITS = (2, 3, 4, 5, 6, 8)
_VALID_GROUPS = (32, 64, 128)


# ---------------------------------------------------------------------------------------
# Safetensors headers
# ---------------------------------------------------------------------------------------

def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of an LM weights file; checks it is complete."""
    return _read_header(path, "weights file", "re-download it", WeightsMismatchError)


def detect_layout(names) -> str:
    """'mlx' or 'pytorch' from the tensor names (official checkpoints of either kind)."""
    names = set(names)
    if "out_norm.alpha" in names or any(k.startswith(("emb.", "depformer_in.", "linears."))
                                        for k in names):
        return "pytorch"
    return "mlx"


# ---------------------------------------------------------------------------------------
# PyTorch <-> MLX mapping
# ---------------------------------------------------------------------------------------

@dataclass
class PtEntry:
    """One PyTorch tensor and where its parts go in the MLX model.

    kind: "copy" (same tensor), "alpha" (RMSNorm [1, 1, d] -> [d]) or "chunk" (split along
    dim 0 into len(targets) equal chunks; chunk i goes to every name in targets[i]).
    """

    name: str
    kind: str
    targets: list[list[str]]
    optional: bool = False


def _norm_entries(pt: str, mlx: list[str], norm: str) -> list[PtEntry]:
    if norm.lower().startswith("rms"):
        return [PtEntry(f"{pt}.alpha", "alpha", [[f"{m}.weight" for m in mlx]])]
    return [PtEntry(f"{pt}.weight", "copy", [[f"{m}.weight" for m in mlx]]),
            PtEntry(f"{pt}.bias", "copy", [[f"{m}.bias" for m in mlx]])]


def _layer_entries(cfg: LmConfig, pt: str, mlx_layers: list[str], norm: str,
                   weight_groups: list[list[str]] | None, tcfg) -> list[PtEntry]:
    """Entries of one transformer layer. `weight_groups` (depformer) lists, per weight
    index, the MLX layer prefixes that share it; None for the temporal transformer."""
    out = []
    for n in ("norm1", "norm2"):
        out += _norm_entries(f"{pt}.{n}", [f"{m}.{n}" for m in mlx_layers], norm)
    groups = weight_groups or [mlx_layers]
    for proj in ("in_proj", "out_proj"):
        pt_name = f"{pt}.self_attn.in_proj_weight" if proj == "in_proj" else f"{pt}.self_attn.out_proj.weight"
        targets = [[f"{m}.self_attn.{proj}.weight" for m in g] for g in groups]
        out.append(PtEntry(pt_name, "chunk" if len(groups) > 1 else "copy", targets))
    if tcfg.gating is not None:
        for part in ("linear_in", "linear_out"):
            if weight_groups is None or len(groups) == 1 and not cfg.moshi_mac.depformer_weights_per_step:
                out.append(PtEntry(f"{pt}.gating.{part}.weight", "copy",
                                   [[f"{m}.gating.{part}.weight" for m in mlx_layers]]))
            else:
                for w, g in enumerate(groups):
                    out.append(PtEntry(f"{pt}.gating.{w}.{part}.weight", "copy",
                                       [[f"{m}.gating.{part}.weight" for m in g]]))
    else:
        for part in ("linear1", "linear2"):
            out.append(PtEntry(f"{pt}.{part}.weight", "copy", [[f"{m}.{part}.weight" for m in mlx_layers]]))
    if tcfg.layer_scale is not None:
        for part in ("layer_scale_1", "layer_scale_2"):
            out.append(PtEntry(f"{pt}.{part}.scale", "copy", [[f"{m}.{part}.scale" for m in mlx_layers]]))
    return out


def pytorch_plan(cfg: LmConfig) -> list[PtEntry]:
    """Every tensor of the official PyTorch checkpoint for `cfg`, with its MLX targets."""
    t = cfg.transformer
    norm = t.norm
    mm = cfg.moshi_mac
    plan = [PtEntry("text_emb.weight", "copy", [["text_emb.weight"]]),
            PtEntry("text_linear.weight", "copy", [["text_linear.weight"]])]
    if mm.bias_proj:
        plan.append(PtEntry("text_linear.bias", "copy", [["text_linear.bias"]]))
    plan += [PtEntry(f"emb.{k}.weight", "copy", [[f"audio_embs.{k}.weight"]])
             for k in range(cfg.audio_codebooks)]
    plan += _norm_entries("out_norm", ["out_norm"], norm)
    for layer in range(t.num_layers):
        plan += _layer_entries(cfg, f"transformer.layers.{layer}", [f"transformer.layers.{layer}"],
                               norm, None, t)
    if cfg.depformer is not None:
        K = cfg.dep_q
        slices = [f"depformer.slices.{s}" for s in range(K)]
        n_w = cfg.depformer_num_weights
        sched = mm.depformer_weights_per_step_schedule
        for layer in range(cfg.depformer.transformer.num_layers):
            mlx_layers = [f"{s}.transformer.layers.{layer}" for s in slices]
            groups = [[mlx_layers[s] for s in range(K) if cfg.depformer_weight_index(s) == w]
                      for w in range(n_w)]
            plan += _layer_entries(cfg, f"depformer.layers.{layer}", mlx_layers, norm,
                                   groups, cfg.depformer.transformer)
        if mm.depformer_multi_linear:
            n_in = (max(sched) + 1) if sched else K
            index = (lambda s: sched[s]) if sched else (lambda s: s)
        else:
            n_in, index = 1, (lambda s: 0)
        for w in range(n_in):
            plan.append(PtEntry(f"depformer_in.{w}.weight", "copy",
                                [[f"{slices[s]}.linear_in.weight" for s in range(K) if index(s) == w]]))
        low_rank = cfg.depformer.low_rank_embeddings
        for s in range(K):
            pt_emb = "depformer_text_emb" if s == 0 else f"depformer_emb.{s - 1}"
            plan.append(PtEntry(f"{pt_emb}.weight", "copy", [[f"{slices[s]}.emb.weight"]]))
            if low_rank:
                plan.append(PtEntry(f"{pt_emb}.low_rank.weight", "copy",
                                    [[f"{slices[s]}.emb.low_rank.weight"]]))
            plan.append(PtEntry(f"linears.{s}.weight", "copy", [[f"{slices[s]}.linear_out.weight"]]))
            if mm.bias_proj:
                plan.append(PtEntry(f"linears.{s}.bias", "copy", [[f"{slices[s]}.linear_out.bias"]]))
            if mm.depformer_norm:
                plan += _norm_entries(f"depformer_norms.{s}", [f"{slices[s]}.out_norm"], mm.depformer_norm)
    for name in cfg.conditioners:
        p = f"condition_provider.conditioners.{name}"
        for part in ("embed.weight", "output_proj.weight", "learnt_padding"):
            plan.append(PtEntry(f"{p}.{part}", "copy", [[f"{p}.{part}"]]))
    if cfg.extra_heads is not None:
        for i in range(cfg.extra_heads.num_heads):
            plan.append(PtEntry(f"extra_heads.{i}.weight", "copy", [[f"extra_heads.{i}.weight"]]))
    return plan


_PROJS_RE = re.compile(r"^(.*)\.(in|out)_projs\.(\d+)\.weight$")


def normalize_pytorch_names(tensors: dict) -> dict:
    """Accept `state_dict()` names (`in_projs.{i}.weight`) as well as the official files'
    (`in_proj_weight`, `out_proj.weight`), concatenating per-step projections."""
    groups: dict[str, dict[int, object]] = {}
    out = {}
    for k, v in tensors.items():
        m = _PROJS_RE.match(k)
        if m:
            name = f"{m[1]}.in_proj_weight" if m[2] == "in" else f"{m[1]}.out_proj.weight"
            groups.setdefault(name, {})[int(m[3])] = v
        else:
            out[k] = v
    for name, parts in groups.items():
        ordered = [parts[i] for i in sorted(parts)]
        if len(ordered) == 1 or any(v is None for v in ordered):  # None: names only
            out[name] = ordered[0]
        else:
            out[name] = mx.concatenate(ordered, axis=0)
    return out


def pytorch_to_mlx(cfg: LmConfig, tensors: dict) -> dict[str, mx.array]:
    """Map PyTorch-layout tensors (already checked) to MLX names; shared weights are the
    same array object, so they cost no extra memory."""
    tensors = normalize_pytorch_names(tensors)
    out: dict[str, mx.array] = {}
    for e in pytorch_plan(cfg):
        v = tensors[e.name]
        if e.kind == "alpha":
            v = v.reshape(-1)
        parts = mx.split(v, len(e.targets), axis=0) if e.kind == "chunk" else [v] * len(e.targets)
        for part, names in zip(parts, e.targets):
            for n in names:
                out[n] = part
    return out


def mlx_to_pytorch(cfg: LmConfig, tensors: dict[str, mx.array]) -> dict[str, mx.array]:
    """The inverse: the official PyTorch file layout from full-precision MLX tensors."""
    out = {}
    for e in pytorch_plan(cfg):
        firsts = [tensors[names[0]] for names in e.targets]
        if e.kind == "chunk":
            out[e.name] = mx.concatenate(firsts, axis=0)
        elif e.kind == "alpha":
            out[e.name] = firsts[0].reshape(1, 1, -1)
        else:
            out[e.name] = firsts[0]
    return out


# ---------------------------------------------------------------------------------------
# Expected tensors and checks
# ---------------------------------------------------------------------------------------

def expected_mlx_shapes(cfg: LmConfig) -> dict[str, tuple[int, ...]]:
    """Full-precision MLX names and shapes for `cfg` (no data is computed)."""
    return {k: tuple(v.shape) for k, v in tree_flatten(Lm(cfg).parameters())}


def expected_pytorch_shapes(cfg: LmConfig) -> dict[str, tuple[int, ...]]:
    mlx_shapes = expected_mlx_shapes(cfg)
    out = {}
    for e in pytorch_plan(cfg):
        first = mlx_shapes[e.targets[0][0]]
        if e.kind == "chunk":
            out[e.name] = (first[0] * len(e.targets),) + first[1:]
        elif e.kind == "alpha":
            out[e.name] = (1, 1) + first
        else:
            out[e.name] = first
    return out


def quantizable(path: str, shape: tuple[int, ...]) -> bool:
    """Which MLX modules we quantize: linears and embeddings, except the conditioner LUT
    (moshi_mlx's failure on Hibiki) and anything whose input dim is not a multiple of 32."""
    if path.startswith("condition_provider."):
        return False
    return len(shape) == 2 and shape[-1] % 32 == 0


@dataclass
class Quantization:
    """What the file holds: per quantized module, (bits, group_size)."""

    modules: dict[str, tuple[int, int]] = field(default_factory=dict)
    float_dtype: str = "BF16"

    @property
    def label(self) -> str:
        kinds = sorted(set(self.modules.values()))
        if not kinds:
            return self.float_dtype.lower()
        return "+".join(f"q{b} (group {g})" for b, g in kinds)

    @property
    def short(self) -> str:
        kinds = sorted({b for b, _ in self.modules.values()})
        return self.float_dtype.lower() if not kinds else "+".join(f"q{b}" for b in kinds)


def describe_file(header: dict[str, TensorInfo]) -> str:
    """A short description of what a weights file looks like, for error messages."""
    layout = detect_layout(header)
    dims = {}
    for key in ("text_emb.weight", "emb.0.weight", "audio_embs.0.weight", "text_linear.weight"):
        if key in header:
            dims[key] = header[key].shape
    te = header.get("text_emb.weight")
    text = ""
    if te is not None:
        rows = te.shape[0]
        guess = {32001: "Moshi 7B", 48001: "Hibiki / Hibiki-Zero"}.get(rows)
        shape = f"{rows} rows, quantized" if te.dtype == "U32" else f"{rows}x{te.shape[1]}"
        text = f"text_emb {shape}" + (f", looks like {guess}" if guess else "")
    n_layers = len({m[1] for k in header if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
    parts = [f"{layout} layout", f"{len(header)} tensors", f"{n_layers} layers"]
    if text:
        parts.append(text)
    return ", ".join(parts)


def describe_config(cfg: LmConfig, name: str) -> str:
    label = name if "config" in name else f"the {name} config"
    return (f"{label} expects text_emb {cfg.text_in_vocab_size}x{cfg.transformer.d_model}, "
            f"{cfg.transformer.num_layers} layers")


@dataclass
class CheckReport:
    path: Path
    layout: str
    quantization: Quantization
    n_tensors: int
    n_params: int
    file_bytes: int


def _fail(problems: list[str], header, cfg, cfg_name, path) -> None:
    more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
    raise WeightsMismatchError(
        f"{Path(path).name} does not match {cfg_name}: {'; '.join(problems[:2])}{more}. "
        f"The file: {describe_file(header)}; {describe_config(cfg, cfg_name)}. "
        f"Use the config that came with these weights.")


def check_weights(path: str | Path, cfg: LmConfig, cfg_name: str = "config",
                  expect_quant: str | None = None) -> CheckReport:
    """Check every tensor of `path` against `cfg`: names, shapes, dtypes, quantization."""
    header = read_header(path)
    layout = detect_layout(header)
    problems: list[str] = []
    quant = Quantization()
    float_dtypes = {i.dtype for i in header.values() if i.dtype in FLOAT_DTYPES}
    quant.float_dtype = "BF16" if "BF16" in float_dtypes else (sorted(float_dtypes) or ["BF16"])[0]
    if layout == "pytorch":
        expected = expected_pytorch_shapes(cfg)
        names = set(normalize_pytorch_names({k: None for k in header}))
        # shapes of state_dict()-style split projections are checked after concatenation
        shapes = {k: v.shape for k, v in header.items()}
        for k in names - set(shapes):
            shapes[k] = None
        for k in sorted(set(expected) - names):
            problems.append(f"missing tensor {k} {_fmt(expected[k])}")
        for k in sorted(names - set(expected)):
            problems.append(f"unexpected tensor {k} {_fmt(shapes.get(k))}")
        for k in sorted(set(expected) & names):
            if shapes[k] is not None and tuple(shapes[k]) != expected[k]:
                problems.append(f"{k} is {_fmt(shapes[k])}, expected {_fmt(expected[k])}")
            info = header.get(k)
            if info is not None and info.dtype not in FLOAT_DTYPES:
                problems.append(f"{k} has dtype {info.dtype}, expected a float dtype "
                                f"(PyTorch checkpoints are not quantized)")
    else:
        expected = expected_mlx_shapes(cfg)
        seen = set()
        for k, shape in expected.items():
            mod = k.rsplit(".", 1)[0]
            if k.endswith(".weight") and f"{mod}.scales" in header:
                info = header.get(k)
                if info is None:
                    problems.append(f"missing tensor {k}")
                    continue
                seen |= {k, f"{mod}.scales"}
                if f"{mod}.biases" in header:
                    seen.add(f"{mod}.biases")
                else:
                    problems.append(f"missing tensor {mod}.biases")
                q = _detect_quant(k, shape, info, header[f"{mod}.scales"])
                if isinstance(q, str):
                    problems.append(q)
                else:
                    quant.modules[mod] = q
                continue
            info = header.get(k)
            if info is None:
                problems.append(f"missing tensor {k} {_fmt(shape)}")
                continue
            seen.add(k)
            if info.shape != shape:
                problems.append(f"{k} is {_fmt(info.shape)}, expected {_fmt(shape)}")
            elif info.dtype not in FLOAT_DTYPES:
                problems.append(f"{k} has dtype {info.dtype}, expected a float dtype")
        for k in sorted(set(header) - seen):
            problems.append(f"unexpected tensor {k} {_fmt(header[k].shape)}")
    if problems:
        _fail(problems, header, cfg, cfg_name, path)
    if expect_quant is not None and quant.short != expect_quant:
        raise WeightsMismatchError(
            f"{Path(path).name} holds {quant.label} weights, but {expect_quant} was asked for; "
            f"pick the model entry that matches the file (e.g. the -{quant.short} one)")
    n_params = sum(_numel(expected[k]) for k in expected)
    return CheckReport(Path(path), layout, quant, len(header), n_params, Path(path).stat().st_size)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _fmt(shape) -> str:
    return "?" if shape is None else "x".join(str(s) for s in shape) or "scalar"


def _detect_quant(name: str, shape, info: TensorInfo, scales: TensorInfo):
    """(bits, group_size) from a packed weight and its scales, given the float shape."""
    if len(shape) != 2 or info.dtype != "U32" or len(info.shape) != 2:
        return f"{name} looks quantized but is {info.dtype} {_fmt(info.shape)}"
    rows, cols = shape
    if info.shape[0] != rows or scales.shape[0] != rows:
        return f"{name} is quantized with {info.shape[0]} rows, expected {rows} (from {_fmt(shape)})"
    bits, rem = divmod(info.shape[1] * 32, cols)
    if rem or bits not in _VALID_BITS:
        return f"{name} packs {info.shape[1]} words per row, which fits no bit width for {cols} columns"
    group, rem = divmod(cols, scales.shape[1]) if scales.shape[1] else (0, 1)
    if rem or group not in _VALID_GROUPS:
        return f"{name} has {scales.shape[1]} scale groups per row, which fits no group size for {cols}"
    return bits, group


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------

SMALL_D_MODEL = 1024  # below: a test-sized model (see default_dtype)


def default_dtype(cfg: LmConfig | None = None, quantized: bool = False):
    """The float dtype to run the LM in (activations, norms, KV caches): bf16, except
    float32 on the MLX CPU backend for a small model or a quantized one.

    bf16 on Apple GPUs and CUDA, where a step is bound by memory bandwidth. On the MLX CPU
    backend, measured (benchmarks/results/real.md, 2 cores): at the real Hibiki-1B shape
    bf16 is within ~10 % of fp32 (880 vs 800 ms per step) at half the memory, and fp32
    Moshi-7B (31 GB) does not fit in 24 GB, so bf16 stays; at tiny test shapes (`cfg` with
    d_model < SMALL_D_MODEL) fp32 is clearly faster (no float32 conversion of every weight
    in each matmul). A `quantized` model runs float32 activations on the CPU: MLX's CPU
    quantized matmul is ~8x slower with a bf16 input than with a float32 one (8192x2048 q8:
    132 vs 16 ms; benchmarks/README.md), and the packed weights do not change size.
    Without `cfg`, the real-shape choice."""
    if mx.default_device() == mx.cpu and (quantized or (
            cfg is not None and cfg.transformer.d_model < SMALL_D_MODEL)):
        return mx.float32
    return mx.bfloat16


def cast_floats(model: Lm, dtype) -> None:
    """Every float parameter of `model` to `dtype`, except the conditioner (float32, as
    the reference keeps it) and the scales and biases of quantized linear layers (MLX's
    quantized matmul takes them in another dtype than its input at full speed, and they
    stay as small as the file has them). A quantized embedding's scales and biases do
    follow `dtype`: they are the dtype of what it returns."""
    embeddings = {path for path, m in model.named_modules() if isinstance(m, nn.QuantizedEmbedding)}
    updates = []
    for name, v in tree_flatten(model.parameters()):
        if not _is_float(v) or v.dtype == dtype or name.startswith("condition_provider."):
            continue
        module, _, leaf = name.rpartition(".")
        if leaf in ("scales", "biases") and module not in embeddings:
            continue
        updates.append((name, v.astype(dtype)))
    if updates:
        model.load_weights(updates, strict=False)


def load_lm(path: str | Path, cfg: LmConfig, cfg_name: str = "config", dtype=None,
            expect_quant: str | None = None, quantize: str | None = None) -> tuple[Lm, CheckReport]:
    """Check, then build the model with the file's tensors (memory-mapped by MLX);
    `quantize` (a QUANT_PRESETS name) quantizes full-precision weights as they load."""
    report = check_weights(path, cfg, cfg_name, expect_quant)
    model = Lm(cfg)
    quant = report.quantization
    if quantize is not None:
        if quantize not in QUANT_PRESETS:
            raise MoshiMacError(f"quantize must be one of {', '.join(QUANT_PRESETS)}, got {quantize!r}")
        if quant.modules:
            raise MoshiMacError(f"{Path(path).name} is already {quant.label}; load it without "
                                f"quantize, or quantize its bf16 weights")
        quant = quantization_plan(model, *QUANT_PRESETS[quantize])
    dtype = dtype or default_dtype(cfg, quantized=bool(quant.modules))
    tensors = mx.load(str(path))
    if report.layout == "pytorch":
        tensors = pytorch_to_mlx(cfg, tensors)
    if quant is not report.quantization:
        tensors = quantize_tensors(tensors, quant)
    apply_quantization(model, quant)
    model.load_weights(list(tensors.items()), strict=True)
    del tensors
    cast_floats(model, dtype)
    if cfg.moshi_mac.text_eos_alias_pad:
        alias_eos_to_pad(model)
    mx.eval(model.parameters())
    return model, report


def _is_float(v: mx.array) -> bool:
    return v.dtype in (mx.bfloat16, mx.float16, mx.float32)


def alias_eos_to_pad(model: Lm, eos: int = 2, pad: int = 3) -> None:
    """Hibiki: the text embedding of EOS becomes PAD's (CheckpointInfo.get_moshi)."""
    emb = model.text_emb
    if hasattr(emb, "scales"):
        for name in ("weight", "scales", "biases"):
            arr = getattr(emb, name)
            arr[eos] = arr[pad]
    else:
        emb.weight[eos] = emb.weight[pad]


def apply_quantization(model: Lm, quant: Quantization) -> None:
    if not quant.modules:
        return

    def predicate(path, module):
        q = quant.modules.get(path)
        return {"bits": q[0], "group_size": q[1]} if q else False

    nn.quantize(model, class_predicate=predicate)


def quantization_plan(model: Lm, bits: int, group_size: int) -> Quantization:
    """Which leaves `quantize_model` would quantize (see `quantizable`), without doing it."""
    quant = Quantization()
    flat = dict(tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module))
    for path, m in flat.items():
        w = getattr(m, "weight", None) if hasattr(m, "to_quantized") else None
        if w is not None and quantizable(path, tuple(w.shape)) and w.shape[-1] % group_size == 0:
            quant.modules[path] = (bits, group_size)
    return quant


def quantize_model(model: Lm, bits: int, group_size: int) -> Quantization:
    """Quantize every quantizable leaf in place and return what was done."""
    quant = quantization_plan(model, bits, group_size)
    apply_quantization(model, quant)
    return quant


def quantize_tensors(tensors: dict[str, mx.array], quant: Quantization) -> dict[str, mx.array]:
    """MLX-layout tensors -> the same with `quant`'s modules packed (lazily, per tensor)."""
    out = {}
    for name, v in tensors.items():
        mod = name.rsplit(".", 1)[0]
        q = quant.modules.get(mod) if name.endswith(".weight") else None
        if q is None:
            out[name] = v
            continue
        w, scales, biases = mx.quantize(v, group_size=q[1], bits=q[0])
        out[name], out[f"{mod}.scales"], out[f"{mod}.biases"] = w, scales.astype(v.dtype), biases.astype(v.dtype)
    return out
