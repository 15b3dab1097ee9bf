"""The public Python API (moshi_mac.api) on tiny random models: `Model.run` is the path of
`moshi-mac translate` (same files, byte for byte), a stream fed random-length chunks gives
exactly the file-mode result, arrays and paths agree, quantize-on-load equals a quantized
file, user mistakes are one-line errors, and the examples/ scripts run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import soundfile as sf
from mlx.utils import tree_flatten

import moshi_mac
from moshi_mac.audio_io import read_audio, to_mono
from moshi_mac.cli import main as cli_main
from moshi_mac.errors import ModelNotFoundError, MoshiMacError

from .conftest import ROOT

MAX_TAIL = 0.4  # seconds of silence after the input, at most (Hibiki)
SEED = 5


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """French speech from espeak-ng: a 22.05 kHz mono wav."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt install espeak-ng)")
    wav = tmp_path_factory.mktemp("speech") / "fr.wav"
    subprocess.run(["espeak-ng", "-v", "fr", "-w", str(wav),
                    "Bonjour à tous, merci d'être venus."], check=True)
    return wav


@pytest.fixture(scope="module")
def hibiki_dir(make_model) -> Path:
    return make_model("hibiki-1b")


@pytest.fixture(scope="module")
def hibiki(hibiki_dir) -> moshi_mac.Model:
    return moshi_mac.load(hibiki_dir)


@pytest.fixture(scope="module")
def reference(hibiki, speech) -> moshi_mac.Result:
    """File mode: `Model.run` on the wav."""
    return hibiki.run(speech, seed=SEED, max_tail_s=MAX_TAIL)


def _feed_randomly(stream, pcm: np.ndarray, rate: int, seed: int) -> tuple[list, int]:
    """Feed `pcm` in random-length chunks (empty, shorter than a frame, several frames);
    return the events and how many came before `close`."""
    rng = np.random.default_rng(seed)
    events, i = [], 0
    while i < len(pcm):
        n = int(rng.choice([0, 1, 500, 1919, 1920, 1921, 4000, 7777]))
        events += stream.feed(pcm[i:i + n], sample_rate=rate)
        i += n
    before_close = len(events)
    return events + stream.close(), before_close


def _check_same(result: moshi_mac.Result, ref: moshi_mac.Result) -> None:
    assert np.array_equal(result.pcm, ref.pcm)
    assert result.text == ref.text and result.words == ref.words and result.tokens == ref.tokens
    assert (result.steps, result.outputs, result.eos_reached, result.early_eos) == \
        (ref.steps, ref.outputs, ref.eos_reached, ref.early_eos)
    assert result.sampling == ref.sampling


