"""The config dataclasses: the Rust `moshi::lm::Config` schema plus our `[moshi_mac]`
table, their validation (one line per problem) and TOML writing."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ..errors import ConfigError

NORMS = ("RmsNorm", "LayerNorm")
POSITIONAL = ("Rope", "Sin", "None")
ROPE_LAYOUTS = ("interleaved", "concat")
GATINGS = ("silu", "gelu", "relu", "sigmoid", "tanh")
MODEL_TYPES = ("moshi", "hibiki")


@dataclass
class TransformerConfig:
    """`[transformer]` / `[depformer.transformer]` of the Rust schema, every field."""

    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    context: int
    max_period: int
    causal: bool = True
    norm_first: bool = True
    bias_ff: bool = False
    bias_attn: bool = False
    layer_scale: float | None = None
    positional_embedding: str = "Rope"  # Rope | Sin | None
    use_conv_block: bool = False
    use_conv_bias: bool = True
    conv_layout: bool = False
    conv_kernel_size: int = 3
    cross_attention: Any = None  # not supported: no speech model of the family uses it
    gating: str | None = "silu"
    norm: str = "RmsNorm"  # RmsNorm | LayerNorm
    kv_repeat: int = 1
    max_seq_len: int = 4096
    shared_cross_attn: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads // self.kv_repeat

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the MLP, with the Rust schema's rule for gated MLPs."""
        if self.gating is None:
            return self.dim_feedforward
        if self.dim_feedforward == 4 * self.d_model:
            return 11 * self.d_model // 4
        return 2 * self.dim_feedforward // 3


@dataclass
class DepformerConfig:
    """`[depformer]`: the small transformer that emits one audio codebook per slice."""

    transformer: TransformerConfig
    num_slices: int
    low_rank_embeddings: int | None = None


@dataclass
class LutConditionerConfig:
    """`[conditioners.NAME]` with `type = "Lut"`: an embedding looked up by a label."""

    n_bins: int
    dim: int
    possible_values: list[str]
    type: str = "Lut"


@dataclass
class ExtraHeadsConfig:
    num_heads: int
    dim: int


@dataclass
class GenerationConfig:
    """`[moshi_mac.generation]`: the reference's sampling defaults for this model."""

    temp: float = 0.8
    top_k: int = 250
    temp_text: float = 0.7
    top_k_text: int = 25
    top_p: float = 0.0
    top_p_text: float = 0.0
    cfg_coef: float = 1.0
    seed: int = 4242  # the reference's seed: the same seed gives the same output
    # Conditioner values: name -> label, e.g. {"description": "very_good"}.
    conditions: dict[str, str] = field(default_factory=dict)
    # The labels of the unconditional half of a CFG batch.
    cfg_conditions: dict[str, str] = field(default_factory=dict)


