"""`moshi-mac doctor`: objective self-checks of a model, its codec and this machine.

Runs a battery of checks on `--model NAME` or `--weights DIR` and prints one table row per
check (pass / FAIL / skip, the measured figures, the threshold). Exit code 0 when no check
failed (`--strict`: and none was skipped); 1 otherwise. Nothing needs listening.

Checks, and where each threshold comes from:

- consistency: config vs LM weights vs tokenizer vs Mimi (every tensor's name, shape and
  dtype, the tokenizer's vocabulary, Mimi's codebook count). Exact: any mismatch fails.
- MLX: a small matmul on the default device must match numpy within 1e-3 (float32
  round-off is ~1e-6 here); on macOS the Metal GPU must be available (the CPU backend is
  ~10x slower, too slow for live use).
- memory: needed = LM tensors at the run dtype (float32 on the CPU, bfloat16 on a GPU,
  packed weights as stored) + the KV caches at full context + Mimi (its file size) + 15%
  and 0.5 GiB for activations and the runtime; fails when that exceeds the memory
  available now (on a Mac GPU also Metal's recommended working set).
- audio: PortAudio loads and the default input and output devices exist and accept one
  of 24/48/44.1/16 kHz mono (moshi-mac resamples anything else). `--no-audio` skips it.
- weights finite: no NaN/Inf in any weight, and none in the teacher-forced logits
  (`scoring.score`) of a few seconds of probe codes. Exact: one non-finite value fails.
- quantized vs bf16: top-1 agreement (text and audio, the lower counts) and mean
  KL(bf16 || quantized) of the logits on the same teacher-forced probe codes. Limits: q8
  top-1 >= 85%, KL <= 0.02 nats; q4 top-1 >= 75%, KL <= 0.15 nats. Where from: for 7-8B
  LLMs llama.cpp measures q8_0 at KL ~0.001 with ~99% same top token and 4-bit formats
  at KL ~0.04 with ~90% (llama.cpp PRs #6936, #12557); the limits leave 3-20x margin on
  KL and ~10 points on top-1, while a file of other weights gives ~1/vocabulary agreement
  and KL of nats. Random weights are the worst case (flat logits): on the real-shape
  random hibiki-1b, `doctor` measures q8 at 96.9% / 93.0% (text / audio), KL 0.0063
  (pass), and q4 at ~9% / 26%, KL 0.73 (fail). Skipped, not passed, when the model is not
  quantized or no bf16 weights are present (a registry sibling such as moshiko-bf16 on
  disk, `--reference`, or model.safetensors beside model.q8/q4.safetensors in the folder).
- codec round trip: the built-in speech sample (`speech_sample`, --seconds long) through
  Mimi's encoder and decoder at the model's codebook count. Figures: SNR (scale-invariant,
  at the best alignment within +-2 frames), mel distance (mean |dB| difference of 80-band
  log-mel spectrograms, output scaled to the input's RMS, over the cells within 40 dB of
  the input's peak) and the level change. Pass: mel distance <= 7.5 dB, level within
  +-6 dB, SNR >= -22 dB. Where from: Mimi is trained with adversarial and feature losses
  only, so a sound Mimi keeps the spectrum but not the waveform's phase, and its SNR is
  low; the SNR floor only rejects output unrelated to the input. Reference points measured
  on the sample (tests/test_doctor.py keeps some): white noise at 20 / 10 dB SNR gives mel
  0.4 / 3.3 dB; a 4 kHz low-pass 0.7 dB; the 300-3400 Hz telephone band 6.0 dB (SNR
  3 dB); Griffin-Lim resynthesis (magnitudes kept, phase re-estimated) 1.2-3.4 dB with SNR
  -9 to -13 dB; random phase 3.9 dB, SNR -17 dB. Unrelated audio: another speech-like
  sample 10.0 dB, SNR -26.5 dB; white noise 11.7 dB, SNR -39 dB; silence: level -93 dB;
  a random-weight Mimi 11.6-14.7 dB, SNR -34 to -40 dB, level +7 dB. Not yet calibrated
  on the real Mimi weights (no download on the build machines): run `doctor` on a Mac
  with a real model to see its figures.
- silence in: Mimi-encoded silence fed for `--seconds`, the generated audio decoded. RMS
  and peak after the first 2 frames. Hibiki (translation; nothing to translate): RMS <=
  -40 dBFS and peak <= -12 dBFS, i.e. 14 dB under the ITU-T P.56 nominal speech level of
  -26 dBFS, with no clicks. Moshi talks on its own, so for it the check only requires no
  shouting or clipping: RMS <= -16 dBFS (10 dB over nominal speech), peak <= -0.1 dBFS.
- text stream: over the same run, the share of PAD/end-of-padding tokens must be >= 50%
  (speech at ~3 words/s gives 3-4 text tokens/s against 12.5 frames/s, so >= ~70% PAD
  even when the model talks; random weights give ~2/vocabulary), at most one EOS, no
  ordinary token repeated 5 steps in a row (400 ms of one piece: a stuck sampler), and
  no token making more than half of the ordinary tokens once there are 8 or more.
- speed: steps/s of the LM alone and of LM + Mimi encode + decode (sequential, the
  conservative figure), after 3 warm-up steps, against Mimi's 12.5 frames/s. Pass at
  >= 1.1x real time: the frame budget is 80 ms and ~10% goes to audio I/O, resampling
  and scheduling jitter in live mode.

On random weights the behavioural checks are expected to fail (the text stream is not
mostly PAD, a random Mimi decodes codes to loud noise). The checks take their codec and
model as arguments, so tests can show each one both passing and failing.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .codec import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from .errors import ModelNotFoundError, MoshiMacError

PASS, FAIL, SKIP = "pass", "FAIL", "skip"
GiB = 2 ** 30

# Thresholds (see the module docstring for where each comes from).
MLX_TOL = 1e-3
MEMORY_MARGIN = 1.15
MEMORY_OVERHEAD = 0.5 * GiB
AUDIO_RATES = (24000, 48000, 44100, 16000)
QUANT_LIMITS = {8: (0.85, 0.02), 4: (0.75, 0.15)}  # bits -> (min top-1, max KL nats)
CODEC_MAX_MEL_DB = 7.5
CODEC_MAX_LEVEL_DB = 6.0
CODEC_MIN_SNR_DB = -22.0
CODEC_MAX_LAG = 2 * FRAME_SIZE
MEL_BANDS = 80
MEL_FLOOR_DB = 40.0
SILENCE_SKIP_FRAMES = 2
SILENCE_LIMITS = {"hibiki": (-40.0, -12.0), "moshi": (-16.0, -0.1)}  # (max RMS, max peak) dBFS
TEXT_MIN_PAD = 0.5
TEXT_MAX_EOS = 1
TEXT_MAX_RUN = 4
TEXT_MAX_SHARE = 0.5
TEXT_SHARE_MIN_TOKENS = 8
SPEED_MIN_RTF = 1.1
WARMUP_STEPS = 3
PROBE_STEPS = 32
EOS_ID, PAD_ID = 2, 3


@dataclass
class CheckResult:
    name: str
    status: str  # PASS | FAIL | SKIP
    figures: str
    threshold: str = ""
    seconds: float = 0.0


def _result(name: str, ok: bool, figures: str, threshold: str) -> CheckResult:
    return CheckResult(name, PASS if ok else FAIL, figures, threshold)


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _db(x: float) -> float:
    return 20 * math.log10(max(x, 1e-10))


# ---------------------------------------------------------------------------------------
# Platform
# ---------------------------------------------------------------------------------------

def check_mlx() -> CheckResult:
    import mlx.core as mx

    device = mx.default_device()
    info = mx.device_info()
    name = info.get("device_name") or info.get("architecture") or "?"
    metal = mx.metal.is_available()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 64), np.float32), rng.standard_normal((64, 64), np.float32)
    err = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a @ b).max())
    figures = (f"MLX {mx.__version__}, {device.type.name.lower()} device ({name}), "
               f"Metal {'available' if metal else 'not available'}, matmul error {err:.1e}")
    ok = err <= MLX_TOL
    threshold = f"matmul error <= {MLX_TOL:g}"
    if platform.system() == "Darwin":
        ok = ok and metal and device == mx.gpu
        threshold += "; Metal GPU on macOS"
    return _result("MLX", ok, figures, threshold)


def available_memory() -> tuple[int, str]:
    """Bytes of memory available now, and where the figure comes from."""
    try:
        import psutil
        return int(psutil.virtual_memory().available), "available"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "total (no psutil)"


def memory_needed(files, cfg) -> int:
    """Bytes to run the model: see the module docstring (memory)."""
    import mlx.core as mx

    from .weights import FLOAT_DTYPES, default_dtype, read_header

    itemsize = 4 if default_dtype() == mx.float32 else 2
    total = 0
    for info in read_header(files.weights).values():
        n = math.prod(info.shape)
        total += n * itemsize if info.dtype in FLOAT_DTYPES else n * 4 if info.dtype == "U32" else n
    t = cfg.transformer
    batch = 2 if cfg.moshi_mac.generation.cfg_coef != 1.0 else 1
    total += 2 * t.num_layers * t.context * t.num_kv_heads * t.head_dim * itemsize * batch
    total += Path(files.mimi).stat().st_size
    return int(total * MEMORY_MARGIN + MEMORY_OVERHEAD)


def check_memory(files, cfg, available: tuple[int, str] | None = None) -> CheckResult:
    import mlx.core as mx

    needed = memory_needed(files, cfg)
    avail, what = available or available_memory()
    info = mx.device_info()
    limit = info.get("max_recommended_working_set_size")
    figures = f"needs {needed / GiB:.1f} GiB, {avail / GiB:.1f} GiB {what}"
    ok = needed <= avail
    if limit:
        figures += f", Metal working set {limit / GiB:.1f} GiB"
        ok = ok and needed <= limit
    return _result("memory", ok, figures, "needed <= available")


def _device_rates(sd, kind: str) -> str:
    dev = sd.query_devices(kind=kind)
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    ok = []
    for rate in AUDIO_RATES:
        try:
            check(device=dev["index"], samplerate=rate, channels=1)
            ok.append(rate)
        except Exception:  # PortAudioError, ValueError
            pass
    if not ok:
        raise MoshiMacError(f"default {kind} device {dev['name']!r} accepts none of "
                            f"{', '.join(str(r) for r in AUDIO_RATES)} Hz")
    return f"{kind} {dev['name']!r} ({', '.join(f'{r / 1000:g}k' for r in ok)})"


def check_audio(enabled: bool = True) -> CheckResult:
    name, threshold = "audio (PortAudio)", "default in and out devices, a usable rate"
    if not enabled:
        return CheckResult(name, SKIP, "skipped: --no-audio", threshold)
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        return CheckResult(name, FAIL, f"PortAudio not found ({e}); install it "
                           f"(macOS: brew install portaudio) or pass --no-audio", threshold)
    try:
        figures = ", ".join(_device_rates(sd, kind) for kind in ("input", "output"))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return CheckResult(name, FAIL, f"{first}; connect a device, or on a headless "
                           f"machine pass --no-audio", threshold)
    version = str(sd.get_portaudio_version()[1]).split(",")[0]
    return CheckResult(name, PASS, f"{version}; {figures}", threshold)


# ---------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------

def _mel_filters(n_fft: int, bands: int = MEL_BANDS) -> np.ndarray:
    def mel(f):
        return 2595 * np.log10(1 + f / 700.0)

    edges = 700 * (10 ** (np.linspace(mel(0), mel(SAMPLE_RATE / 2), bands + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


def log_mel(x: np.ndarray, n_fft: int = 1024, hop: int = 240) -> np.ndarray:
    """Log-mel power spectrogram in dB, [frames, MEL_BANDS]."""
    x = np.pad(np.asarray(x, np.float64), (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return 10 * np.log10(power @ _mel_filters(n_fft).T + 1e-12)


def mel_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Mean |dB| difference of the log-mel spectrograms of `x` and `y` (scaled to `x`'s
    RMS, so the level is left to its own figure), over the cells where either is within
    MEL_FLOOR_DB of `x`'s loudest cell; both are clamped at that floor."""
    y = np.asarray(y, np.float64) * (np.sqrt(np.mean(np.square(x, dtype=np.float64)))
                                     / (np.sqrt(np.mean(np.square(y, dtype=np.float64))) + 1e-12))
    mx_, my = log_mel(x), log_mel(y)
    n = min(len(mx_), len(my))
    mx_, my = mx_[:n], my[:n]
    floor = mx_.max() - MEL_FLOOR_DB
    cells = (mx_ > floor) | (my > floor)
    if not cells.any():
        return float("inf")
    return float(np.abs(np.maximum(mx_, floor) - np.maximum(my, floor))[cells].mean())


