"""Shared fixtures: the shipped configs and random model folders made once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
# Kyutai's own config files (copies; see tests/data/kyutai/README.md)
REFERENCE_CONFIGS = sorted(p for p in (ROOT / "tests" / "data" / "kyutai").iterdir()
                           if p.suffix in (".json", ".toml"))
CONFIG_NAMES = [p.stem for p in CONFIGS]


@pytest.fixture(scope="session")
def shared_mimi(tmp_path_factory) -> Path:
    """One random Mimi checkpoint (385 MB) hard-linked into every random model."""
    from moshi_mac.mimi_random import write_random_mimi

    path = tmp_path_factory.mktemp("mimi") / "tokenizer-e351c8d8-checkpoint125.safetensors"
    write_random_mimi(path, seed=0)
    return path


@pytest.fixture(scope="session")
def make_model(tmp_path_factory, shared_mimi):
    """make_model(config_name, tiny=True, quantize=None, layout="mlx") -> model folder,
    cached per argument set for the whole session."""
    from moshi_mac.config import load_config
    from moshi_mac.random_model import make_random_model

    cache: dict[tuple, Path] = {}

    def make(name: str, tiny: bool = True, quantize: str | None = None, layout: str = "mlx",
             seed: int = 0) -> Path:
        key = (name, tiny, quantize, layout, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp("models") / "-".join(str(k) for k in key)
            cfg = load_config(ROOT / "configs" / f"{name}.toml")
            make_random_model(cfg, out, tiny=tiny, quantize=quantize, layout=layout, seed=seed,
                              mimi=shared_mimi)
            cache[key] = out
        return cache[key]

    return make


def pytest_configure(config):
    sys.path.insert(0, str(ROOT))
