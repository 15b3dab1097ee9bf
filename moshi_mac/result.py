"""What one run of a model over audio gives back, and the files `translate` writes from it.

`Result` (returned by `Model.run` and `Stream.result`) holds the generated speech (`pcm`,
float32, 24 kHz mono), the text with word and token times, and how the run went (steps,
wall time, why it ended, the sampling options). `Result.save(prefix, formats=...)` writes
the output files of `moshi-mac translate`: PREFIX.wav, PREFIX.srt / PREFIX.vtt, PREFIX.json
and PREFIX-stereo.wav (input left, output right); `Result.write` takes explicit paths.
Both, and the `translate` command, go through `Result.writers` (final path -> fn(temp
path)), committed as one set by `outputs.OutputSet.commit`: all the files or none, each
moved into place only once every one is written. To add an output format, add it to
`FORMATS` and to `Result.writers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .codec import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from .errors import MoshiMacError
from .transcript import FORMATS as SUBTITLE_FORMATS
from .transcript import Token, Word

# What `Result.save` can write: the wav, subtitles (one of SUBTITLE_FORMATS), the JSON
# transcript, and the stereo wav (input left, output right).
FORMATS = ("wav", *SUBTITLE_FORMATS, "json", "stereo")
DEFAULT_FORMATS = ("wav", "srt", "json")
SAMPLING_KEYS = ("seed", "cfg_coef", "temp", "top_k", "temp_text", "top_k_text", "greedy")


@dataclass
class InputInfo:
    """The input as given: a file (path) or an array (path None), before conversion."""

    path: str | None
    sample_rate: int
    channels: int
    duration: float  # seconds
    cleaned_samples: int = 0  # NaN/Inf or out-of-range samples set right (guards.py)

    def as_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "channels": self.channels,
                "duration": round(self.duration, 3), "cleaned_samples": self.cleaned_samples}

    @classmethod
    def from_report(cls, report) -> "InputInfo":
        """From `audio_io.read_audio`'s report (a file)."""
        return cls(str(report.path), report.sample_rate, report.channels, report.duration,
                   report.cleaned.nonfinite + report.cleaned.clipped)