@dataclass
class ExtraConfig:
    """`[moshi_mac]`: what the Rust TOML schema lacks, so one file describes a model fully.

    - model_type: "moshi" (dialogue) or "hibiki" (translation, with end-of-input flush).
    - delays: per-stream delays in steps, text first, then every audio codebook.
    - depformer_weights_per_step_schedule: slice index -> weight index (shared slices).
    - depformer_norm: norm on each depformer slice output before its linear
      ("layer_norm", "rms_norm", ... PyTorch names) or None.
    - depformer_multi_linear: one input projection per slice (else one shared).
    - depformer_weights_per_step: one set of depformer weights per slice (else shared).
    - rope_layout: "interleaved" (Moshi, Hibiki) or "concat" (Hibiki-Zero).
    - norm_eps: epsilon of the transformer norms (Rust: 1e-8 for RmsNorm, 1e-5 LayerNorm).
    - bias_proj: biases on the text and audio output projections.
    - text_padding_id / end_of_text_padding_id: the text stream's special ids.
    - text_eos_alias_pad: copy the PAD text embedding row onto EOS at load (Hibiki).
    """

    model_type: str = "moshi"
    delays: list[int] = field(default_factory=list)
    depformer_weights_per_step_schedule: list[int] | None = None
    depformer_norm: str | None = None
    depformer_multi_linear: bool = True
    depformer_weights_per_step: bool = True
    rope_layout: str = "interleaved"
    norm_eps: float | None = None
    bias_proj: bool = False
    text_padding_id: int = 3
    end_of_text_padding_id: int = 0
    text_eos_alias_pad: bool = False
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class LmConfig:
    """A whole LM: the Rust `moshi::lm::Config` plus our `[moshi_mac]` table."""

    transformer: TransformerConfig
    depformer: DepformerConfig | None
    text_in_vocab_size: int
    text_out_vocab_size: int
    audio_vocab_size: int
    audio_codebooks: int
    conditioners: dict[str, LutConditionerConfig] = field(default_factory=dict)
    extra_heads: ExtraHeadsConfig | None = None
    moshi_mac: ExtraConfig = field(default_factory=ExtraConfig)

    # -- derived ------------------------------------------------------------------------
    @property
    def dep_q(self) -> int:
        return 0 if self.depformer is None else self.depformer.num_slices

    @property
    def n_q(self) -> int:
        return self.audio_codebooks

    @property
    def user_codebooks(self) -> int:
        """Codebooks of the input (user) stream fed to the LM each step."""
        return self.audio_codebooks - self.dep_q

    @property
    def mimi_codebooks(self) -> int:
        """Codebooks Mimi must provide: the larger of the generated and the input streams."""
        return max(self.dep_q, self.user_codebooks)

    @property
    def card(self) -> int:
        return self.audio_vocab_size - 1

    @property
    def delays(self) -> list[int]:
        return self.moshi_mac.delays

    @property
    def norm_eps(self) -> float:
        if self.moshi_mac.norm_eps is not None:
            return self.moshi_mac.norm_eps
        return 1e-8 if self.transformer.norm == "RmsNorm" else 1e-5

    @property
    def depformer_num_weights(self) -> int:
        """Distinct weight sets of the depformer (shared slices via the schedule)."""
        if not self.moshi_mac.depformer_weights_per_step:
            return 1
        sched = self.moshi_mac.depformer_weights_per_step_schedule
        return self.dep_q if sched is None else max(sched) + 1

    def depformer_weight_index(self, slice_idx: int) -> int:
        if not self.moshi_mac.depformer_weights_per_step:
            return 0
        sched = self.moshi_mac.depformer_weights_per_step_schedule
        return slice_idx if sched is None else sched[slice_idx]

    def summary(self) -> str:
        t = self.transformer
        return (
            f"{t.num_layers} layers, d_model {t.d_model}, text vocab {self.text_in_vocab_size}, "
            f"{self.audio_codebooks} codebooks ({self.dep_q} generated)"
        )

    # -- validation ---------------------------------------------------------------------
    def validate(self, source: str = "config") -> "LmConfig":
        # Types and ranges first: the checks after them divide by and multiply fields.
        raise_first(list(field_problems(self)) or list(_problems(self)), f"{source}: ")
        return self

    # -- serialisation ------------------------------------------------------------------
    def to_toml_dict(self) -> dict:
        d = _drop_none(dataclasses.asdict(self))
        if self.depformer is None:
            d.pop("depformer", None)
        if not self.conditioners:
            d.pop("conditioners", None)
        return d

    def to_toml(self) -> str:
        text = tomli_w.dumps(self.to_toml_dict())
        # tomli_w writes one array element per line; keep number arrays on one line.
        return re.sub(r"\[\n((?:    [-0-9.e]+,\n)+)\]",
                      lambda m: "[" + ", ".join(x.strip().rstrip(",") for x in m.group(1).splitlines()) + "]",
                      text)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml())


def _drop_none(obj):
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None and v != {}}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def raise_first(problems: list[str], prefix: str = "") -> None:
    """One line: the first problem, and how many more there are."""
    if problems:
        raise ConfigError(prefix + problems[0] + (
            f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))


