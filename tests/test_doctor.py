"""`moshi-mac doctor`: a full run on a tiny random model, and every check both passing
and failing (a broken Mimi file, a NaN-poisoned tensor, foreign reference weights, an
identity codec, a crafted quiet PAD-only model, fake audio devices, ...)."""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import mlx.core as mx
import numpy as np

from moshi_mac import cli
from moshi_mac import doctor as D
from moshi_mac.doctor import base, behaviour, codec_check, numerics, system
from moshi_mac.codec import FRAME_SIZE
from moshi_mac.config import load_config
from moshi_mac.modeldir import from_dir
from moshi_mac.speech_sample import speech_sample
from moshi_mac.safetensors_io import save_safetensors_streamed
from moshi_mac.weights import load_lm

SECONDS = 1.2  # 15 frames: enough for every check, quick with the real rustymimi


class IdentityCodec:
    """Encodes each frame to one code that indexes the stored frame: a perfect codec."""

    def __init__(self, num_codebooks: int = 8, gain: float = 1.0):
        self.num_codebooks, self.gain, self.frames = num_codebooks, gain, []

    def encode_step(self, pcm):
        self.frames.append(np.asarray(pcm, np.float32).copy())
        return np.full(self.num_codebooks, (len(self.frames) - 1) % 2048, np.int32)

    def decode_step(self, codes):
        if int(codes[0]) < len(self.frames):
            return self.gain * self.frames[int(codes[0])]
        return np.zeros(FRAME_SIZE, np.float32)

    def encode(self, pcm):
        pcm = np.pad(pcm, (0, -len(pcm) % FRAME_SIZE)).reshape(-1, FRAME_SIZE)
        return np.stack([self.encode_step(f) for f in pcm], axis=1)

    def decode(self, codes):
        return np.concatenate([self.decode_step(codes[:, t]) for t in range(codes.shape[1])])


class QuietCodec(IdentityCodec):
    """Decodes anything to a -70 dBFS hiss (what a sound Mimi gives for silence codes)."""

    def decode_step(self, codes):
        return (3e-4 * np.random.default_rng(int(codes[0])).standard_normal(FRAME_SIZE)).astype(np.float32)


def _copy(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst, copy_function=os.link)
    return dst


def _rows(results):
    return {r.name: r for r in results}


# ---------------------------------------------------------------------------------------
# The whole battery
# ---------------------------------------------------------------------------------------

