"""The fault corpus: what a new user can get wrong, and what goes wrong at run time, each
run through the real CLI in a subprocess (`python -m moshi_mac.cli`) on one tiny random
model. Every case asserts the exit code (the scheme in errors.py), exactly one line on
stderr and no traceback, and the state of every output file: absent, complete, or a
valid partial (`NAME.partial.EXT`, outputs.py), with no temp or lock file left behind.

Most faults are found before any model compute (a second or two each); the run-time
ones (NaN weights, NaN input, batches, signals) run a few frames of the tiny model.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from .conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MIMI = "tokenizer-e351c8d8-checkpoint125.safetensors"
TAIL = ["--max-tail", "0.3"]


# ---------------------------------------------------------------------------------------
# Running the CLI and checking what it left
# ---------------------------------------------------------------------------------------

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}


def cli(*argv, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moshi_mac.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


def assert_one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "FATAL" not in err, err
    return lines[0]


def _strict(name):
    raise AssertionError(f"non-strict JSON constant {name}")


def assert_outputs(folder: Path, expected: dict[str, str]) -> None:
    """`expected`: file name -> "complete" | "partial" | "kept" (left as it was); every
    other file (temp files, locks) must be absent."""
    names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert names == sorted(expected), names
    for name, state in expected.items():
        path = folder / name
        if state == "kept":
            continue
        assert (".partial." in name) == (state == "partial"), name
        if name.endswith(".wav"):
            info = sf.info(str(path))
            assert info.samplerate == 24000 and info.format == "WAV"
            assert np.isfinite(sf.read(str(path))[0]).all()
        elif name.endswith(".json"):
            doc = json.loads(path.read_text(), parse_constant=_strict)
            assert doc["partial"] is (state == "partial")
        elif name.endswith(".srt"):
            text = path.read_text()
            assert text == "" or re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> ", text), text


def out_set(stem: str, state: str, stereo: bool = False) -> dict[str, str]:
    suffix = ".partial" if state == "partial" else ""
    names = [f"{stem}-out{suffix}.{ext}" for ext in ("wav", "srt", "json")]
    if stereo:
        names.append(f"{stem}-out-stereo{suffix}.wav")
    return {n: state for n in names}


# ---------------------------------------------------------------------------------------
# Inputs and broken models
# ---------------------------------------------------------------------------------------

def _tone(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    paths = {k: d / v for k, v in {
        "speech": "speech.wav", "brackets": "talk [fr].wav", "nan": "nan.wav",
        "notes": "notes.wav", "bad_mp3": "bad.mp3", "empty": "empty.wav", "folder": "a folder",
        "file": "plain.txt"}.items()}
    sf.write(paths["speech"], _tone(1.0), 24000)
    sf.write(paths["brackets"], _tone(0.5), 24000)
    bad = _tone(1.0)
    bad[3000], bad[14000], bad[20000] = np.nan, np.inf, 4.0
    sf.write(paths["nan"], bad, 24000, subtype="FLOAT")
    paths["notes"].write_text("not audio")
    paths["bad_mp3"].write_bytes(b"\x00" * 4096)  # libsndfile's mpg123 prints notes to stderr
    sf.write(paths["empty"], np.zeros(0, np.float32), 24000)
    paths["folder"].mkdir()
    paths["file"].write_text("a file")
    return paths


def _copy_model(src: Path, dst: Path, skip: str = "") -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != skip:
            os.link(f, dst / f.name)
    return dst


def _edit_config(model: Path, edit: Callable[[dict], None]) -> Path:
    import tomli_w

    data = tomllib.loads((model / "config.toml").read_text())
    edit(data)
    (model / "config.toml").unlink()  # a hard link: replace, never write through
    (model / "config.toml").write_text(tomli_w.dumps(data))
    return model


def _poison(model: Path, file: str, pick: Callable[[str], bool]) -> None:
    w = mx.load(str(model / file))
    name = next(k for k in sorted(w) if pick(k))
    w[name] = mx.full(w[name].shape, float("nan"), w[name].dtype)
    (model / file).unlink()
    mx.save_safetensors(str(model / file), w)


def _truncate(model: Path, file: str) -> None:
    data = (model / file).read_bytes()
    (model / file).unlink()
    (model / file).write_bytes(data[: len(data) // 2])


def _bad_offsets(model: Path, file: str) -> None:
    """Shift one tensor's data_offsets by 8 bytes: same file size, inconsistent header."""
    import struct

    raw = (model / file).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 8]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text)) if len(text) <= n else b""
    assert len(text) == n
    (model / file).unlink()
    (model / file).write_bytes(raw[:8] + text + raw[8 + n:])


