"""Weights: make-random-model -> check round trips, and one clear line per mismatch."""

from __future__ import annotations

import shutil
import subprocess
import sys

import mlx.core as mx
import pytest

from moshi_mac import cli
from moshi_mac.config import load_config
from moshi_mac.mimi_random import write_random_mimi
from moshi_mac.modeldir import check_model, from_dir
from moshi_mac.tokenizer import train_random_tokenizer
from moshi_mac.safetensors_io import save_safetensors_streamed
from moshi_mac.weights import load_lm, read_header

from .conftest import CONFIG_NAMES, ROOT

VARIANTS = [("mlx", None), ("mlx", "q8"), ("mlx", "q4"), ("pytorch", None)]


@pytest.mark.parametrize("layout,quant", VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_round_trip_make_then_check(make_model, name, layout, quant):
    folder = make_model(name, quantize=quant, layout=layout)
    res = check_model(from_dir(folder))
    assert res.weights.layout == layout
    assert res.weights.quantization.short == (quant or "bf16")
    if quant:
        bits, group = {"q8": (8, 64), "q4": (4, 32)}[quant]
        assert set(res.weights.quantization.modules.values()) == {(bits, group)}
        # the conditioner LUT stays unquantized (moshi_mlx fails there)
        assert not any(m.startswith("condition_provider") for m in res.weights.quantization.modules)
    assert res.mimi_codebooks == 32
    assert res.tokenizer_vocab == res.config.text_out_vocab_size


@pytest.mark.parametrize("layout,quant", VARIANTS, ids=lambda v: str(v))
def test_loaded_model_runs(make_model, layout, quant):
    folder = make_model("hibiki-1b", quantize=quant, layout=layout)
    files = from_dir(folder)
    cfg = load_config(files.config)
    model, report = load_lm(files.weights, cfg)
    # Hibiki: the EOS text embedding row is aliased to PAD's at load.
    assert mx.array_equal(model.text_emb(mx.array([2])), model.text_emb(mx.array([3]))).item()
    _, logits = model.forward_text(mx.zeros((1, 1 + cfg.audio_codebooks, 3), dtype=mx.int32))
    assert logits.shape == (1, 3, cfg.text_out_vocab_size)
    assert mx.isfinite(logits).all().item()


@pytest.mark.parametrize("quant", ["q8", "q4"])
def test_quantized_model_dtypes_follow_the_backend(make_model, quant):
    """On the CPU backend a quantized model runs float32 activations (MLX's CPU quantized
    matmul is ~8x slower with bf16 input): norms and quantized embeddings' scales in
    float32; linear layers keep the file's bf16 scales; the packed weights are untouched."""
    from mlx.utils import tree_flatten

    from moshi_mac.weights import default_dtype

    folder = make_model("moshi-7b", quantize=quant)
    cfg = load_config(from_dir(folder).config)
    model, report = load_lm(from_dir(folder).weights, cfg)
    want = default_dtype(cfg, quantized=True)
    assert model.dtype == want
    params = dict(tree_flatten(model.parameters()))
    assert params["text_emb.scales"].dtype == want and params["out_norm.weight"].dtype == want
    assert params["text_linear.scales"].dtype == mx.bfloat16  # as the file has it
    assert params["text_linear.weight"].dtype == mx.uint32
    codes = mx.zeros((1, 1 + cfg.audio_codebooks, 2), dtype=mx.int32)
    out, logits = model.forward_text(codes)
    assert out.dtype == want and logits.dtype == want
    if mx.default_device() == mx.cpu:
        assert want == mx.float32
        assert default_dtype(cfg, quantized=False) == mx.float32  # tiny: fp32 anyway
        assert default_dtype(None, quantized=True) == mx.float32
        assert default_dtype(None) == mx.bfloat16


def test_pytorch_and_mlx_layouts_give_the_same_model(make_model):
    a = make_model("hibiki-zero-3b", layout="mlx")
    b = make_model("hibiki-zero-3b", layout="pytorch")
    cfg = load_config(from_dir(a).config)
    ma, _ = load_lm(from_dir(a).weights, cfg)
    mb, _ = load_lm(from_dir(b).weights, cfg)
    codes = mx.random.randint(0, 1000, (1, 1 + cfg.audio_codebooks, 5))
    assert mx.allclose(ma.forward_text(codes)[1], mb.forward_text(codes)[1]).item()


# ---------------------------------------------------------------------------------------
# Mismatches: each gives its own one-line message and exit code 2 through the CLI
# ---------------------------------------------------------------------------------------

def _copy(make_model, name="hibiki-1b", tmp=None, **kw):
    src = make_model(name, **kw)
    dst = tmp / "model"
    shutil.copytree(src, dst)
    return dst


def _check_fails(capsys, folder, *needles):
    code = cli.main(["check", "--weights", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    flat = " ".join(err.split())  # rich wraps long lines on a narrow terminal
    for n in needles:
        assert n in flat, flat
    assert "Traceback" not in err
    return flat


def _rewrite(path, fn):
    tensors = dict(mx.load(str(path)))
    fn(tensors)
    save_safetensors_streamed(path, tensors)


def test_mismatch_wrong_model_family(make_model, tmp_path, capsys):
    folder = _copy(make_model, "moshi-7b", tmp_path)
    shutil.copy(ROOT / "configs" / "hibiki-1b.toml", folder / "config.toml")
    msg = _check_fails(capsys, folder, "does not match config.toml (hibiki-1b)", "text_emb", "48001x2048")
    assert "1001x64" in msg  # what the file looks like


def test_mismatch_wrong_quantization(make_model, tmp_path):
    folder = make_model("moshi-7b", quantize="q4")
    files = from_dir(folder)
    files.expect_quant = "q8"  # e.g. the moshiko-q8 registry entry
    with pytest.raises(Exception) as e:
        check_model(files)
    assert getattr(e.value, "exit_code", None) == 2
    assert "holds q4 (group 32) weights, but q8 was asked for" in str(e.value)


def test_mismatch_truncated_file(make_model, tmp_path, capsys):
    folder = _copy(make_model, tmp=tmp_path)
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    _check_fails(capsys, folder, "is truncated", "re-download")


def test_mismatch_missing_tensor(make_model, tmp_path, capsys):
    folder = _copy(make_model, tmp=tmp_path)
    _rewrite(folder / "model.safetensors", lambda t: t.pop("transformer.layers.1.norm2.weight"))
    _check_fails(capsys, folder, "missing tensor transformer.layers.1.norm2.weight")


def test_mismatch_extra_tensor(make_model, tmp_path, capsys):
    folder = _copy(make_model, tmp=tmp_path)
    _rewrite(folder / "model.safetensors", lambda t: t.update({"transformer.layers.9.norm1.weight": mx.ones((64,))}))
    _check_fails(capsys, folder, "unexpected tensor transformer.layers.9.norm1.weight")


def test_mismatch_wrong_dtype(make_model, tmp_path, capsys):
    folder = _copy(make_model, tmp=tmp_path)
    _rewrite(folder / "model.safetensors",
             lambda t: t.update({"out_norm.weight": t["out_norm.weight"].astype(mx.int32)}))
    _check_fails(capsys, folder, "out_norm.weight has dtype I32")


def test_mismatch_tokenizer_vocab(make_model, tmp_path, capsys):
    folder = _copy(make_model, tmp=tmp_path)
    for p in folder.glob("*.model"):
        p.unlink()
    train_random_tokenizer(folder / "tokenizer_spm_500", 500)
    _check_fails(capsys, folder, "500", "1000")


def test_mismatch_mimi_codebooks(make_model, tmp_path, capsys):
    folder = _copy(make_model, "hibiki-2b", tmp_path)  # needs 16 codebooks
    mimi = next(folder.glob("tokenizer-*.safetensors"))
    mimi.unlink()
    write_random_mimi(mimi, num_codebooks=8)
    _check_fails(capsys, folder, "8 codebooks", "16")


def test_mismatch_lm_weights_given_as_mimi(make_model, tmp_path, capsys):
    folder = _copy(make_model, tmp=tmp_path)
    mimi = next(folder.glob("tokenizer-*.safetensors"))
    shutil.copy(folder / "model.safetensors", mimi)
    _check_fails(capsys, folder, "Mimi")


def test_mismatch_corrupt_toml(make_model, tmp_path, capsys):
    folder = _copy(make_model, tmp=tmp_path)
    (folder / "config.toml").write_text("[transformer\nd_model = ")
    _check_fails(capsys, folder, "not valid TOML")


def test_check_cli_subprocess_exit_code(make_model, tmp_path):
    """The real command: exit code 2, one line on stderr, no traceback."""
    folder = _copy(make_model, "moshi-7b", tmp_path)
    shutil.copy(ROOT / "configs" / "hibiki-1b.toml", folder / "config.toml")
    r = subprocess.run([sys.executable, "-m", "moshi_mac.cli", "check", "--weights", str(folder)],
                       capture_output=True, text=True, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_header_reader_rejects_non_safetensors(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"hello world, not a model")
    with pytest.raises(Exception, match="is not a safetensors file"):
        read_header(p)


def _sparse_real_shape_weights(cfg, path):
    """A real-shape bf16 MLX-layout file whose data is a hole: `check` reads headers only."""
    from moshi_mac.weights import expected_mlx_shapes

    from .header_only import write_header_only

    write_header_only(path, {k: ("BF16", s) for k, s in expected_mlx_shapes(cfg).items()})


def test_classic_failure_real_shapes(make_model, tmp_path, capsys):
    """The predecessor's weeks-long bug: Moshi-7B weights (text_emb 32001x4096) with the
    Hibiki-1B config (48001x2048), at the real shapes, named in one line."""
    folder = _copy(make_model, "moshi-7b", tmp_path)
    (folder / "model.safetensors").unlink()
    _sparse_real_shape_weights(load_config(ROOT / "configs" / "moshi-7b.toml"), folder / "model.safetensors")
    shutil.copy(ROOT / "configs" / "moshi-7b.toml", folder / "config.toml")
    for p in folder.glob("*.model"):
        p.unlink()
    train_random_tokenizer(folder / "tokenizer_spm_32000", 32000)
    assert check_model(from_dir(folder)).weights.n_params > 7e9  # the right config passes
    shutil.copy(ROOT / "configs" / "hibiki-1b.toml", folder / "config.toml")
    _check_fails(capsys, folder, "text_emb.weight is 32001x4096, expected 48001x2048",
                 "looks like Moshi 7B", "expects text_emb 48001x2048, 16 layers")