def align(x: np.ndarray, y: np.ndarray, max_lag: int = CODEC_MAX_LAG):
    """Shift `y` against `x` by the lag (|lag| <= max_lag) of the largest cross-correlation;
    return the overlapping parts and the lag (positive: `y` is late)."""
    n = min(len(x), len(y))
    x, y = np.asarray(x[:n], np.float64), np.asarray(y[:n], np.float64)
    size = 1 << (2 * n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size)), size)
    lags = np.r_[0:max_lag + 1, -max_lag:0]
    lag = int(lags[np.argmax(corr[lags])])
    if lag >= 0:
        return x[:n - lag], y[lag:], lag
    return x[-lag:], y[:n + lag], lag


def si_snr(x: np.ndarray, y: np.ndarray) -> float:
    """Scale-invariant SNR (dB) of `y` as an estimate of `x`."""
    alpha = np.dot(x, y) / (np.dot(y, y) + 1e-20)
    target = alpha * y
    return 10 * math.log10((np.dot(target, target) + 1e-20) / (np.dot(x - target, x - target) + 1e-20))


@dataclass
class CodecFigures:
    snr_db: float
    mel_db: float
    level_db: float
    lag: int


def codec_figures(x: np.ndarray, y: np.ndarray) -> CodecFigures:
    xa, ya, lag = align(x, y)
    level = _db(float(np.sqrt(np.mean(ya ** 2)))) - _db(float(np.sqrt(np.mean(xa ** 2))))
    return CodecFigures(si_snr(xa, ya), mel_distance(xa, ya), level, lag)