def _set(table: str, key: str, value) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        t = d
        for part in table.split(".") if table else []:
            t = t.setdefault(part, {})
        t[key] = value
    return edit


VARIANTS: dict[str, Callable[[Path], None]] = {
    "empty-config": lambda m: ((m / "config.toml").unlink(), (m / "config.toml").write_text("")),
    "not-toml": lambda m: ((m / "config.toml").unlink(),
                           (m / "config.toml").write_text("d_model = = 3\n")),
    "num_heads=0": lambda m: _edit_config(m, _set("transformer", "num_heads", 0)),
    "d_model=-64": lambda m: _edit_config(m, _set("transformer", "d_model", -64)),
    "dim_feedforward=-1": lambda m: _edit_config(m, _set("transformer", "dim_feedforward", -1)),
    "num_layers=-2": lambda m: _edit_config(m, _set("transformer", "num_layers", -2)),
    "num_heads=3": lambda m: _edit_config(m, _set("transformer", "num_heads", 3)),
    "context=1e11-int": lambda m: _edit_config(m, _set("transformer", "context", 10**11)),
    "context=1e11-float": lambda m: _edit_config(m, _set("transformer", "context", 1e11)),
    "context=huge": lambda m: _edit_config(m, _set("transformer", "context", 2_000_000_000)),
    "depformer-num_heads=0": lambda m: _edit_config(
        m, _set("depformer.transformer", "num_heads", 0)),
    "norm_eps=-1": lambda m: _edit_config(m, _set("moshi_mac", "norm_eps", -1.0)),
    "norm_eps=nan": lambda m: _edit_config(m, _set("moshi_mac", "norm_eps", float("nan"))),
    "temp=hot": lambda m: _edit_config(m, _set("moshi_mac.generation", "temp", "hot")),
    "temp=-1": lambda m: _edit_config(m, _set("moshi_mac.generation", "temp", -1.0)),
    "top_p=2": lambda m: _edit_config(m, _set("moshi_mac.generation", "top_p", 2.0)),
    "top_k=-5": lambda m: _edit_config(m, _set("moshi_mac.generation", "top_k", -5)),
    "num_slices=0": lambda m: _edit_config(m, _set("depformer", "num_slices", 0)),
    "audio_codebooks=str": lambda m: _edit_config(m, _set("", "audio_codebooks", "16")),
    "causal=str": lambda m: _edit_config(m, _set("transformer", "causal", "yes")),
    "delays-short": lambda m: _edit_config(m, _set("moshi_mac", "delays", [0, 1])),
    "unknown-key": lambda m: _edit_config(m, _set("transformer", "d_modle", 64)),
    "truncated-lm": lambda m: _truncate(m, "model.safetensors"),
    "truncated-mimi": lambda m: _truncate(m, MIMI),
    "offsets-lm": lambda m: _bad_offsets(m, "model.safetensors"),
    "offsets-mimi": lambda m: _bad_offsets(m, MIMI),
    "garbage-mimi": lambda m: ((m / MIMI).unlink(), (m / MIMI).write_bytes(b"\x00" * 64)),
    "no-tokenizer": lambda m: (m / "tokenizer_spm_1000.model").unlink(),
    "nan-lm": lambda m: _poison(m, "model.safetensors",
                                lambda k: k.startswith("transformer.layers.1.")
                                and k.endswith("linear_in.weight")),
    "nan-mimi": lambda m: _poison(m, MIMI, lambda k: k.startswith("decoder.")
                                  and k.endswith("conv.weight")),
}


