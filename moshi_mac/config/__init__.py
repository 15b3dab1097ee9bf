"""Model configs: typed dataclasses, loaded from the official TOML or JSON schemas.

The native format is the TOML schema of Kyutai's Rust `moshi::lm::Config` (see
`configs/*.toml`). Fields that schema lacks but a faithful port needs live in one extra
table of our own, `[moshi_mac]`, documented on `ExtraConfig`. The Hugging Face
`config.json` (the keyword arguments of PyTorch `moshi.models.lm.LMModel`) is accepted too
and converted on load; a missing JSON key takes LMModel's default.

Every problem is reported as a one-line `ConfigError`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..errors import ConfigError
from .pytorch_json import from_json_dict, to_json_dict
from .rust_toml import default_delays, from_toml_dict
from .schema import (GATINGS, MODEL_TYPES, NORMS, POSITIONAL, ROPE_LAYOUTS, DepformerConfig,
                     ExtraConfig, ExtraHeadsConfig, GenerationConfig, LmConfig,
                     LutConditionerConfig, TransformerConfig)

__all__ = [
    "DepformerConfig", "ExtraConfig", "ExtraHeadsConfig", "GenerationConfig", "LmConfig",
    "LutConditionerConfig", "TransformerConfig", "from_json_dict", "from_toml_dict",
    "to_json_dict", "default_delays", "load_config", "GATINGS", "MODEL_TYPES", "NORMS",
    "POSITIONAL", "ROPE_LAYOUTS",
]


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
