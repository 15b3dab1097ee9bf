"""Config loading: the shipped TOMLs, the official reference files, and one-line errors."""

from __future__ import annotations

import json

import pytest

from moshi_mac.config import LmConfig, from_json_dict, load_config, to_json_dict
from moshi_mac.errors import ConfigError

from .conftest import CONFIGS, REFERENCE_CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, LmConfig)
    assert len(cfg.delays) == 1 + cfg.audio_codebooks
    again = tmp_path / "again.toml"
    cfg.save(again)
    assert load_config(again) == cfg
    # and through the PyTorch JSON schema
    j = tmp_path / "config.json"
    j.write_text(json.dumps(to_json_dict(cfg)))
    back = load_config(j)
    assert back.transformer.mlp_hidden == cfg.transformer.mlp_hidden
    assert back.depformer.transformer.mlp_hidden == cfg.depformer.transformer.mlp_hidden
    assert back.delays == cfg.delays and back.text_in_vocab_size == cfg.text_in_vocab_size


@pytest.mark.parametrize("path", REFERENCE_CONFIGS, ids=lambda p: p.name)
def test_official_reference_configs_load(path):
    cfg = load_config(path)
    assert cfg.text_in_vocab_size in (32001, 48001)
    assert cfg.dep_q in (8, 16)


def test_known_values():
    m = load_config(CONFIGS[[p.stem for p in CONFIGS].index("moshi-7b")])
    assert (m.transformer.d_model, m.transformer.num_layers, m.text_in_vocab_size) == (4096, 32, 32001)
    assert m.transformer.mlp_hidden == 11264  # 4.125 * 4096 * 2 / 3
    assert m.delays == [0, 0] + [1] * 7 + [0] + [1] * 7
    h = load_config(CONFIGS[[p.stem for p in CONFIGS].index("hibiki-1b")])
    assert h.transformer.mlp_hidden == 5632  # Rust: 11 * 2048 / 4 for ff == 4 * d
    assert h.conditioners["description"].n_bins == 31
    assert h.moshi_mac.generation.conditions == {"description": "very_good"}
    z = load_config(CONFIGS[[p.stem for p in CONFIGS].index("hibiki-zero-3b")])
    assert z.transformer.kv_repeat == 2 and z.moshi_mac.rope_layout == "concat"
    assert z.depformer_num_weights == 9 and z.moshi_mac.depformer_norm == "layer_norm"


def test_json_pytorch_gating_rule():
    # PyTorch sizes a gated MLP with ff == 4 * d as 21 * d / 8 (Rust: 11 * d / 4).
    cfg = from_json_dict({"dim": 64, "num_heads": 4, "num_layers": 1, "hidden_scale": 4,
                          "gating": "silu", "n_q": 2, "dep_q": 1, "delays": [0, 0, 0],
                          "depformer_dim": 32, "text_card": 10, "card": 8, "model_type": "moshi"})
    assert cfg.transformer.mlp_hidden == 21 * 64 // 8


def _bad(tmp_path, text, suffix=".toml"):
    p = tmp_path / f"bad{suffix}"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _hibiki_text():
    return next(p for p in CONFIGS if p.stem == "hibiki-1b").read_text()


def test_error_corrupt_toml(tmp_path):
    assert "not valid TOML" in _bad(tmp_path, "[transformer\nd_model = 3")


def test_error_unknown_key_names_closest(tmp_path):
    msg = _bad(tmp_path, _hibiki_text().replace("d_model = 2048", "d_modle = 2048", 1))
    assert "d_modle" in msg and "d_model" in msg


def test_error_delays_length(tmp_path):
    text = _hibiki_text().replace("delays = [0, 0, 2, 2, 2, 2, 2, 2, 2, 0,", "delays = [0, 0, 2, 2, 2, 2, 2, 2, 2,")
    assert "delays has 16 entries, expected 17" in _bad(tmp_path, text)


def test_error_heads_divide(tmp_path):
    msg = _bad(tmp_path, _hibiki_text().replace("num_heads = 16", "num_heads = 15", 1))
    assert "not divisible by num_heads 15" in msg


def test_error_dep_q(tmp_path):
    msg = _bad(tmp_path, _hibiki_text().replace("num_slices = 8", "num_slices = 20"))
    assert "exceeds audio_codebooks" in msg


def test_error_schedule_length(tmp_path):
    text = _hibiki_text().replace("[moshi_mac]\n", "[moshi_mac]\ndepformer_weights_per_step_schedule = [0, 1]\n")
    assert "schedule has 2 entries, expected" in _bad(tmp_path, text)


def test_error_bad_json(tmp_path):
    assert "not valid JSON" in _bad(tmp_path, "{\"dim\": ", suffix=".json")
    assert "did you mean 'num_heads'" in _bad(tmp_path, json.dumps({"num_head": 3}), suffix=".json")