def check_codec(codec, pcm: np.ndarray) -> tuple[CheckResult, np.ndarray | None]:
    """Round trip `pcm` through `codec` (encode -> decode); returns the check and the codes."""
    threshold = (f"mel <= {CODEC_MAX_MEL_DB:g} dB, level within +-{CODEC_MAX_LEVEL_DB:g} dB, "
                 f"SNR >= {CODEC_MIN_SNR_DB:g} dB")
    codes = codec.encode(pcm)
    out = codec.decode(codes)
    f = codec_figures(pcm, out)
    figures = (f"SNR {f.snr_db:.1f} dB, mel distance {f.mel_db:.1f} dB, level {f.level_db:+.1f} dB "
               f"({codes.shape[0]} codebooks, {len(pcm) / SAMPLE_RATE:.1f} s, lag {f.lag})")
    ok = (f.mel_db <= CODEC_MAX_MEL_DB and abs(f.level_db) <= CODEC_MAX_LEVEL_DB
          and f.snr_db >= CODEC_MIN_SNR_DB)
    return _result("codec round trip", ok, figures, threshold), codes


# ---------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------

def probe_codes(cfg, audio_codes: np.ndarray | None = None, steps: int = PROBE_STEPS,
                seed: int = 0) -> np.ndarray:
    """Teacher-forcing codes [1, 1 + n_q, T]: text mostly PAD with a word piece every 4th
    step; every audio stream from `audio_codes` [K, T'] (e.g. Mimi codes of the speech
    sample, reused cyclically over the codebooks) or seeded random codes."""
    rng = np.random.default_rng(seed)
    if audio_codes is not None and audio_codes.size:
        steps = min(steps, audio_codes.shape[1])
    codes = np.empty((1, 1 + cfg.audio_codebooks, steps), np.int64)
    text = np.full(steps, cfg.moshi_mac.text_padding_id)
    text[1::4] = rng.integers(4, cfg.text_out_vocab_size, size=len(text[1::4]))
    codes[0, 0] = text
    for k in range(cfg.audio_codebooks):
        if audio_codes is not None and audio_codes.size:
            codes[0, 1 + k] = audio_codes[k % audio_codes.shape[0], :steps] % cfg.card
        else:
            codes[0, 1 + k] = rng.integers(0, cfg.card, size=steps)
    return codes


