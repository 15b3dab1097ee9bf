"""File mode end to end: `moshi-mac translate` on French speech made with espeak-ng (as mp3
and as 44.1 kHz stereo flac) with random tiny models of every config; the engine's
feeding rules (double first frame, Hibiki EOS flush), text assembly, transcripts,
--force, and Ctrl-C keeping valid partial outputs."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from moshi_mac.audio_io import read_audio
from moshi_mac.cli import main as cli_main
from moshi_mac.config import load_config
from moshi_mac.api import load
from moshi_mac.engine import FRAME_S, FileSource, Session, TextAssembler
from moshi_mac.transcript import Word, format_srt, format_vtt, make_cues

from .conftest import CONFIG_NAMES, ROOT

SPEECH = "Bonjour à tous, merci d'être venus."
MAX_TAIL = 0.4  # seconds of silence after the input, at most (Hibiki)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, Path]:
    """French speech from espeak-ng (22.05 kHz mono wav), as mp3 and as 44.1 kHz stereo flac."""
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt install espeak-ng ffmpeg)")
    d = tmp_path_factory.mktemp("speech")
    wav = d / "fr.wav"
    subprocess.run(["espeak-ng", "-v", "fr", "-w", str(wav), SPEECH], check=True)
    mp3, flac = d / "speech_mp3.mp3", d / "speech_flac.flac"
    ff = ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav)]
    subprocess.run(ff + [str(mp3)], check=True)
    subprocess.run(ff + ["-ar", "44100", "-ac", "2", str(flac)], check=True)
    return {"wav": wav, "mp3": mp3, "flac": flac}


def _frames(path: Path) -> int:
    pcm, _ = read_audio(path)
    return math.ceil(pcm.size / 1920)


def _check_outputs(base: Path, src: Path, model_dir: Path, subtitles: str) -> dict:
    """Check one input's outputs; return its JSON transcript."""
    cfg = load_config(model_dir / "config.toml")
    doc = json.loads(base.with_suffix(".json").read_text())
    n_in = _frames(src)
    max_delay = max(cfg.delays)
    wav = base.with_suffix(".wav")
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels) == (24000, 1)
    out_frames = info.frames // 1920
    assert info.frames == out_frames * 1920
    if cfg.moshi_mac.model_type == "hibiki":
        # input (first frame twice) + the EOS frame + some silence, less the delay
        tail = math.ceil(MAX_TAIL / FRAME_S)
        assert n_in + 2 - max_delay <= out_frames <= n_in + 2 + tail - max_delay
        assert doc["steps"] == out_frames + max_delay
        assert doc["ending"] in ("end of translation (EOS)", "tail limit reached before EOS")
    else:  # Moshi answers exactly as long as the input
        assert out_frames == n_in and doc["steps"] == n_in + 1
        assert doc["ending"] == "end of input"
    assert doc["duration"] == pytest.approx(out_frames * FRAME_S)
    assert doc["sample_rate"] == 24000 and doc["model_type"] == cfg.moshi_mac.model_type
    assert doc["input_audio"]["sample_rate"] == sf.info(str(src)).samplerate
    assert doc["sampling"]["seed"] == 4242 and not doc["interrupted"]
    for w in doc["words"]:
        assert 0 <= w["start"] < w["end"] <= doc["duration"] + 1e-6 and " " not in w["text"]
    starts = [w["start"] for w in doc["words"]]
    assert starts == sorted(starts)
    assert " ".join(w["text"] for w in doc["words"]) == doc["text"]
    sub = base.with_suffix(f".{subtitles}").read_text()
    if subtitles == "vtt":
        assert sub.startswith("WEBVTT\n")
    stamps = re.findall(r"(\d\d):(\d\d):(\d\d)[,.](\d{3}) --> ", sub)
    assert len(stamps) == len(doc["segments"])
    stereo, rate = sf.read(str(base.parent / f"{base.name}-stereo.wav"))
    assert rate == 24000 and stereo.shape[1] == 2
    src_pcm, _ = read_audio(src)
    n = src_pcm.size
    assert np.abs(stereo[:n, 0] - np.clip(src_pcm, -1, 1)).max() < 1e-3  # input on the left
    out_pcm, _ = sf.read(str(wav))
    assert np.abs(stereo[: out_pcm.size, 1] - out_pcm).max() < 1e-3  # output on the right
    return doc


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_translate_every_config(name, make_model, speech, tmp_path, capsys):
    model = make_model(name)
    subtitles = "vtt" if name.startswith("moshi") else "srt"
    rc = cli_main(["translate", str(speech["mp3"]), str(speech["flac"]), "-w", str(model),
                   "-o", str(tmp_path), "--stereo", "--max-tail", str(MAX_TAIL),
                   "--subtitles", subtitles])
    out = capsys.readouterr().out
    assert rc == 0, out
    # What was converted is said.
    assert "speech_mp3.mp3: 22050 Hz, 1 channel(s)" in out and "resampled to 24000 Hz" in out
    assert "speech_flac.flac: 44100 Hz, 2 channel(s)" in out and "mixed 2 channels to mono" in out
    for src in (speech["mp3"], speech["flac"]):
        _check_outputs(tmp_path / f"{src.stem}-out", src, model, subtitles)


