"""Model configs: typed dataclasses, loaded from the official TOML or JSON schemas.

The native format is the TOML schema of Kyutai's Rust `moshi::lm::Config` (see
`configs/*.toml`). Fields that schema lacks but a faithful port needs live in one extra
table of our own, `[moshi_mac]`, documented on `ExtraConfig`. The Hugging Face
`config.json` (the keyword arguments of PyTorch `moshi.models.lm.LMModel`) is accepted too
and converted on load; a missing JSON key takes LMModel's default.

Every problem is reported as a one-line `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .errors import ConfigError

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
        problems = list(_problems(self))
        if problems:
            raise ConfigError(f"{source}: {problems[0]}" + (
                f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))
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


# ---------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with unknown keys named
# ---------------------------------------------------------------------------------------

def _closest(key: str, known) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key {where}.{key}{_closest(key, fields)}")
    missing = [n for n, f in fields.items()
               if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where} is missing required key(s): {', '.join(missing)}")
    return cls(**data)


def _build_transformer(data: dict, where: str) -> TransformerConfig:
    data = dict(data)
    if isinstance(data.get("gating"), str) and data["gating"].lower() in ("none", ""):
        data["gating"] = None
    t = _build(TransformerConfig, data, where)
    _check_types(t, where)
    return t


def _check_types(obj, where: str) -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        want = f.type if isinstance(f.type, str) else str(f.type)
        if want == "int" and not (isinstance(v, int) and not isinstance(v, bool)):
            raise ConfigError(f"{where}.{f.name} must be an integer, got {v!r}")
        if want == "bool" and not isinstance(v, bool):
            raise ConfigError(f"{where}.{f.name} must be true or false, got {v!r}")


def from_toml_dict(data: dict, source: str = "config") -> LmConfig:
    data = dict(data)
    known = {f.name for f in dataclasses.fields(LmConfig)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r}{_closest(key, known)}")
    try:
        if "transformer" not in data:
            raise ConfigError("missing the [transformer] table")
        transformer = _build_transformer(data.pop("transformer"), "transformer")
        depformer = None
        if "depformer" in data:
            dep = dict(data.pop("depformer"))
            if "transformer" not in dep:
                raise ConfigError("missing the [depformer.transformer] table")
            dep_t = _build_transformer(dep.pop("transformer"), "depformer.transformer")
            depformer = _build(DepformerConfig, {"transformer": dep_t, **dep}, "depformer")
        conditioners = {}
        for name, c in (data.pop("conditioners", None) or {}).items():
            c = dict(c)
            ctype = c.get("type", "Lut")
            if ctype != "Lut":
                raise ConfigError(f"conditioners.{name}: only type = \"Lut\" is supported, got {ctype!r}")
            conditioners[name] = _build(LutConditionerConfig, c, f"conditioners.{name}")
        extra_heads = data.pop("extra_heads", None)
        if extra_heads is not None:
            extra_heads = _build(ExtraHeadsConfig, extra_heads, "extra_heads")
        mm = dict(data.pop("moshi_mac", {}))
        gen = _build(GenerationConfig, mm.pop("generation", {}), "moshi_mac.generation")
        extra = _build(ExtraConfig, {**mm, "generation": gen}, "moshi_mac")
        cfg = _build(LmConfig, {
            **data, "transformer": transformer, "depformer": depformer,
            "conditioners": conditioners, "extra_heads": extra_heads, "moshi_mac": extra,
        }, "config")
        _check_types(cfg, "config")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{source}: {e}") from None
    if not cfg.moshi_mac.delays:
        cfg.moshi_mac.delays = default_delays(cfg)
    _default_conditions(cfg.moshi_mac.generation, cfg.conditioners)
    return cfg.validate(source)


def _default_conditions(gen: GenerationConfig, conditioners: dict) -> None:
    """Labels the reference uses when a file names none (moshi/run_inference.py)."""
    for name, c in conditioners.items():
        values = c.possible_values
        gen.conditions.setdefault(name, "very_good" if "very_good" in values else values[-1])
        gen.cfg_conditions.setdefault(name, "very_bad" if "very_bad" in values else values[0])


def default_delays(cfg: LmConfig) -> list[int]:
    """Delays when the file gives none: the Rust runtime's acoustic delay of 1 (Moshi)."""
    delay = 2 if cfg.moshi_mac.model_type == "hibiki" else 1
    half = [0] + [delay] * (cfg.dep_q - 1) if cfg.dep_q else []
    user = [0] + [delay] * (cfg.user_codebooks - 1) if cfg.user_codebooks else []
    return [0] + half + user