@dataclass
class Result:
    """One run's output (see the module docstring). Times are seconds on the output
    audio's timeline."""

    pcm: np.ndarray  # float32 [samples], 24 kHz mono
    text: str  # the generated text, stripped
    words: list[Word]  # .text, .start, .end
    tokens: list[Token]  # every printed text token: .id, .piece, .time
    model: str  # the model's name
    model_type: str  # "hibiki" (translates) or "moshi" (answers)
    steps: int  # LM steps (the first frame counts twice)
    outputs: int  # output frames (80 ms each)
    wall_s: float
    eos_reached: bool  # Hibiki: the model ended its translation
    early_eos: int  # text EOS sampled before the input ended
    interrupted: bool  # stopped by Ctrl-C (or a cancelled stream): a valid partial result
    pipelined: bool
    sampling: dict  # the options the run used, after defaults (SAMPLING_KEYS)
    input: InputInfo
    input_pcm: np.ndarray = field(repr=False)  # the input at 24 kHz mono (for "stereo")
    stage_ms: dict = field(default_factory=dict)  # ms per call of encode / lm / decode
    sample_rate: int = SAMPLE_RATE
    error: str | None = None  # what stopped the run early (NaN/Inf out of the model)
    stopped_by: str | None = None  # the signal that interrupted it ("SIGTERM"), if one did

    @property
    def duration(self) -> float:
        """Seconds of generated output (of its audio, when the run kept it)."""
        return (self.pcm.size if self.pcm.size else self.outputs * FRAME_SIZE) / self.sample_rate

    @property
    def partial(self) -> bool:
        """The run did not finish (interrupted, or stopped by an error): what it made is
        valid but incomplete."""
        return self.interrupted or self.error is not None

    @property
    def ending(self) -> str:
        """Why the run ended, in words."""
        if self.error is not None:
            return f"stopped: {self.error}"
        if self.interrupted:
            by = f" by {self.stopped_by}" if self.stopped_by else ""
            return f"interrupted (partial outputs kept){by}"
        if self.model_type != "hibiki":
            return "end of input"
        return "end of translation (EOS)" if self.eos_reached else "tail limit reached before EOS"

    def transcript_meta(self) -> dict:
        """The JSON transcript's fields besides the text, words and tokens."""
        return dict(model=self.model, model_type=self.model_type, input=self.input.path,
                    input_audio=self.input.as_dict(), sample_rate=self.sample_rate,
                    frame_rate=FRAME_RATE, duration=round(self.duration, 3), steps=self.steps,
                    wall_s=round(self.wall_s, 3), pipelined=self.pipelined,
                    sampling=dict(self.sampling), end_of_text=self.eos_reached,
                    partial=self.partial, interrupted=self.interrupted, ending=self.ending)

    def writers(self, *, wav=None, subtitles=None, json=None,
                stereo=None) -> dict[Path, Callable[[Path], None]]:
        """Final path -> fn(temp path) writing that file, for each path given (subtitles:
        .srt or .vtt by its suffix), in this order: wav, stereo, subtitles, JSON."""
        from .audio_io import write_stereo_wav, write_wav
        from .transcript import transcript_files

        out: dict[Path, Callable[[Path], None]] = {}
        if wav is not None:
            out[Path(wav)] = lambda tmp: write_wav(tmp, self.pcm, self.sample_rate)
        if stereo is not None:
            out[Path(stereo)] = lambda tmp: write_stereo_wav(tmp, self.input_pcm, self.pcm,
                                                             self.sample_rate)
        if subtitles is not None or json is not None:
            subtitles, json = (None if p is None else Path(p) for p in (subtitles, json))
            texts = transcript_files(subtitles or Path("unused.srt"), json or Path("unused.json"),
                                     self.text, self.words, self.tokens,
                                     **self.transcript_meta())
            for p in (subtitles, json):
                if p is not None:
                    out[p] = lambda tmp, text=texts[p]: tmp.write_text(text, encoding="utf-8")
        return out

    def write(self, *, wav: Path | None = None, subtitles: Path | None = None,
              json: Path | None = None, stereo: Path | None = None) -> list[Path]:
        """Write the given files (subtitles: .srt or .vtt by its suffix) as one set; return
        them."""
        return _commit(self.writers(wav=wav, subtitles=subtitles, json=json, stereo=stereo))

    def save(self, path_prefix: str | Path, formats=DEFAULT_FORMATS) -> list[Path]:
        """Write PREFIX.wav, PREFIX.srt, PREFIX.vtt, PREFIX.json and PREFIX-stereo.wav, as
        `formats` asks (any of FORMATS); return the paths written."""
        formats = [formats] if isinstance(formats, str) else list(formats)
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise MoshiMacError(f"formats must be some of {', '.join(FORMATS)}, got "
                                f"{', '.join(map(repr, unknown)) or 'none'}")
        base = Path(path_prefix)
        stem = base.name
        paths: dict[str, Path] = {f: base.with_name(f"{stem}.{f}") for f in formats}
        if "stereo" in paths:
            paths["stereo"] = base.with_name(f"{stem}-stereo.wav")
        writers = self.writers(wav=paths.get("wav"), stereo=paths.get("stereo"))
        for fmt in SUBTITLE_FORMATS:
            if fmt in paths:
                writers.update(self.writers(subtitles=paths[fmt]))
        writers.update(self.writers(json=paths.get("json")))
        return _commit(writers)


def _commit(writers: dict[Path, Callable[[Path], None]]) -> list[Path]:
    """Write the files as one set (outputs.OutputSet.commit), making their folders."""
    from .outputs import OutputSet, write_error

    for path in writers:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(path, e) from None
    return OutputSet(list(writers)).commit(writers)