@pytest.fixture(scope="session")
def model(make_model) -> Path:
    return make_model("hibiki-1b")


@pytest.fixture(scope="module")
def variant(model, tmp_path_factory):
    """variant(name) -> a copy of the tiny model (hard links) with one fault, made once."""
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            dst = _copy_model(model, tmp_path_factory.mktemp("variants") / name)
            VARIANTS[name](dst)
            cache[name] = dst
        return cache[name]

    return make


# ---------------------------------------------------------------------------------------
# The corpus: faults found before any compute
# ---------------------------------------------------------------------------------------

@dataclass
class Ctx:
    model: Path
    inputs: dict[str, Path]
    out: Path
    variant: Callable[[str], Path]


@dataclass
class Fault:
    argv: Callable[[Ctx], list]
    rc: int
    says: str  # a piece of the stderr line
    outputs: dict[str, str] = field(default_factory=dict)  # in ctx.out, after the run


def tr(*flags, inp="speech"):
    """`translate INPUT -w MODEL -o OUT FLAGS`."""
    return lambda c: ["translate", c.inputs[inp], "-w", c.model, "-o", c.out, *flags]


def with_variant(command: str, name: str):
    if command == "check":
        return lambda c: ["check", "-w", c.variant(name)]
    return lambda c: ["translate", c.inputs["speech"], "-w", c.variant(name), "-o", c.out, *TAIL]


def live(*flags):
    return lambda c: ["live", "-w", c.model, *flags]