# ---------------------------------------------------------------------------------------
# JSON (PyTorch LMModel keyword arguments)
# ---------------------------------------------------------------------------------------

# LMModel / StreamingTransformer defaults for keys a config.json may omit.
_JSON_DEFAULTS: dict[str, Any] = {
    "delays": [0], "n_q": 8, "dep_q": 8, "card": 1024, "text_card": 32000,
    "text_card_out": None, "demux_second_text_stream": False, "dim": 128, "num_heads": 8,
    "hidden_scale": 4, "norm": "layer_norm", "norm_emb": False, "bias_proj": False,
    "depformer_dim": 256, "depformer_dim_feedforward": None, "depformer_multi_linear": False,
    "depformer_weights_per_step": False, "depformer_weights_per_step_schedule": None,
    "depformer_low_rank_embeddings": None, "depformer_pos_emb": "sin", "depformer_norm": None,
    "existing_text_padding_id": 3, "existing_text_end_padding_id": 0,
    "extra_heads_num_heads": 0, "extra_heads_dim": 6, "context": None, "causal": True,
    # StreamingTransformer / layer kwargs
    "num_layers": None, "layer_scale": None, "positional_embedding": "sin",
    "max_period": 10000, "gating": "none", "kv_repeat": 1, "positional_scale": 1.0,
}
# Keys a config.json carries that are not LM hyper-parameters.
_JSON_META = {
    "moshi_name", "mimi_name", "tokenizer_name", "lora_name", "model_type", "lm_gen_config",
    "tts_config", "stt_config", "model_id", "mimi_config_name", "lora", "lora_rank",
    "lora_scaling", "fuser", "conditioners", "quantize", "gradient_checkpointing",
    "cross_attention", "depformer_causal",
}
_JSON_DEP_KEYS = {"depformer_num_heads", "depformer_num_layers", "depformer_context",
                  "depformer_max_period", "depformer_gating", "depformer_layer_scale",
                  "depformer_kv_repeat"}

_JSON_NORMS = {
    "rms_norm": ("RmsNorm", 1e-5), "rms_norm_f32": ("RmsNorm", 1e-8),
    "layer_norm": ("LayerNorm", 1e-5), "layer_norm_f32": ("LayerNorm", 1e-8),
}
_JSON_POS = {"rope": ("Rope", "interleaved"), "rope_concat": ("Rope", "concat"),
             "sin": ("Sin", "interleaved"), "none": ("None", "interleaved")}


def _json_ff_to_rust(d_model: int, dim_feedforward: int, gating: str | None, where: str) -> int:
    """PyTorch and Rust size gated MLPs differently when ff == 4 * d; return the Rust ff
    whose hidden width equals PyTorch's."""
    if gating is None or dim_feedforward != 4 * d_model:
        return dim_feedforward
    hidden = 21 * d_model // 8  # PyTorch ActivationGating's rule for ff == 4 * d
    if (3 * hidden) % 2 or 3 * hidden // 2 == 4 * d_model:
        raise ConfigError(f"{where}: cannot express PyTorch's gated MLP width for d_model {d_model}")
    return 3 * hidden // 2