def test_force_and_pipelined_equals_sequential(make_model, speech, tmp_path, capsys):
    """Outputs are never overwritten without --force; the pipelined and the sequential
    loops produce the same audio and text for the same seed."""
    model = make_model("hibiki-1b")
    out = tmp_path / "result.wav"
    args = ["translate", str(speech["wav"]), "-w", str(model), "-o", str(out), "--max-tail", "0.3"]
    assert cli_main(args) == 0
    first_wav, first_json = out.read_bytes(), json.loads(out.with_suffix(".json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "result.srt", "result.wav"]
    capsys.readouterr()

    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == first_wav

    assert cli_main(args + ["--force", "--sequential"]) == 0
    second_json = json.loads(out.with_suffix(".json").read_text())
    assert second_json["pipelined"] is False and first_json["pipelined"] is True
    assert out.read_bytes() == first_wav
    assert second_json["tokens"] == first_json["tokens"]
    assert second_json["words"] == first_json["words"]


def test_user_errors(speech, tmp_path, capsys):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    cases = [
        (["translate", str(bad), "-w", str(tmp_path)], "cannot read audio file"),
        (["translate", str(speech["mp3"]), str(speech["flac"]), "-o", str(tmp_path / "x.wav"),
          "-w", str(tmp_path)], "names one file"),
        (["translate", str(speech["wav"]), "-o", str(speech["wav"]), "-w", str(tmp_path)],
         "would overwrite an input"),
        (["translate", str(speech["wav"]), "--max-tail", "-1", "-w", str(tmp_path)], "--max-tail"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_cfg_needs_a_conditioner(make_model, speech, tmp_path, capsys):
    model = make_model("hibiki-zero-3b")  # no conditioner, no CFG
    rc = cli_main(["translate", str(speech["wav"]), "-w", str(model), "-o", str(tmp_path),
                   "--cfg", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "--cfg" in err  # usage


def test_sigint_keeps_valid_partial_outputs(make_model, speech, tmp_path):
    model = make_model("moshi-7b")
    cmd = [sys.executable, "-m", "moshi_mac.cli", "translate", str(speech["wav"]), "-w", str(model),
           "-o", str(tmp_path), "--stereo", "--debug-step-delay-ms", "200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    deadline = time.monotonic() + 60
    try:
        while "answering fr.wav:" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, seen  # it must not end before
            seen += line
        streamed = ""
        while len(streamed.strip()) < 8:  # wait until the text is streaming
            char = proc.stdout.read(1)
            assert char and time.monotonic() < deadline, seen + streamed
            streamed += char
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    log = seen + streamed + rest
    assert proc.returncode == 130, log
    assert "stopped by Ctrl-C" in log
    # Partial outputs are kept under the partial names (outputs.py), never the final ones.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fr-out-stereo.partial.wav", "fr-out.partial.json", "fr-out.partial.srt",
        "fr-out.partial.wav"]  # and no temp or lock files left behind
    doc = json.loads((tmp_path / "fr-out.partial.json").read_text())
    assert doc["interrupted"] is True and doc["partial"] is True
    assert doc["ending"].startswith("interrupted")
    info = sf.info(str(tmp_path / "fr-out.partial.wav"))
    assert info.samplerate == 24000 and 0 < info.frames < _frames(speech["wav"]) * 1920
    assert info.frames == round(doc["duration"] * 24000)
    assert sf.info(str(tmp_path / "fr-out-stereo.partial.wav")).channels == 2
    assert (tmp_path / "fr-out.partial.srt").read_text().strip()


# -- engine units ------------------------------------------------------------------------

class FakeGen:
    """Stands in for LmGen: records what it is fed, returns scripted text tokens."""

    def __init__(self, texts: list[int], dep_q: int, max_delay: int):
        self.texts = iter(texts)
        self.dep_q = dep_q
        self.max_delay = max_delay
        self.fed: list[list[int]] = []

    def step(self, x):
        self.fed.append(np.array(x)[0].tolist())
        if len(self.fed) <= self.max_delay:
            return None
        return mx.array([[next(self.texts, 5)] + [7] * self.dep_q], dtype=mx.int32)


@pytest.mark.parametrize("pipelined", [True, False])
def test_hibiki_feeding_and_eos_flush(make_model, pipelined):
    """First frame twice, one EOS frame of `card` codes, then encoded silence until the
    text EOS (an EOS before the input ended only warns); the EOS step's audio is kept."""
    model = load(weights=make_model("hibiki-1b")).loaded
    cfg = model.cfg
    session = Session(model, stop_on_eos=True)
    # outputs: 3 input-time tokens incl. an early EOS, then EOS at the 2nd tail step
    fake = FakeGen([5, 2, 6, 7, 8, 2, 10], cfg.dep_q, max(cfg.delays))
    session.stepper.gen = fake
    pcm = np.random.default_rng(0).standard_normal(3 * 1920 + 100).astype(np.float32) * 0.1
    source = FileSource(pcm, flush=True, max_tail_frames=20)
    result = session.run(source, pipelined=pipelined)
    K = cfg.user_codebooks
    assert fake.fed[0] == fake.fed[1]  # the first frame, twice
    assert fake.fed[5] == [cfg.card] * K  # after the 4 input frames: the EOS frame
    assert all(v != cfg.card for row in fake.fed[6:] for v in row)  # then real codes (silence)
    assert result.eos_reached and result.early_eos == 1 and not result.interrupted
    # steps: 5 (input, first twice) + 1 EOS frame + 2 silence; outputs = steps - delay
    assert result.steps == 8 and len(fake.fed) in (8, 9)  # the lookahead's extra step is dropped
    assert result.outputs == 8 - max(cfg.delays) == result.pcm.size // 1920


def test_file_source_frames():
    src = FileSource(np.ones(2 * 1920 + 1, np.float32), flush=True, max_tail_frames=2)
    frames = [src() for _ in range(7)]
    assert [f.kind for f in frames[:6]] == ["input"] * 3 + ["eos", "tail", "tail"]
    assert frames[6] is None and frames[3].pcm is None
    assert frames[2].pcm[0] == 1 and not frames[2].pcm[1:].any()  # zero-padded last frame
    assert [f.offset for f in frames[:6]] == [i * 1920 for i in range(6)]
    moshi = FileSource(np.ones(1920, np.float32), flush=False)
    assert moshi().kind == "input" and moshi() is None


def test_text_assembler_words_and_hidden_ids(make_model):
    from moshi_mac.tokenizer import load_tokenizer

    sp = load_tokenizer(next(make_model("hibiki-1b").glob("*.model")))
    pieces = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    start = next(i for i, p in enumerate(pieces) if p.startswith("▁") and len(p) > 2)
    cont = next(i for i, p in enumerate(pieces) if i > 3 and p.isalpha() and not p.startswith("▁"))
    asm = TextAssembler(sp)
    stream = [start, 3, cont, 0, start, 2, 1]
    added = [asm.add(t, i * FRAME_S) for i, t in enumerate(stream)]
    w1, w2 = pieces[start][1:] + pieces[cont], pieces[start][1:]
    assert added[1] == added[3] == added[5] == added[6] == ""  # pad, end-pad, EOS, BOS
    assert asm.text == f" {w1} {w2}"
    assert asm.words == [Word(w1, 0.0, 0.24), Word(w2, 0.32, 0.4)]
    assert [t.id for t in asm.tokens] == [start, cont, start]


def test_subtitle_formats():
    words = [Word("Hello", 0.0, 0.4), Word("world.", 0.4, 0.9), Word("Next", 3.0, 3.2),
             Word("one", 3.3, 3.5), Word("Later", 3661.0, 3661.5)]
    cues = make_cues(words)
    assert [c.text for c in cues] == ["Hello world.", "Next one", "Later"]
    assert format_srt(cues).startswith("1\n00:00:00,000 --> 00:00:00,900\nHello world.\n\n2\n")
    assert format_vtt(cues).endswith("\n01:01:01.000 --> 01:01:01.500\nLater\n")
    long = [Word(f"w{i}", i * 0.3, i * 0.3 + 0.2) for i in range(60)]
    assert all(c.end - c.start <= 6.0 and len(c.text) <= 84 for c in make_cues(long))