FAST: dict[str, Fault] = {
    # -- numeric flags: no nan, inf or out-of-range value ---------------------------------
    "temp-nan": Fault(tr("--temp", "nan"), 2, "--temp must be a finite number"),
    "temp-inf": Fault(tr("--temp", "inf"), 2, "--temp must be a finite number"),
    "temp-negative": Fault(tr("--temp", "-1"), 2, "--temp must be a finite number in [0, 100]"),
    "temp-word": Fault(tr("--temp", "hot"), 2, "invalid float value: 'hot'"),
    "temp-text-nan": Fault(tr("--temp-text", "nan"), 2, "--temp-text must be"),
    "cfg-nan": Fault(tr("--cfg", "nan"), 2, "--cfg must be a finite number in (0, 100]"),
    "cfg-negative": Fault(tr("--cfg", "-1"), 2, "--cfg must be"),
    "cfg-inf": Fault(tr("--cfg", "inf"), 2, "--cfg must be"),
    "top-k-negative": Fault(tr("--top-k", "-5"), 2, "--top-k must be"),
    "top-k-text-negative": Fault(tr("--top-k-text", "-1"), 2, "--top-k-text must be"),
    "top-k-float": Fault(tr("--top-k", "2.5"), 2, "invalid int value"),
    "seed-negative": Fault(tr("--seed", "-1"), 2, "--seed must be"),
    "seed-huge": Fault(tr("--seed", str(2**40)), 2, "--seed must be"),
    "max-tail-nan": Fault(tr("--max-tail", "nan"), 2, "--max-tail must be"),
    "max-tail-inf": Fault(tr("--max-tail", "inf"), 2, "--max-tail must be"),
    "max-tail-negative": Fault(tr("--max-tail", "-1"), 2, "--max-tail must be"),
    "unknown-flag": Fault(tr("--bogus"), 2, "unrecognized arguments: --bogus"),
    "bad-choice": Fault(tr("--subtitles", "ass"), 2, "invalid choice: 'ass'"),
    "no-input": Fault(lambda c: ["translate", "-w", c.model], 2, "required: IN"),
    "live-jitter-nan": Fault(live("--jitter-ms", "nan"), 2, "--jitter-ms must be"),
    "live-duration-nan": Fault(live("--duration", "nan"), 2, "--duration must be"),
    "live-duration-zero": Fault(live("--duration", "0"), 2, "--duration must be"),
    "live-duration-inf": Fault(live("--duration", "inf"), 2, "--duration must be"),
    "live-max-lag-negative": Fault(live("--max-lag-ms", "-1"), 2, "--max-lag-ms must be"),
    "live-echo-db-nan": Fault(live("--echo-guard-db", "nan"), 2, "--echo-guard-db must be"),
    "live-buffer-below-jitter": Fault(live("--max-buffer-ms", "100"), 2,
                                      "--max-buffer-ms must be at least"),
    "live-record-is-a-file": Fault(lambda c: ["live", "-w", c.model, "--record",
                                              c.inputs["file"]], 2, "is a file, not a folder"),
    "live-record-under-a-file": Fault(lambda c: ["live", "-w", c.model, "--record",
                                                 c.inputs["file"] / "sessions"], 2,
                                      "is a file, not a folder"),
    "doctor-seconds-nan": Fault(lambda c: ["doctor", "-w", c.model, "--seconds", "nan"], 2,
                                "--seconds must be"),
    "make-random-seed-negative": Fault(lambda c: ["make-random-model", "--config", "hibiki-1b",
                                                  "--out", c.out / "m", "--seed", "-1"], 2,
                                       "--seed must be"),
    # -- inputs -----------------------------------------------------------------------------
    "input-missing": Fault(lambda c: ["translate", c.out.parent / "nope.wav", "-w", c.model,
                                      "-o", c.out], 2, "does not exist"),
    "input-markup-path": Fault(lambda c: ["translate", c.out.parent / "x[/x] [red].wav", "-w",
                                          c.model, "-o", c.out], 2, "x[/x] [red].wav does not exist"),
    "input-is-a-folder": Fault(tr(inp="folder"), 2, "is a folder, not an audio file"),
    "input-not-audio": Fault(tr(inp="notes"), 2, "cannot read audio file"),
    "input-garbage-mp3": Fault(tr(inp="bad_mp3"), 2, "cannot read audio file"),
    "input-empty": Fault(tr(inp="empty"), 2, "contains no audio"),
    "batch-all-unreadable": Fault(lambda c: ["translate", c.inputs["notes"], c.inputs["empty"],
                                             "-w", c.model, "-o", c.out], 2,
                                  "none of the 2 inputs can be read"),
    "two-inputs-one-wav": Fault(lambda c: ["translate", c.inputs["speech"], c.inputs["nan"],
                                           "-w", c.model, "-o", c.out / "x.wav"], 2,
                                "names one file"),
    "output-is-the-input": Fault(lambda c: ["translate", c.inputs["speech"], "-w", c.model,
                                            "-o", c.inputs["speech"]], 2,
                                 "would overwrite an input"),
    # -- outputs ------------------------------------------------------------------------------
    "out-is-a-file": Fault(lambda c: ["translate", c.inputs["speech"], "-w", c.model,
                                      "-o", c.inputs["file"]], 2, "is a file, not a folder"),
    "out-under-a-file": Fault(lambda c: ["translate", c.inputs["speech"], "-w", c.model,
                                         "-o", c.inputs["file"] / "sub"], 2,
                              "is a file, not a folder"),
    # -- the model folder ---------------------------------------------------------------------
    "weights-is-a-safetensors-file": Fault(
        lambda c: ["translate", c.inputs["speech"], "-w", c.model / "model.safetensors",
                   "-o", c.out], 2, "is a file; a model folder holds"),
    "weights-missing": Fault(lambda c: ["check", "-w", c.out / "nowhere"], 1,
                             "no such directory"),
    "weights-and-model": Fault(lambda c: ["check", "-w", c.model, "-m", "hibiki-1b-bf16"], 2,
                               "either --model or --weights"),
    "no-model": Fault(lambda c: ["check"], 2, "no model given"),
    "unknown-model": Fault(lambda c: ["check", "-m", "hibiki-9z"], 1, "unknown model"),
    "not-downloadable": Fault(lambda c: ["check", "-m", "hibiki-zero-3b-pytorch-bf16",
                                         "--no-download"], 1, "where there is network run"),
    # -- configs (one line, blamed on the right field) ---------------------------------------
    "config-empty": Fault(with_variant("check", "empty-config"), 2,
                          "missing the [transformer] table"),
    "config-not-toml": Fault(with_variant("check", "not-toml"), 2, "not valid TOML"),
    "config-num-heads-0": Fault(with_variant("translate", "num_heads=0"), 2,
                                "transformer.num_heads must be > 0"),
    "config-d-model-negative": Fault(with_variant("check", "d_model=-64"), 2,
                                     "transformer.d_model must be > 0"),
    "config-ffn-negative": Fault(with_variant("check", "dim_feedforward=-1"), 2,
                                 "transformer.dim_feedforward must be > 0"),
    "config-num-layers-negative": Fault(with_variant("translate", "num_layers=-2"), 2,
                                        "transformer.num_layers must be > 0"),
    "config-not-divisible": Fault(with_variant("check", "num_heads=3"), 2,
                                  "d_model 64 is not divisible by num_heads 3"),
    "config-context-1e11-int": Fault(with_variant("translate", "context=1e11-int"), 2,
                                     "transformer.context must be"),
    "config-context-1e11-float": Fault(with_variant("check", "context=1e11-float"), 2,
                                       "transformer.context must be an integer"),
    "config-context-memory": Fault(with_variant("check", "context=huge"), 2,
                                   "needs a KV cache of"),
    "config-depformer-heads-0": Fault(with_variant("check", "depformer-num_heads=0"), 2,
                                      "depformer.transformer.num_heads must be > 0"),
    "config-norm-eps-negative": Fault(with_variant("check", "norm_eps=-1"), 2,
                                      "moshi_mac.norm_eps must be > 0"),
    "config-norm-eps-nan": Fault(with_variant("check", "norm_eps=nan"), 2,
                                 "moshi_mac.norm_eps must be"),
    "config-temp-word": Fault(with_variant("translate", "temp=hot"), 2,
                              "moshi_mac.generation.temp must be a number, got 'hot'"),
    "config-temp-negative": Fault(with_variant("check", "temp=-1"), 2,
                                  "moshi_mac.generation.temp must be >= 0"),
    "config-top-p": Fault(with_variant("check", "top_p=2"), 2,
                          "moshi_mac.generation.top_p must be"),
    "config-top-k-negative": Fault(with_variant("check", "top_k=-5"), 2,
                                   "moshi_mac.generation.top_k must be >= 0"),
    "config-num-slices-0": Fault(with_variant("check", "num_slices=0"), 2,
                                 "depformer.num_slices must be > 0"),
    "config-codebooks-string": Fault(with_variant("check", "audio_codebooks=str"), 2,
                                     "audio_codebooks must be an integer"),
    "config-bool-string": Fault(with_variant("check", "causal=str"), 2,
                                "transformer.causal must be true or false"),
    "config-delays": Fault(with_variant("check", "delays-short"), 2,
                           "moshi_mac.delays has 2 entries"),
    "config-unknown-key": Fault(with_variant("check", "unknown-key"), 2,
                                "did you mean 'd_model'"),
    # -- weights files ---------------------------------------------------------------------
    "lm-truncated": Fault(with_variant("translate", "truncated-lm"), 2, "is truncated"),
    "mimi-truncated": Fault(with_variant("translate", "truncated-mimi"), 2, "is truncated"),
    "lm-data-offsets-check": Fault(with_variant("check", "offsets-lm"), 2, "data_offsets"),
    "lm-data-offsets-translate": Fault(with_variant("translate", "offsets-lm"), 2,
                                       "data_offsets"),
    "mimi-data-offsets": Fault(with_variant("translate", "offsets-mimi"), 2, "data_offsets"),
    "mimi-garbage": Fault(with_variant("check", "garbage-mimi"), 2, "not a safetensors file"),
    "tokenizer-missing": Fault(with_variant("check", "no-tokenizer"), 1, "no text tokenizer"),
}