def test_full_run_on_tiny_random_model(make_model, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    folder = make_model("hibiki-1b")
    code = cli.main(["doctor", "--weights", str(folder), "--seconds", str(SECONDS), "--no-audio",
                     "--json", str(folder.parent / "doctor.json")])
    out = capsys.readouterr().out
    print(out)
    assert code == 1  # behaviour fails on random weights
    for name in ("consistency", "MLX", "memory", "audio (PortAudio)", "codec round trip",
                 "weights finite", "quantized vs bf16", "silence in", "text stream", "speed"):
        assert name in out
    import json

    report = json.loads((folder.parent / "doctor.json").read_text())
    rows = {r["name"]: r["status"] for r in report["checks"]}
    assert rows["consistency"] == rows["weights finite"] == rows["MLX"] == base.PASS
    assert rows["audio (PortAudio)"] == rows["quantized vs bf16"] == base.SKIP
    # A random Mimi decodes to loud noise; random text logits are not mostly PAD.
    assert rows["codec round trip"] == rows["silence in"] == rows["text stream"] == base.FAIL


def test_exit_codes_and_strict():
    ok = [base.CheckResult("a", base.PASS, ""), base.CheckResult("b", base.SKIP, "")]
    assert D.exit_code(ok) == 0 and D.exit_code(ok, strict=True) == 1
    assert D.exit_code(ok + [base.CheckResult("c", base.FAIL, "")]) == 1
    assert D.summary(ok) == "1 passed, 0 failed, 1 skipped"


# ---------------------------------------------------------------------------------------
# Consistency and numerics: a broken Mimi file, a NaN-poisoned tensor
# ---------------------------------------------------------------------------------------

def test_consistency_passes_and_fails_on_broken_mimi(make_model, tmp_path):
    good = make_model("hibiki-1b")
    res, cfg, report = D.check_consistency(from_dir(good))
    assert res.status == base.PASS and cfg is not None and report is not None
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in good.iterdir():
        if f.name.startswith("tokenizer-"):
            (bad / f.name).write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        else:
            os.link(f, bad / f.name)
    results = _rows(D.run_doctor(from_dir(bad), D.DoctorOptions(seconds=SECONDS, audio=False)))
    assert results["consistency"].status == base.FAIL and "truncated" in results["consistency"].figures
    assert results["codec round trip"].status == base.FAIL
    assert results["weights finite"].status == base.PASS  # the LM itself is fine
    assert results["silence in"].status == base.FAIL


def test_finite_passes_and_fails_on_nan_tensor(make_model, tmp_path):
    folder = make_model("hibiki-1b")
    cfg = load_config(folder / "config.toml")
    codes = numerics.probe_codes(cfg, steps=8)
    assert numerics.check_finite(load_lm(folder / "model.safetensors", cfg)[0], codes).status == base.PASS
    bad = _copy(folder, tmp_path / "nan")
    (bad / "model.safetensors").unlink()
    tensors = dict(mx.load(str(folder / "model.safetensors")))
    w = tensors["transformer.layers.1.gating.linear_in.weight"]
    tensors["transformer.layers.1.gating.linear_in.weight"] = mx.where(
        mx.arange(w.shape[1])[None, :] == 5, mx.array(float("nan"), w.dtype), w)
    save_safetensors_streamed(bad / "model.safetensors", tensors)
    res = numerics.check_finite(load_lm(bad / "model.safetensors", cfg)[0], codes)
    assert res.status == base.FAIL and res.figures.startswith(f"{w.shape[0]} non-finite")


def test_quantized_vs_bf16_pass_fail_skip(make_model, tmp_path):
    bf16 = make_model("hibiki-zero-3b")
    q8 = make_model("hibiki-zero-3b", quantize="q8")
    other = make_model("hibiki-zero-3b", seed=1)
    cfg = load_config(q8 / "config.toml")
    codes = numerics.probe_codes(cfg)
    model, report = load_lm(q8 / "model.q8.safetensors", cfg)
    ok = numerics.check_quantized(model, report.quantization, bf16 / "model.safetensors", cfg, codes)
    assert ok.status == base.PASS, ok.figures
    bad = numerics.check_quantized(model, report.quantization, other / "model.safetensors", cfg, codes)
    assert bad.status == base.FAIL, bad.figures
    skip = numerics.check_quantized(model, report.quantization, None, cfg, codes)
    assert skip.status == base.SKIP and "no bf16 weights present" in skip.figures
    plain, plain_report = load_lm(bf16 / "model.safetensors", cfg)
    assert numerics.check_quantized(plain, plain_report.quantization, None, cfg, codes).status == base.SKIP


def test_reference_is_found_beside_and_in_the_registry(make_model, tmp_path, monkeypatch):
    both = _copy(make_model("moshi-7b", quantize="q8"), tmp_path / "both")
    os.link(make_model("moshi-7b") / "model.safetensors", both / "model.safetensors")
    files, ref, _ = D.resolve_for_doctor(None, both, None)
    assert files.weights.name == "model.q8.safetensors" and ref == both / "model.safetensors"
    weights = tmp_path / "weights"
    _copy(make_model("moshi-7b", quantize="q8"), weights / "moshiko-q8")
    monkeypatch.setenv("MOSHI_MAC_WEIGHTS", str(weights))
    files, ref, why = D.resolve_for_doctor("moshiko-q8", None, None, download=False)
    assert ref is None and "moshiko-bf16" in why
    _copy(make_model("moshi-7b"), weights / "moshiko-bf16")
    files, ref, _ = D.resolve_for_doctor("moshiko-q8", None, None, download=False)
    assert files.expect_quant == "q8" and ref == weights / "moshiko-bf16" / "model.safetensors"


# ---------------------------------------------------------------------------------------
# Platform
# ---------------------------------------------------------------------------------------

def test_mlx_check(monkeypatch):
    assert system.check_mlx().status == base.PASS
    monkeypatch.setattr(D.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    assert system.check_mlx().status == base.FAIL


def test_memory_check(make_model):
    files = from_dir(make_model("hibiki-1b"))
    cfg = load_config(files.config)
    assert system.check_memory(files, cfg, (64 * base.GiB, "available")).status == base.PASS
    res = system.check_memory(files, cfg, (2 ** 20, "available"))
    assert res.status == base.FAIL and "needs" in res.figures


def _fake_sounddevice(rates):
    def check(device=None, samplerate=None, channels=None):
        if samplerate not in rates:
            raise ValueError("Invalid sample rate")

    def query(kind=None):
        if not rates:
            raise ValueError(f"No {kind} device")
        return {"name": f"Fake {kind}", "index": 0}

    return types.SimpleNamespace(query_devices=query, check_input_settings=check,
                                 check_output_settings=check,
                                 get_portaudio_version=lambda: (0, "PortAudio V19 fake"))


def test_audio_check(monkeypatch):
    assert system.check_audio(enabled=False).status == base.SKIP
    monkeypatch.setitem(sys.modules, "sounddevice", _fake_sounddevice({48000, 44100}))
    res = system.check_audio()
    assert res.status == base.PASS and "'Fake input' (48k, 44.1k)" in res.figures
    monkeypatch.setitem(sys.modules, "sounddevice", _fake_sounddevice(set()))
    res = system.check_audio()
    assert res.status == base.FAIL and "--no-audio" in res.figures
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails: no PortAudio
    assert "PortAudio not found" in system.check_audio().figures


# ---------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------

def test_speech_sample_is_deterministic_speech_level():
    x = speech_sample(2.0)
    assert x.dtype == np.float32 and x.shape == (48000,) and np.array_equal(x, speech_sample(2.0))
    assert not np.array_equal(x, speech_sample(2.0, seed=1))
    active = np.abs(x) > 1e-3
    assert -29 < base._db(float(np.sqrt(np.mean(x[active] ** 2)))) < -23 and np.abs(x).max() < 1


def test_codec_check_identity_passes_random_mimi_fails(shared_mimi):
    from moshi_mac.codec import Mimi

    x = speech_sample(SECONDS)
    res, codes = codec_check.check_codec(IdentityCodec(), x)
    assert res.status == base.PASS and "mel distance 0.0 dB" in res.figures and codes.shape[0] == 8
    assert codec_check.check_codec(IdentityCodec(gain=0.25), x)[0].status == base.FAIL  # -12 dB level
    assert codec_check.check_codec(QuietCodec(), x)[0].status == base.FAIL
    res, _ = codec_check.check_codec(Mimi(shared_mimi, 8), x)
    assert res.status == base.FAIL, res.figures


def test_codec_figures_reference_points():
    """The documented reference points: mild degradations pass, unrelated audio fails."""
    x = speech_sample(2.0)
    rng = np.random.default_rng(0)
    noisy = x + 0.1 * np.sqrt(np.mean(x ** 2)) * rng.standard_normal(x.size)  # 20 dB SNR
    late = np.r_[np.zeros(300, np.float32), x[:-300]]
    f = codec_check.codec_figures(x, late)
    assert f.lag == 300 and f.snr_db > 100 and f.mel_db < 0.1
    f = codec_check.codec_figures(x, noisy)
    assert 19 < f.snr_db < 21 and f.mel_db < 1.5
    f = codec_check.codec_figures(x, speech_sample(2.0, seed=5))
    assert f.mel_db > base.CODEC_MAX_MEL_DB and f.snr_db < base.CODEC_MIN_SNR_DB


# ---------------------------------------------------------------------------------------
# Behaviour and speed
# ---------------------------------------------------------------------------------------

def _run(text, audio_level=0.0, lm=0.01, codec=0.01, steps=None):
    steps = steps or len(text)
    noise = np.random.default_rng(0).standard_normal(steps * FRAME_SIZE)
    audio = (audio_level * noise).astype(np.float32)
    return behaviour.GenRun(list(text), audio, [lm] * steps, [codec / 2] * steps, [codec / 2] * steps)


def test_silence_and_text_checks_on_crafted_runs(make_model):
    cfg = load_config(make_model("hibiki-1b") / "config.toml")
    quiet = _run([3] * 20, audio_level=1e-3)
    assert behaviour.check_silence(quiet, "hibiki").status == base.PASS
    assert behaviour.check_silence(_run([3] * 20, audio_level=0.05), "hibiki").status == base.FAIL
    assert behaviour.check_silence(_run([3] * 20, audio_level=0.05), "moshi").status == base.PASS  # speech level
    assert behaviour.check_silence(_run([3] * 20, audio_level=0.5), "moshi").status == base.FAIL  # clipping
    talk = [3, 3, 57, 3, 3, 912, 3, 0, 3, 44, 3, 3, 3, 120, 3, 3, 3, 3, 8, 3] * 2
    assert behaviour.check_text(quiet, cfg).status == base.PASS
    assert behaviour.check_text(_run(talk), cfg).status == base.PASS
    assert behaviour.check_text(_run(list(range(10, 50))), cfg).status == base.FAIL  # no PAD: random
    stuck = [3] * 10 + [77] * 6 + [3] * 10
    assert behaviour.check_text(_run(stuck), cfg).status == base.FAIL
    alternating = [77, 3] * 10
    assert behaviour.check_text(_run(alternating), cfg).status == base.FAIL  # one piece over and over
    assert behaviour.check_text(_run([3, 2, 3, 2, 3]), cfg).status == base.FAIL  # EOS twice


def test_speed_check():
    fast = behaviour.check_speed(_run([3] * 20, lm=0.02, codec=0.02))  # 25 steps/s
    assert fast.status == base.PASS and "live: OK" in fast.figures
    marginal = behaviour.check_speed(_run([3] * 20, lm=0.05, codec=0.025))  # 13.3 steps/s
    assert marginal.status == base.FAIL and "marginal" in marginal.figures
    slow = behaviour.check_speed(_run([3] * 20, lm=0.2, codec=0.1))
    assert slow.status == base.FAIL and "too slow" in slow.figures and "LM bounds" in slow.figures


def _quiet_pad_model(folder: Path):
    """A tiny model crafted to always emit PAD: every input embedding is the same vector,
    the layers add nothing, so the output is a constant direction the PAD row matches."""
    cfg = load_config(folder / "config.toml")
    model, _ = load_lm(folder / "model.safetensors", cfg)
    d = cfg.transformer.d_model
    model.text_emb.weight = mx.ones_like(model.text_emb.weight)
    for emb in model.audio_embs:
        emb.weight = mx.ones_like(emb.weight)
    for layer in model.transformer.layers:
        layer.self_attn.out_proj.weight = mx.zeros_like(layer.self_attn.out_proj.weight)
        layer.gating.linear_out.weight = mx.zeros_like(layer.gating.linear_out.weight)
    for cond in (model.condition_provider.conditioners.values() if model.condition_provider else []):
        cond.output_proj.weight = mx.zeros_like(cond.output_proj.weight)
    w = mx.zeros_like(model.text_linear.weight)
    w[3] = mx.ones((d,), w.dtype)
    model.text_linear.weight = w
    return model, cfg


def test_generation_checks_pass_on_crafted_model_and_fail_on_random(make_model, shared_mimi):
    from moshi_mac.codec import Mimi

    folder = make_model("hibiki-1b")
    silence = np.zeros(int(SECONDS * 24000), np.float32)
    model, cfg = _quiet_pad_model(folder)
    run = behaviour.run_generation(model, QuietCodec(cfg.user_codebooks), QuietCodec(cfg.dep_q), silence)
    assert len(run.text) == len(silence) // FRAME_SIZE - max(cfg.delays)
    assert set(run.text) == {3}
    assert behaviour.check_text(run, cfg).status == base.PASS
    assert behaviour.check_silence(run, "hibiki").status == base.PASS
    random_model, _ = load_lm(folder / "model.safetensors", cfg)
    run = behaviour.run_generation(random_model, Mimi(shared_mimi, cfg.user_codebooks),
                           Mimi(shared_mimi, cfg.dep_q), silence)
    assert behaviour.check_text(run, cfg).status == base.FAIL
    assert behaviour.check_silence(run, "hibiki").status == base.FAIL
    assert behaviour.check_speed(run).figures.startswith("LM ")


def test_doctor_cli_bad_folder_is_one_line(tmp_path, capsys):
    assert cli.main(["doctor", "--weights", str(tmp_path / "missing"), "--no-audio"]) == 1
    err = capsys.readouterr().err
    assert "no such directory" in err and "Traceback" not in err