# Ranges of the numeric fields, by field name (any table): (low, high, low excluded).
_INT_MAX = 2**31 - 1
_POSITIVE = (0, _INT_MAX, True)
_NON_NEGATIVE = (0, _INT_MAX, False)
RANGES: dict[str, tuple[float, float, bool]] = {
    **{k: _POSITIVE for k in (
        "d_model", "num_heads", "num_layers", "dim_feedforward", "context", "max_period",
        "kv_repeat", "max_seq_len", "conv_kernel_size", "num_slices", "low_rank_embeddings",
        "text_in_vocab_size", "text_out_vocab_size", "audio_vocab_size", "audio_codebooks",
        "n_bins", "dim")},
    **{k: _NON_NEGATIVE for k in ("top_k", "top_k_text", "text_padding_id",
                                  "end_of_text_padding_id")},
    "norm_eps": (0, 1, True), "layer_scale": (-1e6, 1e6, False),
    "temp": (0, 100, False), "temp_text": (0, 100, False),
    "top_p": (0, 1, False), "top_p_text": (0, 1, False), "cfg_coef": (0, 100, True),
}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false",
               "str": "a string", "list[int]": "a list of integers",
               "list[str]": "a list of strings", "dict[str, str]": "a table of strings"}


def _type_ok(want: str, v) -> bool:
    if want == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if want == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if want == "bool":
        return isinstance(v, bool)
    if want == "str":
        return isinstance(v, str)
    if want.startswith("list["):
        item = want[5:-1]
        return isinstance(v, list) and all(_type_ok(item, x) for x in v)
    if want == "dict[str, str]":
        return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
    return True  # nested tables and Any: checked where they are built


def _fields(obj, where: str):
    """Type and range problems of one table, then of the tables inside it."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        name = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(v):
            yield from _fields(v, name)
            continue
        if isinstance(v, dict) and v and all(dataclasses.is_dataclass(x) for x in v.values()):
            for key, sub in v.items():
                yield from _fields(sub, f"{name}.{key}")
            continue
        want = f.type if isinstance(f.type, str) else str(f.type)
        optional = want.endswith(" | None")
        want = want.removesuffix(" | None")
        if v is None and optional:
            continue
        if not _type_ok(want, v):
            yield f"{name} must be {_TYPE_WORDS.get(want, want)}, got {v!r}"
            continue
        if f.name in RANGES and want in ("int", "float"):
            low, high, low_open = RANGES[f.name]
            if not (math.isfinite(v) and (v > low if low_open else v >= low) and v <= high):
                bound = f"> {low:g}" if low_open else f">= {low:g}"
                yield f"{name} must be {bound} and <= {high:g}, got {v!r}"


def field_problems(cfg: LmConfig):
    """Every field's type and range, then the memory the attention context needs."""
    problems = list(_fields(cfg, ""))
    yield from problems
    if problems:
        return
    need = kv_cache_bytes(cfg)
    have = physical_memory()
    if have and need > have:
        yield (f"transformer.context {cfg.transformer.context} needs a KV cache of "
               f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB of memory here; "
               f"use the model's own context")


def kv_cache_bytes(cfg: LmConfig, bytes_per_value: int = 2) -> int:
    """The KV cache of the temporal and depformer transformers at full context (bf16)."""
    total = 0
    stacks = [cfg.transformer] + ([cfg.depformer.transformer] if cfg.depformer else [])
    for t in stacks:
        kv_width = t.d_model // t.num_heads * max(1, t.num_heads // t.kv_repeat)
        total += 2 * t.num_layers * t.context * kv_width * bytes_per_value
    return total


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


