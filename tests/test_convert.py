"""`moshi-mac convert`: random PyTorch checkpoints of every config shape -> MLX folders.

- Each shipped config shape (tiny): the official layout (config.json in the PyTorch
  schema + PyTorch-named safetensors) converts to a folder that passes `check` and whose
  teacher-forced logits equal those of the model loaded from the PyTorch file.
- Hibiki-Zero against the official PyTorch `LMModel` loading the same source file.
- q8 / q4 while converting; registry names; refusing to overwrite; atomic failure.
- Streaming: MLX's peak memory while converting stays a small fraction of the file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from moshi_mac import cli
from moshi_mac.config import load_config, to_json_dict
from moshi_mac.convert import convert
from moshi_mac.doctor.numerics import logit_agreement, probe_codes, score_probe
from moshi_mac.errors import MoshiMacError
from moshi_mac.modeldir import check_model, from_dir
from moshi_mac.weights import expected_mlx_shapes, load_lm, read_header

from .conftest import CONFIG_NAMES, ROOT


def official_folder(make_model, tmp_path: Path, name: str) -> Path:
    """A tiny random model laid out like a Kyutai PyTorch repo: config.json (PyTorch
    schema, with model_type), PyTorch-named weights, Mimi and tokenizer."""
    src = make_model(name, layout="pytorch")
    dst = tmp_path / f"{name}-pytorch"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "config.toml":
            os.link(f, dst / f.name)
    cfg = load_config(src / "config.toml")
    raw = to_json_dict(cfg)
    raw.update(moshi_name="model.safetensors", mimi_name="tokenizer-e351c8d8-checkpoint125.safetensors",
               tokenizer_name=next(src.glob("*.model")).name)
    (dst / "config.json").write_text(json.dumps(raw))
    return dst


def _logits(model, cfg, steps=10):
    out = score_probe(model, probe_codes(cfg, steps=steps, seed=3))
    return np.array(out.text_logits), np.array(out.logits)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_convert_matches_source_logits(make_model, tmp_path, name):
    src = official_folder(make_model, tmp_path, name)
    res = convert(src, tmp_path / "out")
    out = from_dir(res.folder)
    assert out.config.name == "config.toml" and out.weights.name == "model.safetensors"
    checked = check_model(out)
    assert checked.weights.layout == "mlx" and checked.weights.quantization.short == "bf16"
    assert {i.dtype for i in read_header(out.weights).values()} <= {"BF16", "F32"}
    src_cfg = load_config(src / "config.json")
    assert checked.config.moshi_mac.model_type == src_cfg.moshi_mac.model_type
    assert checked.config.moshi_mac.delays == src_cfg.moshi_mac.delays
    a, _ = load_lm(from_dir(src).weights, src_cfg)
    b, _ = load_lm(out.weights, checked.config)
    for x, y in zip(_logits(a, src_cfg), _logits(b, checked.config)):
        assert np.nanmax(np.abs(x - y)) <= 1e-5
        assert np.array_equal(np.isnan(x), np.isnan(y))


@pytest.mark.reference
def test_convert_matches_official_pytorch(make_model, tmp_path):
    """Hibiki-Zero (GQA, concat RoPE, depformer schedule and norm): the converted MLX
    model vs the official `LMModel` built by `get_moshi_lm` from the same PyTorch file."""
    import torch
    from moshi.models.loaders import get_moshi_lm

    sys.path.insert(0, str(ROOT / "tests"))
    import reference as R

    src = official_folder(make_model, tmp_path, "hibiki-zero-3b")
    cfg = load_config(src / "config.json")
    ref = get_moshi_lm(str(from_dir(src).weights), lm_kwargs=R.reference_kwargs(cfg),
                       device="cpu", dtype=torch.float32).eval()
    with torch.no_grad():  # Hibiki's load-time EOS -> PAD alias (CheckpointInfo.get_moshi)
        ref.text_emb.weight[2] = ref.text_emb.weight[3]
    model, _ = load_lm(convert(src, tmp_path / "out").weights, cfg)
    codes = R.random_codes(cfg, batch=1, steps=12, seed=4, zero_frac=0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: the thread pool only adds overhead
    try:
        with torch.no_grad():
            theirs = ref(torch.from_numpy(codes))
    finally:
        torch.set_num_threads(threads)
    ours = score_probe(model, codes)
    for mine, other in [(ours.text_logits, theirs.text_logits), (ours.logits, theirs.logits)]:
        mine, other = np.array(mine), R.to_numpy(other)
        assert np.array_equal(np.isnan(mine), np.isnan(other))
        assert np.nanmax(np.abs(mine - other)) <= 1e-4


@pytest.mark.parametrize("quant", ["q8", "q4"])
def test_convert_quantized_loads_with_check(make_model, tmp_path, quant):
    src = official_folder(make_model, tmp_path, "hibiki-1b")
    res = convert(src, tmp_path / "out", quant)
    assert res.weights.name == f"model.{quant}.safetensors"
    out = from_dir(res.folder)
    out.expect_quant = quant
    checked = check_model(out)
    assert checked.weights.quantization.short == quant
    assert not any(m.startswith("condition_provider") for m in checked.weights.quantization.modules)
    cfg = checked.config
    a = logit_agreement(score_probe(load_lm(from_dir(src).weights, cfg)[0], probe_codes(cfg)),
                        score_probe(load_lm(out.weights, cfg)[0], probe_codes(cfg)))
    assert np.isfinite(a.kl) and a.kl < (0.02 if quant == "q8" else 0.5)


def test_convert_cli_registry_name_and_overwrite(make_model, tmp_path, monkeypatch, capsys):
    """A registry name found in $MOSHI_MAC_WEIGHTS; a second run needs --force."""
    weights = tmp_path / "weights"
    weights.mkdir()
    src = official_folder(make_model, tmp_path, "hibiki-zero-3b")
    (weights / "hibiki-zero-3b-pytorch-bf16").symlink_to(src)
    monkeypatch.setenv("MOSHI_MAC_WEIGHTS", str(weights))
    out = tmp_path / "zero-mlx"
    assert cli.main(["convert", "hibiki-zero-3b-pytorch-bf16", "-o", str(out), "--verify"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "check: OK" in text and "max |diff| 0" in text
    assert check_model(from_dir(out)).config.moshi_mac.depformer_weights_per_step_schedule
    assert cli.main(["convert", "hibiki-zero-3b-pytorch-bf16", "-o", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert cli.main(["convert", "hibiki-zero-3b-pytorch-bf16", "-o", str(out), "--force",
                     "--quantize", "q8"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == [
        "model.q8.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors"]


def test_convert_failure_leaves_nothing(make_model, tmp_path):
    """A source that fails its check: one-line error, no output, no temp folder."""
    src = official_folder(make_model, tmp_path, "moshi-7b")
    with pytest.raises(MoshiMacError, match="does not match"):
        convert(src, tmp_path / "out", config="hibiki-1b")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    with pytest.raises(MoshiMacError, match="already"):
        convert(make_model("moshi-7b", quantize="q8"), tmp_path / "out2", "q4")


def test_convert_streams_one_group_at_a_time(tmp_path, shared_mimi):
    """MLX's peak memory while converting a ~40 MB PyTorch checkpoint (24 layers) stays
    under a tenth of the file: tensors are evaluated and dropped one at a time."""
    from moshi_mac.random_model import make_random_model, tiny_config

    cfg = tiny_config(load_config(ROOT / "configs" / "hibiki-zero-3b.toml"))
    t = cfg.transformer
    t.num_layers, t.d_model, t.num_heads, t.dim_feedforward = 24, 256, 8, 6 * 256
    src = make_random_model(cfg.validate(), tmp_path / "src", layout="pytorch", mimi=shared_mimi).folder
    size = (src / "model.safetensors").stat().st_size
    assert size > 30e6
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    convert(src, tmp_path / "out")
    assert mx.get_peak_memory() - base < size / 10
    # Shared depformer weights (schedule) are written for every slice, equal.
    out = mx.load(str(tmp_path / "out" / "model.safetensors"))
    s = "depformer.slices.{}.transformer.layers.0.self_attn.in_proj.weight"
    assert mx.array_equal(out[s.format(8)], out[s.format(15)]).item()
    assert not mx.array_equal(out[s.format(7)], out[s.format(8)]).item()
    # The names cover the MLX layout exactly.
    assert set(out) == set(expected_mlx_shapes(cfg))