def _conditions(cfg):
    gen = cfg.moshi_mac.generation
    return [dict(gen.conditions)] if cfg.conditioners else None


def score_probe(model, codes: np.ndarray):
    import mlx.core as mx

    from .scoring import score

    out = score(model, mx.array(codes), _conditions(model.cfg))
    mx.eval(out.logits, out.text_logits, out.mask, out.text_mask)
    return out


def _valid(logits, mask) -> np.ndarray:
    """Rows of valid positions: [N, V] float64."""
    lg, m = np.array(logits, dtype=np.float64), np.array(mask)
    return lg[m]


def check_finite(model, codes: np.ndarray) -> CheckResult:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    params = tree_flatten(model.parameters())
    bad = sum(int(mx.sum(~mx.isfinite(p)).item()) for _, p in params
              if p.dtype in (mx.float32, mx.bfloat16, mx.float16))
    out = score_probe(model, codes)
    rows = [_valid(out.text_logits, out.text_mask), _valid(out.logits, out.mask)]
    bad_logits = sum(int((~np.isfinite(r)).sum()) for r in rows)
    n_logits = sum(r.size for r in rows)
    peak = max((float(np.abs(r[np.isfinite(r)]).max()) for r in rows if np.isfinite(r).any()),
               default=float("nan"))
    figures = (f"{bad} non-finite values in {len(params)} weight tensors; {bad_logits} non-finite of "
               f"{_count(n_logits)} logits over {codes.shape[-1]} steps (max |logit| {peak:.1f})")
    return _result("weights finite", bad == 0 and bad_logits == 0, figures, "no NaN/Inf")