def test_run_result(hibiki, reference, speech):
    pcm, report = read_audio(speech)
    r = reference
    gen = hibiki.config.moshi_mac.generation  # options left out: the model config's values
    assert (r.sampling["temp"], r.sampling["top_k"], r.sampling["temp_text"],
            r.sampling["top_k_text"], r.sampling["cfg_coef"]) == \
        (gen.temp, gen.top_k, gen.temp_text, gen.top_k_text, gen.cfg_coef)
    assert r.sample_rate == 24000 and r.pcm.dtype == np.float32 and r.pcm.ndim == 1
    assert r.model_type == "hibiki" and r.text and r.words and r.tokens
    # input + the double first frame + the EOS frame + at most MAX_TAIL of silence - delays
    n_in = -(-pcm.size // 1920)
    assert n_in <= r.outputs <= n_in + 2 + round(MAX_TAIL / 0.08)
    assert r.pcm.size == r.outputs * 1920 and r.duration == pytest.approx(r.outputs * 0.08)
    assert " ".join(w.text for w in r.words) == " ".join(r.text.split())
    assert all(w.start < w.end <= r.duration + 1e-9 for w in r.words)
    assert [t.time for t in r.tokens] == sorted(t.time for t in r.tokens)
    assert r.sampling["seed"] == SEED and r.input.sample_rate == report.sample_rate
    assert np.array_equal(r.input_pcm, pcm)


@pytest.mark.parametrize("rate", [None, 24000])
def test_stream_in_random_chunks_equals_run(hibiki, speech, reference, rate):
    """The file's own rate (22.05 kHz, resampled as it streams) and the 24 kHz audio."""
    if rate is None:
        pcm, rate = sf.read(str(speech), dtype="float32")
    else:
        pcm, _ = read_audio(speech)
    with hibiki.stream(seed=SEED, max_tail_s=MAX_TAIL) as stream:
        events, before_close = _feed_randomly(stream, pcm, rate, seed=rate)
    result = stream.result()
    _check_same(result, reference)
    audio = [e for e in events if e.kind == "audio"]
    assert np.array_equal(np.concatenate([e.pcm for e in audio]), reference.pcm)
    assert [e.start for e in audio] == pytest.approx([0.08 * i for i in range(len(audio))])
    text = [e for e in events if e.kind == "text"]
    assert "".join(e.text for e in text).strip() == reference.text
    assert text[0].start == pytest.approx(reference.tokens[0].time)
    assert 0 < before_close < len(events)  # events come as the input does, not all at close
    assert result.input.sample_rate == rate and np.array_equal(result.input_pcm,
                                                               reference.input_pcm)


def test_moshi_answers_for_as_long_as_the_input(make_model, speech):
    model = moshi_mac.load(make_model("moshi-7b"))
    assert model.family == "moshi"
    pcm, _ = read_audio(speech)
    stereo = np.stack([pcm, pcm], axis=1)  # [samples, channels]: mixed down to `pcm`
    ref = model.run(stereo, sample_rate=24000, seed=SEED)
    assert ref.outputs == -(-pcm.size // 1920) and ref.ending == "end of input"
    assert ref.input.channels == 2
    stream = model.stream(seed=SEED)
    _feed_randomly(stream, pcm, 24000, seed=1)
    _check_same(stream.result(), ref)


def test_translate_cli_writes_what_result_save_writes(hibiki_dir, hibiki, speech, tmp_path,
                                                      capsys):
    """One path: `moshi-mac translate` and `Model.run(...).save(...)` write the same files."""
    rc = cli_main(["translate", str(speech), "-o", str(tmp_path / "cli.wav"), "--weights",
                   str(hibiki_dir), "--seed", str(SEED), "--max-tail", str(MAX_TAIL),
                   "--stereo", "--subtitles", "vtt"])
    assert rc == 0, capsys.readouterr()
    written = hibiki.run(speech, seed=SEED, max_tail_s=MAX_TAIL).save(
        tmp_path / "api", formats=("wav", "vtt", "json", "stereo"))
    assert sorted(p.name for p in written) == ["api-stereo.wav", "api.json", "api.vtt",
                                               "api.wav"]
    for suffix in (".wav", ".vtt", "-stereo.wav"):
        assert (tmp_path / f"api{suffix}").read_bytes() == (tmp_path / f"cli{suffix}").read_bytes()
    cli, api = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("cli", "api"))
    for doc in (cli, api):
        doc.pop("wall_s")
    assert api == cli and api["text"] and api["input"] == str(speech)


def test_array_input_equals_the_file(hibiki, speech, reference):
    audio, rate = sf.read(str(speech), dtype="int16")  # integer PCM, the file's rate
    result = hibiki.run(audio, sample_rate=rate, seed=SEED, max_tail_s=MAX_TAIL)
    _check_same(result, reference)
    assert result.input.path is None and reference.input.path == str(speech)


def test_to_mono():
    x = np.array([0, 16384, -32768], np.int16)
    assert to_mono(x, 24000).tolist() == [0.0, 0.5, -1.0]
    assert to_mono(np.array([128, 192], np.uint8), 24000).tolist() == [0.0, 0.5]
    assert to_mono(np.array([[0.5, -0.5], [1.0, 0.0]]), 24000).tolist() == [0.0, 0.5]
    assert to_mono(np.ones(16000, np.float32), 16000).size == 24000
    for bad in (np.zeros((2, 2, 2)), np.array(["a"]), np.zeros(3, complex)):
        with pytest.raises(MoshiMacError, match="audio must be numbers"):
            to_mono(bad, 24000)


def test_user_errors(hibiki, hibiki_dir, make_model, speech, tmp_path):
    pcm = np.zeros(4000, np.float32)
    cases = [
        (lambda: hibiki.run(pcm, tmp=0.5), "unknown sampling option"),
        (lambda: hibiki.run(pcm, max_tail_s=-1), "max_tail_s must be >= 0"),
        (lambda: hibiki.run(speech, sample_rate=16000), "sample_rate is for arrays"),
        (lambda: hibiki.run(np.zeros(0)), "the audio is empty"),
        (lambda: hibiki.run(pcm, sample_rate=0), "positive number of Hz"),
        (lambda: hibiki.run(tmp_path / "nope.wav"), "does not exist"),
        (lambda: moshi_mac.load(hibiki_dir, quantize="q3"), "quantize must be one of"),
        (lambda: moshi_mac.load(make_model("hibiki-1b", quantize="q8"), quantize="q8"),
         "already"),
        (lambda: moshi_mac.load(hibiki_dir, dtype="int8"), "dtype must be"),
        (lambda: hibiki.stream().result(), "call close"),
    ]
    for call, message in cases:
        with pytest.raises(MoshiMacError, match=message):
            call()
    with pytest.raises(ModelNotFoundError):
        moshi_mac.load(tmp_path / "no-model")
    with pytest.raises(MoshiMacError, match="no CFG conditioner"):
        moshi_mac.load(make_model("moshi-7b")).run(pcm, cfg=3.0)
    stream = hibiki.stream(seed=0)
    stream.feed(pcm, sample_rate=16000)
    stream.feed(pcm)  # None: the stream's rate
    with pytest.raises(MoshiMacError, match="takes 16000 Hz"):
        stream.feed(pcm, sample_rate=24000)
    stream.close()
    assert stream.close() == []
    with pytest.raises(MoshiMacError, match="closed"):
        stream.feed(pcm, sample_rate=16000)


def test_check_is_the_first_half_of_load(hibiki, hibiki_dir, make_model, tmp_path):
    """`moshi_mac.check` reads headers only and is what `load` checks first: it names
    every file of the model and stops at the first mismatch in one line."""
    checked = moshi_mac.check(hibiki_dir)
    assert checked.files.weights == hibiki.files.weights
    assert checked.config.summary() == hibiki.config.summary()
    assert checked.weights.n_tensors > 0 and checked.tokenizer_vocab == hibiki.tokenizer.vocab_size()
    assert moshi_mac.check(weights=hibiki_dir).files.weights == checked.files.weights
    mixed = tmp_path / "mixed"  # Hibiki's files under Moshi's config: refused before loading
    shutil.copytree(hibiki_dir, mixed)
    shutil.copy(make_model("moshi-7b") / "config.toml", mixed / "config.toml")
    for call in (lambda: moshi_mac.check(mixed), lambda: moshi_mac.load(mixed)):
        with pytest.raises(MoshiMacError) as err:
            call()
        assert "\n" not in str(err.value) and "config.toml" in str(err.value)


def test_save_writes_all_the_files_or_none(reference, tmp_path):
    """`Result.save` commits its files as one set: a file that cannot be written leaves
    none of the others behind (nor a temp file)."""
    (tmp_path / "talk.json").mkdir()  # the JSON cannot be written there
    with pytest.raises(MoshiMacError, match="talk.json is a folder"):
        reference.save(tmp_path / "talk", formats=("wav", "srt", "json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.json"]
    written = reference.save(tmp_path / "sub" / "talk", formats="wav")
    assert written == [tmp_path / "sub" / "talk.wav"] and written[0].stat().st_size > 44


def test_nonfinite_run_keeps_the_partial_result(make_model, speech, tmp_path):
    """NaN out of the model stops `Model.run` with a NonFiniteError whose `.result` is the
    valid partial run, marked as such in its JSON."""
    from moshi_mac.errors import NonFiniteError

    folder = tmp_path / "nan"
    shutil.copytree(make_model("hibiki-1b"), folder)
    weights = mx.load(str(folder / "model.safetensors"))
    name = next(k for k in sorted(weights) if k.startswith("transformer.layers.1.")
                and k.endswith("linear_in.weight"))
    weights[name] = mx.full(weights[name].shape, float("nan"), weights[name].dtype)
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    with pytest.raises(NonFiniteError, match="NaN/Inf logits") as err:
        moshi_mac.load(folder).run(speech, seed=SEED, max_tail_s=MAX_TAIL)
    partial = err.value.result
    assert partial.partial and not partial.interrupted
    assert partial.ending.startswith("stopped: ") and "NaN/Inf logits" in partial.ending
    doc = json.loads(partial.save(tmp_path / "out", formats="json")[0].read_text())
    assert doc["partial"] is True and doc["ending"] == partial.ending


def test_cancel_and_context_manager_on_error(hibiki, speech):
    pcm, _ = read_audio(speech)
    with pytest.raises(ValueError, match="boom"):
        with hibiki.stream(seed=SEED, max_tail_s=MAX_TAIL) as stream:
            events = stream.feed(pcm[:10 * 1920])
            raise ValueError("boom")
    result = stream.result()  # what was generated before the error, no flush
    assert result.interrupted and result.ending.startswith("interrupted")
    assert result.steps == 11 and result.outputs == len([e for e in events if e.kind == "audio"])
    assert stream.close() == []


def test_a_stream_computes_on_one_thread(hibiki):
    import threading

    stream = hibiki.stream(seed=0, max_tail_s=0)
    assert stream.feed(np.zeros(500, np.float32)) == []  # not a frame yet: nothing runs
    stream.feed(np.zeros(2000, np.float32))  # this thread runs the model now
    errors = []

    def feed_elsewhere():
        try:
            stream.feed(np.zeros(1920, np.float32))
        except MoshiMacError as e:
            errors.append(str(e))

    worker = threading.Thread(target=feed_elsewhere)
    worker.start()
    worker.join()
    assert len(errors) == 1 and "one thread" in errors[0]
    stream.close()
    assert stream.result().steps == 4  # 2500 samples: 2 frames, the first fed twice; EOS


def test_quantize_on_load_equals_a_quantized_file(make_model):
    """q8 on load from the float file = the q8 file made from the same random weights."""
    on_load = moshi_mac.load(make_model("hibiki-1b"), quantize="q8", dtype="float32")
    from_file = moshi_mac.load(make_model("hibiki-1b", quantize="q8"), dtype="float32")
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in on_load.lm.named_modules())
    a, b = dict(tree_flatten(on_load.lm.parameters())), dict(tree_flatten(from_file.lm.parameters()))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and mx.array_equal(a[name], b[name]).item(), name


def test_score_takes_a_model(hibiki):
    from moshi_mac.scoring import score

    cfg = hibiki.config
    codes = mx.array(np.random.default_rng(0).integers(0, 100, (1, 1 + cfg.audio_codebooks, 6)))
    a, b = moshi_mac.score(hibiki, codes), score(hibiki.lm, codes)
    assert mx.array_equal(a.text_logits, b.text_logits, equal_nan=True).item()
    assert mx.array_equal(a.logits, b.logits, equal_nan=True).item()


# ---------------------------------------------------------------------------------------
# examples/
# ---------------------------------------------------------------------------------------

def _example(name: str, *args) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_example_translate_array(hibiki_dir, speech, tmp_path):
    out = _example("translate_array.py", hibiki_dir, speech, tmp_path / "t", "--max-tail-s",
                   MAX_TAIL, "--seed", SEED)
    doc = json.loads((tmp_path / "t.json").read_text())
    assert f"text: {doc['text']}" in out and doc["input"] is None
    assert sf.info(str(tmp_path / "t.wav")).samplerate == 24000
    assert (tmp_path / "t.srt").read_text().startswith("1\n")


def test_example_stream_loop(hibiki_dir, hibiki, speech, reference, tmp_path):
    out = _example("stream_loop.py", hibiki_dir, speech, tmp_path / "s.wav", "--max-tail-s",
                   MAX_TAIL, "--seed", SEED, "--chunk-ms", 50)
    assert f"text: {reference.text}" in out  # the same as file mode
    pcm, rate = sf.read(str(tmp_path / "s.wav"), dtype="float32")
    assert rate == 24000 and pcm.size == reference.pcm.size


def test_example_score_codes(hibiki_dir, speech):
    out = _example("score_codes.py", hibiki_dir, speech)
    rows = [line for line in out.splitlines() if "nats/code" in line]
    assert len(rows) == 8  # hibiki-1b generates 8 codebooks
    nll = [float(line.split(":")[1].split()[0]) for line in rows]
    assert all(0 < v < 20 for v in nll)