def from_json_dict(raw: dict, source: str = "config.json") -> LmConfig:
    known = set(_JSON_DEFAULTS) | _JSON_META | _JSON_DEP_KEYS | {"depformer_gating", "demux_second_stream"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r}{_closest(key, known)}")
    j = {**_JSON_DEFAULTS, **{k: v for k, v in raw.items() if k not in _JSON_META}}
    if "demux_second_stream" in j:  # the older name, renamed by get_moshi_lm
        j["demux_second_text_stream"] = j.pop("demux_second_stream")

    def fail(msg):
        raise ConfigError(f"{source}: {msg}")

    if j["norm"] not in _JSON_NORMS:
        fail(f"norm must be one of {', '.join(_JSON_NORMS)}, got {j['norm']!r}")
    norm, eps = _JSON_NORMS[j["norm"]]
    if j["positional_embedding"] not in _JSON_POS:
        fail(f"positional_embedding must be one of {', '.join(_JSON_POS)}, got {j['positional_embedding']!r}")
    if j["depformer_pos_emb"] not in _JSON_POS:
        fail(f"depformer_pos_emb must be one of {', '.join(_JSON_POS)}, got {j['depformer_pos_emb']!r}")
    for flag in ("demux_second_text_stream", "norm_emb"):
        if j[flag]:
            fail(f"{flag} = true is not supported")
    if raw.get("cross_attention"):
        fail("cross_attention is not supported")
    if j["num_layers"] is None:
        fail("missing required key 'num_layers'")
    pos, rope_layout = _JSON_POS[j["positional_embedding"]]
    dep_pos, dep_rope_layout = _JSON_POS[j["depformer_pos_emb"]]
    if pos == "Rope" and dep_pos == "Rope" and rope_layout != dep_rope_layout:
        fail("the main and depformer transformers use different RoPE layouts")
    gating = None if j["gating"] == "none" else j["gating"]
    dim = j["dim"]
    context = j["context"] if j["context"] is not None else 3000
    ff = int(j["hidden_scale"] * dim)
    transformer = TransformerConfig(
        d_model=dim, num_heads=j["num_heads"], num_layers=j["num_layers"],
        dim_feedforward=_json_ff_to_rust(dim, ff, gating, source), context=context,
        max_period=int(j["max_period"]), causal=j["causal"], layer_scale=j["layer_scale"],
        positional_embedding=pos, gating=gating, norm=norm, kv_repeat=j["kv_repeat"],
    )
    depformer = None
    if j["dep_q"] > 0:
        dep_dim = j["depformer_dim"]
        dep_gating = j.get("depformer_gating", j["gating"])
        dep_gating = None if dep_gating == "none" else dep_gating
        dep_ff = j["depformer_dim_feedforward"]
        if dep_ff is None:
            dep_ff = int(j["hidden_scale"] * dep_dim)
        if isinstance(dep_ff, list):
            fail("a per-step list for depformer_dim_feedforward is not supported")
        depformer = DepformerConfig(
            transformer=TransformerConfig(
                d_model=dep_dim,
                num_heads=j.get("depformer_num_heads", j["num_heads"]),
                num_layers=j.get("depformer_num_layers", j["num_layers"]),
                dim_feedforward=_json_ff_to_rust(dep_dim, dep_ff, dep_gating, source),
                context=j.get("depformer_context") or j["dep_q"],
                max_period=int(j.get("depformer_max_period", j["max_period"])),
                causal=j["causal"],
                layer_scale=j.get("depformer_layer_scale", j["layer_scale"]),
                positional_embedding=dep_pos, gating=dep_gating, norm=norm,
                kv_repeat=j.get("depformer_kv_repeat", j["kv_repeat"]),
            ),
            num_slices=j["dep_q"],
            low_rank_embeddings=j["depformer_low_rank_embeddings"],
        )
    conditioners = {}
    for name, c in (raw.get("conditioners") or {}).items():
        if c.get("type") != "lut":
            fail(f"conditioners.{name}: only type 'lut' is supported, got {c.get('type')!r}")
        lut = c.get("lut", {})
        if lut.get("tokenizer", "noop") != "noop":
            fail(f"conditioners.{name}: only the 'noop' tokenizer is supported")
        conditioners[name] = LutConditionerConfig(
            n_bins=lut["n_bins"], dim=lut["dim"], possible_values=list(lut["possible_values"]))
    fuser = raw.get("fuser") or {}
    for method, names in fuser.items():
        if method != "sum" and names:
            fail(f"fuser method {method!r} is not supported (only 'sum')")
    model_type = raw.get("model_type", "moshi")
    gen_raw = dict(raw.get("lm_gen_config") or {})
    gen = GenerationConfig()
    for key in ("temp", "top_k", "temp_text", "top_k_text", "cfg_coef"):
        if key in gen_raw:
            setattr(gen, key, gen_raw[key])
    _default_conditions(gen, conditioners)
    extra_heads = None
    if j["extra_heads_num_heads"]:
        extra_heads = ExtraHeadsConfig(num_heads=j["extra_heads_num_heads"], dim=j["extra_heads_dim"])
    cfg = LmConfig(
        transformer=transformer, depformer=depformer,
        text_in_vocab_size=j["text_card"] + 1,
        text_out_vocab_size=j["text_card_out"] or j["text_card"],
        audio_vocab_size=j["card"] + 1, audio_codebooks=j["n_q"],
        conditioners=conditioners, extra_heads=extra_heads,
        moshi_mac=ExtraConfig(
            model_type=model_type if model_type in MODEL_TYPES else "moshi",
            delays=list(j["delays"]),
            depformer_weights_per_step_schedule=j["depformer_weights_per_step_schedule"],
            depformer_norm=j["depformer_norm"],
            depformer_multi_linear=j["depformer_multi_linear"],
            depformer_weights_per_step=j["depformer_weights_per_step"],
            rope_layout=rope_layout if pos == "Rope" else dep_rope_layout,
            norm_eps=eps, bias_proj=j["bias_proj"],
            text_padding_id=j["existing_text_padding_id"],
            end_of_text_padding_id=j["existing_text_end_padding_id"],
            text_eos_alias_pad=model_type == "hibiki",
            generation=gen,
        ),
    )
    return cfg.validate(source)


