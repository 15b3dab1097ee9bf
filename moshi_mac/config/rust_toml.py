"""Loading the native format: the Rust `moshi::lm::Config` TOML schema plus `[moshi_mac]`.

Plain dicts become dataclasses; unknown keys are named with the closest known one, and
missing required keys, wrong types and inconsistencies are one-line `ConfigError`s.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ConfigError
from .family import infer_model_type
from .schema import (DepformerConfig, ExtraConfig, ExtraHeadsConfig, GenerationConfig, LmConfig,
                     LutConditionerConfig, TransformerConfig, default_conditions, did_you_mean,
                     field_problems, raise_first)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key {where}.{key}{did_you_mean(key, fields)}")
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
    return _build(TransformerConfig, data, where)


def from_toml_dict(data: dict, source: str = "config") -> LmConfig:
    data = dict(data)
    known = {f.name for f in dataclasses.fields(LmConfig)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r}{did_you_mean(key, known)}")
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
        family_given = "model_type" in mm
        gen = _build(GenerationConfig, mm.pop("generation", {}), "moshi_mac.generation")
        extra = _build(ExtraConfig, {**mm, "generation": gen}, "moshi_mac")
        cfg = _build(LmConfig, {
            **data, "transformer": transformer, "depformer": depformer,
            "conditioners": conditioners, "extra_heads": extra_heads, "moshi_mac": extra,
        }, "config")
        raise_first(list(field_problems(cfg)))  # before the defaults below use the fields
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{source}: {e}") from None
    if not family_given:  # Kyutai's own TOML files have no [moshi_mac] table
        cfg.moshi_mac.model_type = infer_model_type(
            cfg, source, 'model_type = "{}" to a [moshi_mac] table', not cfg.moshi_mac.delays)
        if "text_eos_alias_pad" not in mm:
            cfg.moshi_mac.text_eos_alias_pad = cfg.moshi_mac.model_type == "hibiki"
    if not cfg.moshi_mac.delays:
        cfg.moshi_mac.delays = default_delays(cfg)
    default_conditions(cfg.moshi_mac.generation, cfg.conditioners)
    return cfg.validate(source)


def default_delays(cfg: LmConfig) -> list[int]:
    """Delays when the file gives none: the Rust runtime's acoustic delay of 1 (Moshi)."""
    delay = 2 if cfg.moshi_mac.model_type == "hibiki" else 1
    half = [0] + [delay] * (cfg.dep_q - 1) if cfg.dep_q else []
    user = [0] + [delay] * (cfg.user_codebooks - 1) if cfg.user_codebooks else []
    return [0] + half + user