@pytest.mark.parametrize("name", list(FAST))
def test_fault_before_compute(name, model, inputs, variant, tmp_path):
    fault = FAST[name]
    out = tmp_path / "out"
    r = cli(*fault.argv(Ctx(model, inputs, out, variant)))
    line = assert_one_line(r.stderr)
    assert r.returncode == fault.rc, r.stderr
    assert fault.says in line, line
    assert_outputs(out, fault.outputs)
    assert out.exists() == bool(fault.outputs)  # not even an empty output folder is left


# ---------------------------------------------------------------------------------------
# Faults around outputs that already exist or are being written
# ---------------------------------------------------------------------------------------

def test_existing_output_needs_force(model, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "speech-out.json").write_text("{}")  # someone's earlier output
    r = cli("translate", inputs["speech"], "-w", model, "-o", out)
    assert r.returncode == 2 and "exists; pass --force" in assert_one_line(r.stderr)
    assert_outputs(out, {"speech-out.json": "kept"})
    assert (out / "speech-out.json").read_text() == "{}"


def test_concurrent_writer_is_refused(model, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".speech-out.wav.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another run holds it
    os.write(fd, b"4242")
    try:
        r = cli("translate", inputs["speech"], "-w", model, "-o", out)
    finally:
        os.close(fd)
    line = assert_one_line(r.stderr)
    assert r.returncode == 1 and "another moshi-mac run (pid 4242) is writing" in line
    lock.unlink()
    assert_outputs(out, {})


def _without_root_override() -> list[str]:
    """A command prefix under which permission bits hold: none for a normal user; as root,
    `setpriv` drops the capabilities that let root write anywhere (util-linux)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): read-only folders cannot "
                    "be made")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("case", ["translate-out", "translate-out-below", "live-record"])
def test_read_only_folder_is_refused_before_compute(case, model, inputs, tmp_path):
    """A real read-only folder (permission bits, not a stand-in): one line, exit 2, before
    the model loads, and nothing written."""
    locked = tmp_path / "locked"
    locked.mkdir()
    target = locked / "sub" if case == "translate-out-below" else locked
    argv = (["live", "-w", model, "--record", target] if case == "live-record" else
            ["translate", inputs["speech"], "-w", model, "-o", target])
    os.chmod(locked, 0o555)
    try:
        r = subprocess.run([*_without_root_override(), sys.executable, "-m", "moshi_mac.cli",
                            *map(str, argv)], capture_output=True, text=True, timeout=180,
                           env=_env(), cwd=ROOT)
        names = sorted(p.name for p in locked.iterdir())
    finally:
        os.chmod(locked, 0o755)
    line = assert_one_line(r.stderr)
    assert r.returncode == 2, r.stderr
    says = "cannot create" if case == "translate-out-below" else "is not writable"
    assert says in line and str(locked) in line, line
    assert names == [] and "loading" not in r.stdout


def test_not_enough_space_is_found_before_compute(tmp_path, monkeypatch):
    """In-process (a full disk cannot be made in a subprocess): the estimate of the
    outputs is compared with the free space before anything runs."""
    import shutil as sh

    from moshi_mac.errors import UsageError
    from moshi_mac.outputs import OutputSet
    from moshi_mac.translate import estimate_bytes

    need = estimate_bytes(60.0, 15.0, stereo=True)
    assert need > 3 * 2 * 24000 * 75  # three 16-bit wavs of 75 s
    monkeypatch.setattr(sh, "disk_usage", lambda p: sh._ntuple_diskusage(10**9, 10**9, need // 2))
    with pytest.raises(UsageError, match="free"):
        OutputSet([tmp_path / "a.wav", tmp_path / "a.json"]).preflight(False, need)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Run-time faults: a few frames of the tiny model
# ---------------------------------------------------------------------------------------

def test_nan_input_is_cleaned_with_one_warning(model, inputs, tmp_path):
    r = cli("translate", inputs["nan"], "-w", model, "-o", tmp_path, *TAIL)
    line = assert_one_line(r.stderr)
    assert r.returncode == 0, r.stderr
    assert "warning:" in line and "2 NaN/Inf sample(s) replaced by silence" in line
    assert "1 sample(s) outside [-1, 1] clipped" in line and "0.12 s" in line
    assert_outputs(tmp_path, out_set("nan", "complete"))
    doc = json.loads((tmp_path / "nan-out.json").read_text())
    assert doc["input_audio"]["cleaned_samples"] == 3


def test_brackets_in_names_are_printed_as_they_are(model, inputs, tmp_path):
    r = cli("translate", inputs["brackets"], "-w", model, "-o", tmp_path, *TAIL)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "talk [fr].wav" in r.stdout and f"{tmp_path}/talk [fr]-out.wav" in r.stdout
    assert_outputs(tmp_path, out_set("talk [fr]", "complete"))


@pytest.mark.parametrize("name,says", [
    ("nan-lm", "NaN/Inf logits"), ("nan-mimi", "Mimi decoded NaN/Inf audio")])
def test_nonfinite_model_stops_with_partial_outputs(name, says, variant, inputs, tmp_path):
    r = cli("translate", inputs["speech"], "-w", variant(name), "-o", tmp_path, *TAIL)
    line = assert_one_line(r.stderr)
    assert r.returncode == 1 and says in line and "moshi-mac doctor" in line, line
    assert "partial outputs kept: speech-out.partial.wav" in line
    assert_outputs(tmp_path, out_set("speech", "partial"))


def test_batch_goes_on_past_a_bad_file(model, inputs, tmp_path):
    r = cli("translate", inputs["notes"], inputs["speech"], "-w", model, "-o", tmp_path, *TAIL)
    line = assert_one_line(r.stderr)
    assert r.returncode == 1 and "1 of 2 inputs failed" in line and "notes.wav" in line
    assert "failed: unreadable" in r.stdout
    assert_outputs(tmp_path, out_set("speech", "complete"))


# ---------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------

def _start(argv: list, ready: str) -> tuple[subprocess.Popen, str]:
    """Start the CLI; return once `ready` was printed on stdout (and a bit more)."""
    proc = subprocess.Popen([sys.executable, "-m", "moshi_mac.cli", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    deadline = time.monotonic() + 120
    while ready not in seen:
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{ready!r} never came: {seen}{proc.stderr.read()}")
        seen += line
    return proc, seen


def _finish(proc: subprocess.Popen, *signals: int, gap: float = 0.2):
    for i, s in enumerate(signals):
        if i:
            time.sleep(gap)
        proc.send_signal(s)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return out, err


SLOW = ["--debug-step-delay-ms", "150"]


@pytest.mark.parametrize("sig,rc,name", [(signal.SIGTERM, 143, "SIGTERM"),
                                          (signal.SIGHUP, 129, "SIGHUP"),
                                          (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_keeps_valid_partial_outputs(sig, rc, name, model, inputs, tmp_path):
    proc, _ = _start(["translate", inputs["speech"], "-w", model, "-o", tmp_path, "--stereo",
                      *SLOW], "translating speech.wav")
    time.sleep(1.5)
    _, err = _finish(proc, sig)
    line = assert_one_line(err)
    assert proc.returncode == rc and f"stopped by {name}: partial outputs kept" in line, err
    assert_outputs(tmp_path, out_set("speech", "partial", stereo=True))
    doc = json.loads((tmp_path / "speech-out.partial.json").read_text())
    assert doc["interrupted"] is True and doc["ending"].endswith(f"by {name}")
    assert sf.info(str(tmp_path / "speech-out.partial.wav")).frames == \
        round(doc["duration"] * 24000)


def test_second_ctrl_c_exits_promptly_and_cleanly(model, inputs, tmp_path):
    for _ in range(3):  # the abort was intermittent (2 in 7)
        out = tmp_path / f"run{_}"
        proc, _seen = _start(["translate", inputs["speech"], "-w", model, "-o", out, *SLOW],
                             "translating speech.wav")
        time.sleep(1.0)
        t0 = time.monotonic()
        _, err = _finish(proc, signal.SIGINT, signal.SIGINT)
        assert time.monotonic() - t0 < 10
        line = assert_one_line(err)
        assert proc.returncode == 130, err  # never 134 (abort)
        assert "Ctrl-C" in line
        # all of the partial set, or none of it; never temp or lock files
        names = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert names in ([], sorted(out_set("speech", "partial"))), names
        assert_outputs(out, {n: "partial" for n in names})


def test_force_then_sigterm_never_replaces_a_complete_output(model, inputs, tmp_path):
    r = cli("translate", inputs["speech"], "-w", model, "-o", tmp_path, *TAIL)
    assert r.returncode == 0, r.stderr
    before = {n: (tmp_path / n).read_bytes() for n in out_set("speech", "complete")}
    proc, _ = _start(["translate", inputs["speech"], "-w", model, "-o", tmp_path, "--force",
                      *SLOW], "translating speech.wav")
    time.sleep(1.5)
    _, err = _finish(proc, signal.SIGTERM)
    assert proc.returncode == 143 and "stopped by SIGTERM" in assert_one_line(err)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    assert_outputs(tmp_path, {**out_set("speech", "complete"), **out_set("speech", "partial")})


def _live_device(device: str) -> list[str]:
    """The flags that pick the `device` fixture's device (conftest.py)."""
    return [] if device == "default" else ["--input-device", device, "--output-device", device]


def test_live_sigterm_finalizes_the_recording(model, device, tmp_path):
    dev = _live_device(device)
    proc, _ = _start(["live", "-w", model, "--record", tmp_path, *dev], "Use headphones")
    time.sleep(3)
    _, err = _finish(proc, signal.SIGTERM)
    line = assert_one_line(err)
    assert proc.returncode == 143 and "stopped by SIGTERM: session recorded in" in line, err
    (folder,) = tmp_path.glob("session-*")
    names = {p.name for p in folder.iterdir()} - {"audio-library.log"}  # ALSA's messages
    assert sorted(names) == ["input.wav", "output.wav", "transcript.json", "transcript.srt"]
    mic, rate = sf.read(str(folder / "input.wav"))
    assert rate == 24000 and mic.size > 12000  # a finalized wav with the session in it
    doc = json.loads((folder / "transcript.json").read_text(), parse_constant=_strict)
    assert doc["ending"] == "stopped by SIGTERM" and doc["session"]["frames_in"] >= 1


def test_live_second_ctrl_c_exits_cleanly_with_the_recordings_closed(model, device, tmp_path):
    dev = _live_device(device)
    proc, _ = _start(["live", "-w", model, "--record", tmp_path, *dev], "Use headphones")
    time.sleep(2)
    t0 = time.monotonic()
    _, err = _finish(proc, signal.SIGINT, signal.SIGINT, gap=0.05)
    assert time.monotonic() - t0 < 10
    line = assert_one_line(err)
    assert proc.returncode == 130 and "Ctrl-C" in line, err  # never 134
    (folder,) = tmp_path.glob("session-*")
    names = sorted(p.name for p in folder.iterdir())
    assert {"input.wav", "output.wav"} <= set(names), names  # finalized, first or second
    assert set(names) <= {"input.wav", "output.wav", "transcript.json", "transcript.srt",
                          "audio-library.log"}
    for name in ("input.wav", "output.wav"):
        assert sf.info(str(folder / name)).samplerate == 24000


def test_devices_without_any_device_says_so(tmp_path):
    """PulseAudio unreachable and no ALSA hardware: no device at all."""
    r = subprocess.run([sys.executable, "-m", "moshi_mac.cli", "devices"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT,
                       env={**_env(), "PULSE_SERVER": str(tmp_path / "no-such-server")})
    import sounddevice as sd

    if r.returncode == 0 and "audio devices" in r.stdout and len(sd.query_devices()) > 2:
        pytest.skip("this machine has audio hardware besides PulseAudio")
    line = assert_one_line(r.stderr)
    assert r.returncode == 1 and "no audio devices found" in line