@dataclass
class Agreement:
    text_top1: float
    audio_top1: float
    kl: float  # mean KL(reference || other) over text and audio positions, nats
    max_abs: float  # largest |logit difference|

    @property
    def top1(self) -> float:
        return min(self.text_top1, self.audio_top1)

    def describe(self) -> str:
        return (f"top-1 text {100 * self.text_top1:.1f}%, audio {100 * self.audio_top1:.1f}%, "
                f"KL {self.kl:.2g} nats, max |diff| {self.max_abs:.2g}")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logit_agreement(ref, other) -> Agreement:
    """Top-1 agreement and KL of two `ScoreOutput`s on the same codes."""
    tops, kls, diffs = [], [], [0.0]
    for lg, mask in (("text_logits", "text_mask"), ("logits", "mask")):
        valid = getattr(ref, mask)
        a, b = _valid(getattr(ref, lg), valid), _valid(getattr(other, lg), valid)
        if a.size == 0:
            tops.append(1.0)
            continue
        tops.append(float((a.argmax(-1) == b.argmax(-1)).mean()))
        la, lb = _log_softmax(a), _log_softmax(b)
        kls.append((np.exp(la) * (la - lb)).sum(-1))
        diffs.append(float(np.abs(a - b).max()))
    kl = float(np.concatenate(kls).mean()) if kls else 0.0
    return Agreement(tops[0], tops[1], kl, max(diffs))


def check_quantized(model, quant, reference: Path | None, cfg, codes: np.ndarray,
                    why_missing: str = "no bf16 weights present") -> CheckResult:
    from .weights import load_lm

    name = "quantized vs bf16"
    if not quant.modules:
        return CheckResult(name, SKIP, f"skipped: the model is {quant.short}, not quantized")
    bits = max(b for b, _ in quant.modules.values())
    min_top1, max_kl = QUANT_LIMITS.get(bits, QUANT_LIMITS[4])
    threshold = f"q{bits}: top-1 >= {100 * min_top1:g}%, KL <= {max_kl:g}"
    if reference is None:
        return CheckResult(name, SKIP, f"skipped: {why_missing}", threshold)
    out = score_probe(model, codes)
    ref_model, ref_report = load_lm(reference, cfg, "reference")
    if ref_report.quantization.modules:
        return CheckResult(name, FAIL, f"{reference} is {ref_report.quantization.label}, not bf16",
                           threshold)
    ref_out = score_probe(ref_model, codes)
    del ref_model
    a = logit_agreement(ref_out, out)
    return _result(name, a.top1 >= min_top1 and a.kl <= max_kl,
                   f"{quant.short} vs {Path(reference).name}: {a.describe()}", threshold)


# ---------------------------------------------------------------------------------------
# Behaviour and speed: one generation run
# ---------------------------------------------------------------------------------------

@dataclass
class GenRun:
    """What a generation run produced, with per-step timings in seconds."""

    text: list[int]
    audio: np.ndarray
    lm_seconds: list[float] = field(default_factory=list)
    codec_seconds: list[float] = field(default_factory=list)


def run_generation(model, encoder, decoder, pcm: np.ndarray, seed: int = 0) -> GenRun:
    """Feed `pcm` frame by frame: encode, one LM step, decode what it emitted."""
    import mlx.core as mx

    from .generate import GenOptions, LmGen

    gen = LmGen(model, options=GenOptions(seed=seed))
    frames = len(pcm) // FRAME_SIZE
    run = GenRun([], np.zeros(0, np.float32))
    chunks = []
    for i in range(frames):
        t0 = time.perf_counter()
        codes = encoder.encode_step(pcm[i * FRAME_SIZE:(i + 1) * FRAME_SIZE])
        t1 = time.perf_counter()
        tokens = gen.step(mx.array(codes[None, :model.cfg.user_codebooks]))
        if tokens is not None:
            mx.eval(tokens)
        t2 = time.perf_counter()
        if tokens is not None:
            tokens = np.array(tokens)[0]
            run.text.append(int(tokens[0]))
            if len(tokens) > 1:
                chunks.append(decoder.decode_step(tokens[1:]))
        t3 = time.perf_counter()
        run.lm_seconds.append(t2 - t1)
        run.codec_seconds.append((t1 - t0) + (t3 - t2))
    run.audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return run