def _problems(cfg: LmConfig):
    mm = cfg.moshi_mac
    stacks = [("transformer", cfg.transformer)]
    if cfg.depformer is not None:
        stacks.append(("depformer.transformer", cfg.depformer.transformer))
    for name, t in stacks:
        if t.d_model % t.num_heads:
            yield f"{name}.d_model {t.d_model} is not divisible by num_heads {t.num_heads}"
        if t.num_heads % t.kv_repeat:
            yield f"{name}.num_heads {t.num_heads} is not divisible by kv_repeat {t.kv_repeat}"
        if t.head_dim % 2 and t.positional_embedding == "Rope":
            yield f"{name}: RoPE needs an even head dim, got {t.head_dim}"
        if t.norm not in NORMS:
            yield f"{name}.norm must be one of {', '.join(NORMS)}, got {t.norm!r}"
        if t.positional_embedding not in POSITIONAL:
            yield (f"{name}.positional_embedding must be one of {', '.join(POSITIONAL)}, "
                   f"got {t.positional_embedding!r}")
        if t.gating is not None and t.gating not in GATINGS:
            yield f"{name}.gating must be one of {', '.join(GATINGS)} or absent, got {t.gating!r}"
        if t.cross_attention:
            yield f"{name}.cross_attention is not supported (no speech model of the family uses it)"
        if t.use_conv_block:
            yield f"{name}.use_conv_block is not supported"
        if not t.norm_first:
            yield f"{name}.norm_first = false is not supported"
        if t.context <= 0:
            yield f"{name}.context must be positive, got {t.context}"
    n_streams = 1 + cfg.audio_codebooks
    if len(mm.delays) != n_streams:
        yield (f"moshi_mac.delays has {len(mm.delays)} entries, expected {n_streams} "
               f"(1 text + {cfg.audio_codebooks} audio codebooks)")
    if any(d < 0 for d in mm.delays):
        yield "moshi_mac.delays must be >= 0"
    if cfg.dep_q > cfg.audio_codebooks:
        yield f"depformer.num_slices {cfg.dep_q} exceeds audio_codebooks {cfg.audio_codebooks}"
    sched = mm.depformer_weights_per_step_schedule
    if sched is not None:
        if len(sched) != cfg.dep_q:
            yield (f"moshi_mac.depformer_weights_per_step_schedule has {len(sched)} entries, "
                   f"expected depformer.num_slices = {cfg.dep_q}")
        elif sorted(set(sched)) != list(range(max(sched) + 1)):
            yield "moshi_mac.depformer_weights_per_step_schedule must use every index 0..max once or more"
    if mm.rope_layout not in ROPE_LAYOUTS:
        yield f"moshi_mac.rope_layout must be one of {', '.join(ROPE_LAYOUTS)}, got {mm.rope_layout!r}"
    if mm.model_type not in MODEL_TYPES:
        yield f"moshi_mac.model_type must be one of {', '.join(MODEL_TYPES)}, got {mm.model_type!r}"
    if cfg.text_out_vocab_size > cfg.text_in_vocab_size:
        yield (f"text_out_vocab_size {cfg.text_out_vocab_size} exceeds text_in_vocab_size "
               f"{cfg.text_in_vocab_size}")
    for name, c in cfg.conditioners.items():
        if c.type != "Lut":
            yield f"conditioners.{name}: only type = \"Lut\" is supported, got {c.type!r}"
        elif len(c.possible_values) > c.n_bins:
            yield f"conditioners.{name}: {len(c.possible_values)} possible_values exceed n_bins {c.n_bins}"
    gen = mm.generation
    for cname, label in list(gen.conditions.items()) + list(gen.cfg_conditions.items()):
        c = cfg.conditioners.get(cname)
        if c is None:
            yield f"moshi_mac.generation names conditioner {cname!r}, which the config does not define"
        elif label not in c.possible_values:
            yield f"moshi_mac.generation: {label!r} is not a possible value of conditioner {cname!r}"
    if cfg.conditioners and set(gen.conditions) != set(cfg.conditioners):
        yield ("moshi_mac.generation.conditions must give a value for every conditioner: "
               + ", ".join(sorted(cfg.conditioners)))


def did_you_mean(key: str, known) -> str:
    """The ` (did you mean 'x'?)` suffix for an unknown key, or "" when nothing is close."""
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def default_conditions(gen: GenerationConfig, conditioners: dict) -> None:
    """Labels the reference uses when a file names none (moshi/run_inference.py)."""
    for name, c in conditioners.items():
        values = c.possible_values
        gen.conditions.setdefault(name, "very_good" if "very_good" in values else values[-1])
        gen.cfg_conditions.setdefault(name, "very_bad" if "very_bad" in values else values[0])
