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
- silence in: silence fed for `--seconds` through the same `engine.Session` users run
  (Mimi encode, LM, Mimi decode), the generated audio decoded. RMS
  and peak after the first 2 frames. Hibiki (translation; nothing to translate): RMS <=
  -40 dBFS and peak <= -12 dBFS, i.e. 14 dB under the ITU-T P.56 nominal speech level of
  -26 dBFS, with no clicks. Moshi talks on its own, so for it the check only requires no
  shouting or clipping: RMS <= -16 dBFS (10 dB over nominal speech), peak <= -0.1 dBFS.
- text stream: over the same run, the share of PAD/end-of-padding tokens must be >= 50%
  (speech at ~3 words/s gives 3-4 text tokens/s against 12.5 frames/s, so >= ~70% PAD
  even when the model talks; random weights give ~2/vocabulary), at most one EOS, no
  ordinary token repeated 5 steps in a row (400 ms of one piece: a stuck sampler), and
  no token making more than half of the ordinary tokens once there are 8 or more.
- speed: ms per frame of the LM, Mimi encode and Mimi decode, each timed on its own by
  the same `engine.Session` that `translate` runs (Mimi and the LM in turn on one thread),
  after the session's warm-up and 3 more steps; pass at >= 1.1x real time with the three
  in turn (the conservative figure) against Mimi's 12.5 frames/s: the frame budget is
  80 ms and ~10% goes to audio I/O, resampling and scheduling jitter in live mode. The
  stage taking the most time is named as the one bounding real time, and the advice
  follows from it (doctor/speed.py).

On random weights the behavioural checks are expected to fail (the text stream is not
mostly PAD, a random Mimi decodes codes to loud noise). The checks take their codec and
model as arguments, so tests can show each one both passing and failing.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MoshiMacError
from ..quant import QUANT_SUFFIXES
from .base import CheckResult, FAIL, PASS, SKIP, _count
from .behaviour import check_silence, check_speed, check_text, run_generation
from .codec_check import check_codec
from .numerics import check_finite, check_quantized, probe_codes
from .system import check_audio, check_memory, check_mlx



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
    from ..codec import Mimi

    return Mimi(path, num_codebooks)


def check_consistency(files) -> tuple[CheckResult, object, object]:
    """Each part separately, so one bad file does not hide the others. Returns (result,
    config or None, weights report or None)."""
    from ..codec import check_mimi
    from ..config import load_config
    from ..tokenizer import check_tokenizer
    from ..weights import check_weights

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
    seed: int | None = None  # None: the model config's sampling seed
    codec_factory: Callable = default_codec


def run_doctor(files, opts: DoctorOptions | None = None,
               progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Every check on one model; see the module docstring."""
    from ..api import Model
    from ..speech_sample import speech_sample

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

    seed = cfg.moshi_mac.generation.seed if opts.seed is None else opts.seed
    sample = speech_sample(opts.seconds, seed=seed)

    def codec():
        res, state["codes"] = check_codec(opts.codec_factory(files.mimi, cfg.mimi_codebooks), sample)
        return res

    timer.run("codec round trip", codec)
    codes = probe_codes(cfg, state.get("codes"), seed=seed)
    lm_names = ("weights finite", "quantized vs bf16", "silence in", "text stream", "speed")
    if report is None:
        for name in lm_names:
            results.append(CheckResult(name, SKIP, "skipped: the LM weights do not match the config"))
        return results
    try:  # as moshi_mac.load loads it, once every file has been checked
        loaded = Model.from_files(files, cfg).loaded
    except Exception as e:
        for name in lm_names:
            results.append(CheckResult(name, FAIL, f"cannot load the LM: {_first_line(e)}"))
        return results
    timer.run("weights finite", lambda: check_finite(loaded.lm, codes))
    timer.run("quantized vs bf16", lambda: check_quantized(
        loaded.lm, report.quantization, opts.reference, cfg, codes, opts.why_no_reference))

    def generation():
        state["run"] = run_generation(loaded, np.zeros_like(sample), seed, opts.codec_factory)
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

def _pick_from_dir(folder: Path):
    """`modeldir.from_dir`, also accepting a folder with bf16 weights beside q8/q4 ones:
    then the quantized file is examined and the bf16 one is its reference."""
    from ..modeldir import from_dir, lm_weight_files

    lm = lm_weight_files(folder)
    quant = [p for p in lm if p.name.endswith(QUANT_SUFFIXES)]
    plain = [p for p in lm if p not in quant]
    if len(quant) == 1 and len(plain) == 1:
        return from_dir(folder, weights=quant[0]), plain[0]
    return from_dir(folder), None


def _registry_reference(name: str) -> tuple[Path | None, str]:
    """The bf16 weights of a quantized registry entry's sibling, when on disk."""
    from .. import registry

    entry = registry.lookup(name)
    if entry is None:
        return None, "not a registry model (pass --reference DIR)"
    if entry.quantization == "bf16":
        return None, "the model is bf16"
    sibling = registry.REGISTRY.get(entry.name.replace(f"-{entry.quantization}", "-bf16"))
    if sibling is None or sibling.config != entry.config:
        return None, f"no bf16 entry for {entry.name} in the registry"
    found = registry.local_files(sibling)
    if found is None:
        return None, f"no bf16 weights present (`moshi-mac download {sibling.name}` to compare)"
    return found.weights, ""


def resolve_for_doctor(model: str | None, weights: Path | None, reference: Path | None,
                       download: bool = True):
    """(files, reference weights or None, why there is none)."""
    from ..modeldir import resolve

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
        from ..cli import console
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

    from ..cli import console

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
    from ..cli import add_model_args

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
    p.add_argument("--seed", type=int, help="seed of the generation run and the probe "
                                            "codes (default: the model config's sampling seed)")
    p.add_argument("-o", "--output", "--json", dest="json", type=Path,
                   help="also write the results as JSON to this file")
    p.set_defaults(func=main)


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main as cli_main

    sys.exit(cli_main(["doctor", *sys.argv[1:]]))