def check_silence(run: GenRun, model_type: str) -> CheckResult:
    max_rms, max_peak = SILENCE_LIMITS.get(model_type, SILENCE_LIMITS["moshi"])
    threshold = f"RMS <= {max_rms:g} dBFS, peak <= {max_peak:g} dBFS ({model_type})"
    audio = run.audio[SILENCE_SKIP_FRAMES * FRAME_SIZE:]
    if audio.size == 0:
        return CheckResult("silence in", FAIL, "no audio was generated (run longer)", threshold)
    rms = _db(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))))
    peak = _db(float(np.abs(audio).max()))
    figures = f"output RMS {rms:.1f} dBFS, peak {peak:.1f} dBFS over {audio.size / SAMPLE_RATE:.1f} s"
    return _result("silence in", rms <= max_rms and peak <= max_peak, figures, threshold)


def text_stats(tokens: list[int], pad_ids: set[int]) -> dict:
    words = [t for t in tokens if t not in pad_ids and t != EOS_ID]
    run = best = 0
    prev = None
    for t in tokens:
        run = run + 1 if (t == prev and t in words) else 1
        if t not in pad_ids and t != EOS_ID:
            best = max(best, run)
        prev = t
    share = max((words.count(w) for w in set(words)), default=0) / max(len(words), 1)
    return {"pad": sum(t in pad_ids for t in tokens) / max(len(tokens), 1),
            "eos": tokens.count(EOS_ID), "words": len(words), "run": best, "share": share}


def check_text(run: GenRun, cfg) -> CheckResult:
    threshold = (f"PAD >= {100 * TEXT_MIN_PAD:g}%, EOS <= {TEXT_MAX_EOS}, repeat run <= "
                 f"{TEXT_MAX_RUN}, top token <= {100 * TEXT_MAX_SHARE:g}% of words")
    if not run.text:
        return CheckResult("text stream", FAIL, "no text token was generated (run longer)", threshold)
    s = text_stats(run.text, {cfg.moshi_mac.text_padding_id, cfg.moshi_mac.end_of_text_padding_id})
    share_ok = s["words"] < TEXT_SHARE_MIN_TOKENS or s["share"] <= TEXT_MAX_SHARE
    ok = (s["pad"] >= TEXT_MIN_PAD and s["eos"] <= TEXT_MAX_EOS and s["run"] <= TEXT_MAX_RUN
          and share_ok)
    figures = (f"{len(run.text)} tokens: PAD {100 * s['pad']:.0f}%, EOS {s['eos']}, "
               f"{s['words']} word pieces, longest repeat {s['run']}, top piece "
               f"{100 * s['share']:.0f}% of words")
    return _result("text stream", ok, figures, threshold)


def check_speed(run: GenRun) -> CheckResult:
    threshold = f">= {SPEED_MIN_RTF:g}x real time ({FRAME_RATE:g} steps/s) with Mimi"
    lm = run.lm_seconds[WARMUP_STEPS:]
    codec = run.codec_seconds[WARMUP_STEPS:]
    if not lm:
        return CheckResult("speed", FAIL, "too few steps to time (run longer)", threshold)
    lm_rate = len(lm) / sum(lm)
    rate = len(lm) / (sum(lm) + sum(codec))
    rtf = rate / FRAME_RATE
    if rtf >= SPEED_MIN_RTF:
        verdict = f"live: OK ({100 * (rtf - 1):.0f}% headroom)"
    elif rtf >= 1.0:
        verdict = "live: marginal, expect stutter under load; try q8/q4 or close other apps"
    else:
        verdict = "live: too slow; use `translate` on files, or a q8/q4 model"
    figures = (f"LM {lm_rate:.1f} steps/s, with Mimi {rate:.1f} steps/s = {rtf:.2f}x real time "
               f"over {len(lm)} steps; {verdict}")
    return _result("speed", rtf >= SPEED_MIN_RTF, figures, threshold)


# ---------------------------------------------------------------------------------------
# The battery
# ---------------------------------------------------------------------------------------

def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _Timer:
    def __init__(self, results: list[CheckResult], progress: Callable[[str], None] | None):
        self.results, self.progress = results, progress

    def run(self, name: str, fn: Callable[[], CheckResult]) -> CheckResult:
        if self.progress:
            self.progress(name)
        t0 = time.perf_counter()
        try:
            res = fn()
        except MoshiMacError as e:
            res = CheckResult(name, FAIL, _first_line(e))
        except Exception as e:  # a check must report, not crash the battery
            res = CheckResult(name, FAIL, f"{type(e).__name__}: {_first_line(e)}")
        res.seconds = time.perf_counter() - t0
        self.results.append(res)
        return res


def default_codec(path, num_codebooks: int):
    from .codec import Mimi

    return Mimi(path, num_codebooks)