def to_json_dict(cfg: LmConfig) -> dict:
    """The PyTorch `LMModel` keyword arguments equivalent to `cfg` (used to build the
    reference model in parity tests, and by `convert`)."""
    t, mm = cfg.transformer, cfg.moshi_mac
    norm = {("RmsNorm", 1e-8): "rms_norm_f32", ("RmsNorm", 1e-5): "rms_norm",
            ("LayerNorm", 1e-5): "layer_norm", ("LayerNorm", 1e-8): "layer_norm_f32"}
    key = (t.norm, cfg.norm_eps)
    if key not in norm:
        raise ConfigError(f"norm {t.norm} with eps {cfg.norm_eps} has no PyTorch equivalent")

    def pos(p):
        if p == "Rope":
            return "rope_concat" if mm.rope_layout == "concat" else "rope"
        return p.lower()

    def pt_ff(tc: TransformerConfig) -> int:
        # dim_feedforward for PyTorch giving the same MLP width as the Rust rule.
        if tc.gating is not None and tc.dim_feedforward == 4 * tc.d_model:
            return 3 * tc.mlp_hidden // 2
        return tc.dim_feedforward

    out: dict[str, Any] = {
        "dim": t.d_model, "text_card": cfg.text_in_vocab_size - 1,
        "text_card_out": cfg.text_out_vocab_size, "existing_text_padding_id": mm.text_padding_id,
        "existing_text_end_padding_id": mm.end_of_text_padding_id,
        "n_q": cfg.audio_codebooks, "dep_q": cfg.dep_q, "card": cfg.card,
        "num_heads": t.num_heads, "num_layers": t.num_layers,
        "hidden_scale": pt_ff(t) / t.d_model, "causal": t.causal, "layer_scale": t.layer_scale,
        "context": t.context, "max_period": t.max_period,
        "gating": t.gating or "none", "norm": norm[key],
        "positional_embedding": pos(t.positional_embedding), "kv_repeat": t.kv_repeat,
        "bias_proj": mm.bias_proj, "delays": list(mm.delays),
    }
    if cfg.depformer is not None:
        d = cfg.depformer.transformer
        out.update({
            "depformer_dim": d.d_model, "depformer_dim_feedforward": pt_ff(d),
            "depformer_num_heads": d.num_heads, "depformer_num_layers": d.num_layers,
            "depformer_layer_scale": d.layer_scale, "depformer_max_period": d.max_period,
            "depformer_gating": d.gating or "none", "depformer_pos_emb": pos(d.positional_embedding),
            "depformer_kv_repeat": d.kv_repeat, "depformer_context": d.context,
            "depformer_multi_linear": mm.depformer_multi_linear,
            "depformer_weights_per_step": mm.depformer_weights_per_step,
            "depformer_weights_per_step_schedule": mm.depformer_weights_per_step_schedule,
            "depformer_low_rank_embeddings": cfg.depformer.low_rank_embeddings,
            "depformer_norm": mm.depformer_norm,
        })
    if cfg.extra_heads is not None:
        out["extra_heads_num_heads"] = cfg.extra_heads.num_heads
        out["extra_heads_dim"] = cfg.extra_heads.dim
    if cfg.conditioners:
        out["conditioners"] = {
            name: {"type": "lut", "lut": {"n_bins": c.n_bins, "dim": c.dim, "tokenizer": "noop",
                                          "possible_values": list(c.possible_values)}}
            for name, c in cfg.conditioners.items()}
        out["fuser"] = {"sum": list(cfg.conditioners)}
    out["model_type"] = mm.model_type
    return out


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------

def load_config(path: str | Path) -> LmConfig:
    """Load a TOML (Rust schema + [moshi_mac]) or JSON (PyTorch kwargs) config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(errors="replace")
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level")
        return from_json_dict(raw, str(path))
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_toml_dict(raw, str(path))