def check_consistency(files) -> tuple[CheckResult, object, object]:
    """Each part separately, so one bad file does not hide the others. Returns (result,
    config or None, weights report or None)."""
    from .codec import check_mimi
    from .config import load_config
    from .tokenizer import check_tokenizer
    from .weights import check_weights

    problems, parts = [], []
    cfg = report = None
    try:
        cfg = load_config(files.config)
        parts.append(f"{Path(files.config).name}: {cfg.summary()}")
    except MoshiMacError as e:
        problems.append(_first_line(e))
    if cfg is not None:
        for what, fn in (
                ("weights", lambda: check_weights(files.weights, cfg, Path(files.config).name,
                                                  files.expect_quant)),
                ("tokenizer", lambda: check_tokenizer(files.tokenizer, cfg.text_out_vocab_size)),
                ("mimi", lambda: check_mimi(files.mimi, cfg.mimi_codebooks))):
            try:
                value = fn()
            except MoshiMacError as e:
                problems.append(_first_line(e))
                continue
            if what == "weights":
                report = value
                parts.append(f"{report.layout} {report.quantization.label}, "
                             f"{_count(report.n_params)} params")
            elif what == "tokenizer":
                parts.append(f"tokenizer {value.vocab_size()} pieces")
            else:
                parts.append(f"Mimi {value} codebooks ({cfg.mimi_codebooks} needed)")
    if problems:
        return CheckResult("consistency", FAIL, "; ".join(problems), "exact match"), cfg, report
    return CheckResult("consistency", PASS, "; ".join(parts), "exact match"), cfg, report


@dataclass
class DoctorOptions:
    seconds: float = 4.0
    audio: bool = True
    reference: Path | None = None
    why_no_reference: str = "no bf16 weights present"
    seed: int = 0
    codec_factory: Callable = default_codec


def run_doctor(files, opts: DoctorOptions | None = None,
               progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Every check on one model; see the module docstring."""
    from .speech_sample import speech_sample
    from .weights import load_lm

    opts = opts or DoctorOptions()
    results: list[CheckResult] = []
    timer = _Timer(results, progress)
    state: dict = {}

    def consistency():
        res, state["cfg"], state["report"] = check_consistency(files)
        return res

    timer.run("consistency", consistency)
    cfg, report = state["cfg"], state["report"]
    timer.run("MLX", check_mlx)
    if cfg is not None and report is not None:
        timer.run("memory", lambda: check_memory(files, cfg))
    else:
        results.append(CheckResult("memory", SKIP, "skipped: needs a config and LM weights"))
    timer.run("audio (PortAudio)", lambda: check_audio(opts.audio))
    if cfg is None:
        for name in ("codec round trip", "weights finite", "quantized vs bf16", "silence in",
                     "text stream", "speed"):
            results.append(CheckResult(name, SKIP, "skipped: the config did not load"))
        return results

    sample = speech_sample(opts.seconds, seed=opts.seed)

    def codec():
        res, state["codes"] = check_codec(opts.codec_factory(files.mimi, cfg.mimi_codebooks), sample)
        return res

    timer.run("codec round trip", codec)
    codes = probe_codes(cfg, state.get("codes"), seed=opts.seed)
    lm_names = ("weights finite", "quantized vs bf16", "silence in", "text stream", "speed")
    if report is None:
        for name in lm_names:
            results.append(CheckResult(name, SKIP, "skipped: the LM weights do not match the config"))
        return results
    try:
        model, _ = load_lm(files.weights, cfg, Path(files.config).name, expect_quant=files.expect_quant)
    except Exception as e:
        for name in lm_names:
            results.append(CheckResult(name, FAIL, f"cannot load the LM: {_first_line(e)}"))
        return results
    timer.run("weights finite", lambda: check_finite(model, codes))
    timer.run("quantized vs bf16", lambda: check_quantized(
        model, report.quantization, opts.reference, cfg, codes, opts.why_no_reference))

    def generation():
        enc = opts.codec_factory(files.mimi, cfg.user_codebooks)
        dec = opts.codec_factory(files.mimi, cfg.dep_q)
        state["run"] = run_generation(model, enc, dec, np.zeros_like(sample), seed=opts.seed)
        return check_silence(state["run"], cfg.moshi_mac.model_type)

    if cfg.dep_q == 0 or cfg.user_codebooks == 0:
        for name in lm_names[2:]:
            results.append(CheckResult(name, SKIP, "skipped: the model has no audio streams"))
        return results
    timer.run("silence in", generation)
    if "run" not in state:
        for name in lm_names[3:]:
            results.append(CheckResult(name, SKIP, "skipped: the generation run failed"))
        return results
    timer.run("text stream", lambda: check_text(state["run"], cfg))
    timer.run("speed", lambda: check_speed(state["run"]))
    return results


# ---------------------------------------------------------------------------------------
# Model resolution (registry siblings, folders with bf16 beside q8/q4)
# ---------------------------------------------------------------------------------------

_QUANT_SUFFIXES = (".q8.safetensors", ".q4.safetensors")


def _pick_from_dir(folder: Path):
    """`modeldir.from_dir`, also accepting a folder with bf16 weights beside q8/q4 ones:
    then the quantized file is examined and the bf16 one is its reference."""
    from .modeldir import from_dir, lm_weight_files

    lm = lm_weight_files(folder)
    quant = [p for p in lm if p.name.endswith(_QUANT_SUFFIXES)]
    plain = [p for p in lm if p not in quant]
    if len(quant) == 1 and len(plain) == 1:
        return from_dir(folder, weights=quant[0]), plain[0]
    return from_dir(folder), None


def _registry_reference(name: str) -> tuple[Path | None, str]:
    """The bf16 weights of a quantized registry entry's sibling, when on disk."""
    from . import registry

    entry = registry.get_entry(name)
    if entry.quantization == "bf16":
        return None, "the model is bf16"
    sibling = registry.REGISTRY.get(entry.name.replace(f"-{entry.quantization}", "-bf16"))
    if sibling is None or sibling.config != entry.config:
        return None, f"no bf16 entry for {entry.name} in the registry"
    found = registry.local_files(sibling)
    if found is None:
        return None, f"no bf16 weights present (`moshi-mac download {sibling.name}` to compare)"
    return Path(found["weights"]), ""


def resolve_for_doctor(model: str | None, weights: Path | None, reference: Path | None,
                       download: bool = True):
    """(files, reference weights or None, why there is none)."""
    from .modeldir import resolve

    why = "no bf16 weights present (pass --reference DIR)"
    if weights is not None and model is None:
        files, auto = _pick_from_dir(Path(weights))
    elif model is not None and weights is None and Path(model).is_dir():
        files, auto = _pick_from_dir(Path(model))
    else:
        files, auto = resolve(model, weights, download=download), None
        if reference is None and model is not None:
            auto, why = _registry_reference(model)
    if reference is not None:
        reference = Path(reference)
        if reference.is_dir():
            reference = _pick_from_dir(reference)[0].weights
        return files, reference, why
    return files, auto, why


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def render(results: list[CheckResult], title: str, console=None) -> None:
    from rich.table import Table

    if console is None:
        from .cli import console
    table = Table(title=title)
    for col in ("check", "result", "figures", "threshold", "s"):
        table.add_column(col, overflow="fold")
    style = {PASS: "green", FAIL: "bold red", SKIP: "yellow"}
    for r in results:
        table.add_row(r.name, f"[{style[r.status]}]{r.status}[/]", r.figures, r.threshold,
                      f"{r.seconds:.1f}")
    console.print(table)


def summary(results: list[CheckResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    return f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped"


def exit_code(results: list[CheckResult], strict: bool = False) -> int:
    bad = {FAIL, SKIP} if strict else {FAIL}
    return 1 if any(r.status in bad for r in results) else 0


def main(args) -> int:
    import json

    from .cli import console

    t0 = time.perf_counter()
    files, reference, why = resolve_for_doctor(args.model, args.weights, args.reference,
                                               download=not args.no_download)
    opts = DoctorOptions(seconds=args.seconds, audio=not args.no_audio, reference=reference,
                         why_no_reference=why, seed=args.seed)
    with console.status("doctor") as status:
        results = run_doctor(files, opts, progress=lambda n: status.update(f"doctor: {n}"))
    render(results, f"doctor: {files.name} ({Path(files.weights).name})", console)
    total = time.perf_counter() - t0
    console.print(f"{summary(results)} in {total:.0f} s "
                  f"(Python {platform.python_version()}, {platform.system()} {platform.machine()})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"model": files.name, "seconds": total, "checks": [r.__dict__ for r in results]}, indent=2))
    return exit_code(results, args.strict)


def register(subparsers) -> None:
    from .cli import add_model_args

    p = subparsers.add_parser("doctor", help="self-checks: weights, codec, numerics, behaviour, speed")
    add_model_args(p)
    p.add_argument("--reference", type=Path,
                   help="bf16 weights (file or model folder) to compare a q8/q4 model with")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="length of the codec sample and the generation run (default 4)")
    p.add_argument("--no-audio", action="store_true",
                   help="skip the PortAudio check (headless machines, CI)")
    p.add_argument("--strict", action="store_true", help="count skipped checks as failures")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.set_defaults(func=main)


if __name__ == "__main__":  # pragma: no cover
    from .cli import main as cli_main

    sys.exit(cli_main(["doctor", *sys.argv[1:]]))
