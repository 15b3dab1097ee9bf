"""The public Python API: load a model, run it over audio, or stream audio through it.

    import moshi_mac

    model = moshi_mac.load("hibiki-1b-bf16", quantize="q8")  # a name, a repo id or a folder
    result = model.run(pcm, sample_rate=16000, seed=0)  # a numpy array, or a file path
    print(result.text)                               # .pcm (24 kHz), .words, .tokens
    result.save("out/talk")                          # out/talk.wav, .srt, .json

    with model.stream(seed=0) as stream:
        for chunk in chunks:                         # any length, any (fixed) rate
            for event in stream.feed(chunk, sample_rate=48000):
                ...                                  # event.kind: "audio" (.pcm) or "text" (.text)
        for event in stream.close():                 # Hibiki: the end-of-input flush
            ...
    result = stream.result()                         # the whole run, as `run` gives it

    out = moshi_mac.score(model, codes)              # teacher-forced logits (scoring.py)

`load` resolves, checks (config vs LM weights vs tokenizer vs Mimi: `check`, which is
`moshi-mac check`) and loads; every command loads its model through it. `Model.run` is
the file path of `moshi-mac translate`: both call `run_pcm`. NaN or Inf out of the model
stops a run with a `NonFiniteError` whose `.result` is what was made before it. Hibiki
translates, feeding the end-of-input codes and then silence until it ends its translation
(at most `max_tail_s`); Moshi answers, as long as the input.

Layers: every command loads through `load` (`check` is its first half). `Model.run` and
`Stream` drive `engine.Session`, the streaming session under everything; `live` and
`serve` drive the same class with a source that pulls from a microphone or a socket, so
that Mimi encode, the LM and Mimi decode keep overlapping from one frame to the next
(`Stream.feed` returns only once its frames are done).

Sampling options (`Sampling`), for `run` and `stream`: seed, temp, top_k, temp_text,
top_k_text, cfg, greedy, max_tail_s. Left out (None), they take the model config's values
(`[moshi_mac.generation]`, see config/schema.py); without a seed there, a run draws one.

Stream contract (the web server builds on it; keep it stable):
- `feed(pcm, sample_rate=None) -> list[Event]`: add audio of any length, [samples] or
  [samples, channels], float or integer PCM. The rate of the first feed holds for the
  whole stream (None: 24 kHz); other rates go through a streaming soxr resampler. The
  model runs, on the calling thread (Mimi encode and decode overlap it on threads of
  their own), over every complete 80 ms frame; `feed` returns when they are done, with
  their events. A chunk shorter than a frame just waits in the buffer.
- `close() -> list[Event]`: the end of the input: the last partial frame, zero-padded;
  Hibiki then gets the end-of-input flush (the EOS frame, then silence until it ends its
  translation, at most `max_tail_s`). Returns the last events; [] when called again.
- `cancel()`: end without the flush (e.g. a client left); safe from another thread,
  where it stops a running `feed` within a frame. `result().interrupted` is then True.
- `result() -> Result`: after `close` (or `cancel`), the whole run. Fed the same audio
  in chunks of any lengths, it equals `Model.run` on that audio with the same seed,
  exactly, at any rate: soxr's streaming resampler, flushed by `close`, gives the samples
  of its one-shot resampler (tests/test_api.py).
- A context manager: `with model.stream() as s:` closes on exit, cancels on an exception.
  Ctrl-C during a `feed` keeps what was generated, cancels the stream and re-raises.
- `Event(kind, start, end, pcm, text)`: per output frame, an "audio" event (`pcm`: 1920
  float32 samples, 80 ms at 24 kHz) and, if the frame adds text, a "text" event (`text`:
  the piece, with its leading space); start/end: seconds on the output audio's timeline.
  The output lags the input by the model's delay (a few frames).
- One thread: MLX streams belong to the thread that made them, so a stream computes on
  the thread of its first `feed`; `feed` and `close` from another thread after that are
  refused (a one-line MoshiMacError). In an asyncio server, make
  the stream anywhere and feed it from a single-thread executor. A stream does no warm-up
  (it would change the random draws).
"""

from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from .codec import FRAME_SIZE, SAMPLE_RATE
from .engine import FRAME_S, InFrame, LoadedModel, Session, SessionResult
from .errors import MoshiMacError
from .result import SAMPLING_KEYS, InputInfo, Result

DEFAULT_MAX_TAIL_S = 15.0  # Hibiki: the most silence fed after the input, waiting for its end


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    """The keyword options of `Model.run` and `Model.stream`; None: the model's default."""

    seed: int | None = None  # the same seed gives the same output
    temp: float | None = None  # audio temperature
    top_k: int | None = None  # audio top-k
    temp_text: float | None = None  # text temperature
    top_k_text: int | None = None  # text top-k
    cfg: float | None = None  # classifier-free guidance coefficient (1 = off)
    greedy: bool = False  # argmax instead of sampling
    max_tail_s: float | None = None  # Hibiki: most silence after the input (default 15 s)

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> "Sampling":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise MoshiMacError(f"unknown sampling option(s) {', '.join(unknown)}; "
                                f"the options are {', '.join(sorted(names))}")
        s = cls(**kwargs)
        if s.max_tail_s is not None and not s.max_tail_s >= 0:
            raise MoshiMacError(f"max_tail_s must be >= 0 seconds, got {s.max_tail_s}")
        return s

    def gen_options(self):
        from .generate import GenOptions

        return GenOptions(temp=self.temp, top_k=self.top_k, temp_text=self.temp_text,
                          top_k_text=self.top_k_text, cfg_coef=self.cfg, greedy=self.greedy,
                          seed=self.seed)

    @property
    def tail_s(self) -> float:
        return DEFAULT_MAX_TAIL_S if self.max_tail_s is None else self.max_tail_s


def tail_frames(max_tail_s: float) -> int:
    """Frames of silence fed at most after Hibiki's end-of-input frame."""
    return math.ceil(max_tail_s / FRAME_S)


# ---------------------------------------------------------------------------------------
# The one run path (Model.run and `moshi-mac translate`)
# ---------------------------------------------------------------------------------------

def make_session(model: LoadedModel, options, **kwargs) -> Session:
    """A session that ends where file mode ends: Hibiki at its text EOS."""
    return Session(model, options, stop_on_eos=model.is_hibiki, **kwargs)


def to_result(model: LoadedModel, session: Session, res: SessionResult, input_pcm: np.ndarray,
              info: InputInfo) -> Result:
    text = session.text
    opts = session.stepper.gen.opts
    return Result(pcm=res.pcm, text=text.text.strip(), words=list(text.words),
                  tokens=list(text.tokens), model=model.name,
                  model_type=model.cfg.moshi_mac.model_type, steps=res.steps,
                  outputs=res.outputs, wall_s=res.wall_s, eos_reached=res.eos_reached,
                  early_eos=res.early_eos, interrupted=res.interrupted,
                  pipelined=res.pipelined, sampling={k: getattr(opts, k) for k in SAMPLING_KEYS},
                  input=info, input_pcm=input_pcm, stage_ms=res.stage_ms)


def run_session(model: LoadedModel, pcm: np.ndarray, options, *,
                max_tail_s: float = DEFAULT_MAX_TAIL_S, pipelined: bool = True,
                slow_s: float = 0.0, listeners=(), on_step=None,
                stop: threading.Event | None = None) -> tuple[Session, SessionResult]:
    """Run 24 kHz mono `pcm` through a fresh session: Hibiki with the end-of-input flush
    (at most `max_tail_s` of silence), Moshi for as long as the input. `listeners` and
    `on_step` are the session's hooks (translate's progress display); setting `stop` ends
    the run early. Ctrl-C ends it with a valid partial result (`interrupted`). A
    NonFiniteError carries the session (`.session`) and what was made (`.partial`)."""
    from .engine import FileSource
    from .errors import NonFiniteError

    source = FileSource(pcm, flush=model.is_hibiki, max_tail_frames=tail_frames(max_tail_s))
    session = make_session(model, options, slow_s=slow_s)
    session.listeners.extend(listeners)
    try:
        return session, session.run(source, pipelined=pipelined, on_step=on_step, stop=stop)
    except NonFiniteError as e:
        e.session = session
        raise


def run_pcm(model: LoadedModel, pcm: np.ndarray, options, info: InputInfo, **kwargs) -> Result:
    """`run_session` (the path of `moshi-mac translate`) as a Result. A NonFiniteError
    carries the partial Result (`.result`, its `error` set)."""
    from .errors import NonFiniteError

    try:
        session, res = run_session(model, pcm, options, **kwargs)
    except NonFiniteError as e:
        e.result = replace(to_result(model, e.session, e.partial, pcm, info), error=str(e))
        raise
    return to_result(model, session, res, pcm, info)


def _audio_in(audio, sample_rate: int | None) -> tuple[np.ndarray, InputInfo]:
    """A path or an array -> 24 kHz mono float32, and what it was."""
    from .audio_io import read_audio, to_mono

    if isinstance(audio, (str, Path)):
        if sample_rate is not None:
            raise MoshiMacError("sample_rate is for arrays; a file's rate is read from the file")
        pcm, report = read_audio(audio)
        return pcm, InputInfo.from_report(report)
    rate = SAMPLE_RATE if sample_rate is None else int(sample_rate)
    arr = np.asarray(audio)
    pcm = to_mono(arr, rate)
    if pcm.size == 0:
        raise MoshiMacError("the audio is empty; pass at least one sample")
    channels = arr.shape[1] if arr.ndim == 2 else 1
    return pcm, InputInfo(None, rate, channels, arr.shape[0] / rate)


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------

class Model:
    """A loaded model: the LM, Mimi, the tokenizer and the config, checked together."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded

    @classmethod
    def from_files(cls, files, config, *, quantize: str | None = None, dtype=None) -> "Model":
        """Load checked files (`check(...).files` and `.config`; `load` does both steps):
        the LM weights, strictly against the config, and the tokenizer."""
        from .tokenizer import load_tokenizer
        from .weights import load_lm

        lm, _ = load_lm(files.weights, config, files.name, dtype=dtype,
                        expect_quant=files.expect_quant, quantize=quantize)
        return cls(LoadedModel(files, config, lm, load_tokenizer(files.tokenizer)))

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def config(self):
        """The model's `config.LmConfig`."""
        return self.loaded.cfg

    @property
    def family(self) -> str:
        """The model type: "hibiki" (translates its input) or "moshi" (answers it)."""
        return self.loaded.cfg.moshi_mac.model_type

    @property
    def lm(self):
        """The MLX language model (`models.lm.Lm`)."""
        return self.loaded.lm

    @property
    def tokenizer(self):
        """The SentencePiece text tokenizer."""
        return self.loaded.tokenizer

    @property
    def files(self):
        """Where it was loaded from (`modeldir.ModelFiles`: config, weights, mimi, tokenizer)."""
        return self.loaded.files

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.family}: {self.config.summary()})"

    def encode(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """Mimi codes [codebooks, frames] (int32) of `audio` (a path or an array, as `run`
        takes it), with the codebooks the model uses (`config.mimi_codebooks`)."""
        from .codec import Mimi

        pcm, _ = _audio_in(audio, sample_rate)
        return Mimi(self.files.mimi, self.config.mimi_codebooks).encode(pcm)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Mimi codes [codebooks, frames] -> 24 kHz mono float32 audio."""
        from .codec import Mimi

        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise MoshiMacError(f"codes must be [codebooks, frames], got shape {list(codes.shape)}")
        return Mimi(self.files.mimi, codes.shape[0]).decode(codes)

    def run(self, audio, sample_rate: int | None = None, **sampling) -> Result:
        """Run the model over `audio`: a path (wav, mp3, flac, ogg) or a numpy array
        [samples] or [samples, channels] at `sample_rate` (default 24 kHz). Sampling
        options: see `Sampling`. Ctrl-C stops it early: the Result then holds what was
        generated (`interrupted` is True)."""
        s = Sampling.from_kwargs(sampling)
        pcm, info = _audio_in(audio, sample_rate)
        return run_pcm(self.loaded, pcm, s.gen_options(), info, max_tail_s=s.tail_s)

    def stream(self, *, keep_audio: bool = True, **sampling) -> "Stream":
        """A streaming run (see the module docstring). `keep_audio=False` keeps no output
        audio for `result()` (long-running streams). Sampling options: see `Sampling`."""
        return Stream(self, Sampling.from_kwargs(sampling), keep_audio=keep_audio)


def check(name_or_repo_or_folder: str | Path | None = None, *, weights: str | Path | None = None,
          download: bool = True):
    """Resolve a model as `load` does and check its files together, from their headers:
    the config against every LM tensor, the tokenizer and Mimi (nothing is loaded). Returns
    a `modeldir.ModelCheck` (.files, .config, .weights: the tensor report, ...); raises a
    one-line `MoshiMacError` at the first mismatch. What `moshi-mac check` prints.
    `weights`: a model folder given as the CLI's `--weights` (instead of a name)."""
    from .modeldir import check_model, resolve

    name = None if name_or_repo_or_folder is None else str(name_or_repo_or_folder)
    return check_model(resolve(name, weights, download=download))


def load(name_or_repo_or_folder: str | Path | None = None, *, quantize: str | None = None,
         dtype=None, weights: str | Path | None = None, download: bool = True) -> Model:
    """Load a model, resolved as `--model` resolves it (modeldir.resolve): a registry name
    (see `moshi-mac models`), a Hugging Face repo id (e.g. "kyutai/hibiki-1b-mlx-bf16"),
    both downloaded on first use (unless `download` is False), or a model folder (config,
    LM weights, Mimi, tokenizer). The files are checked together first (`check`).
    `quantize`: "q8" or "q4" to quantize full-precision weights as they load. `dtype`: the
    activation dtype, an `mx.Dtype` or its name ("bfloat16", "float32"); default:
    `weights.default_dtype`. Every command loads its model here."""
    if isinstance(dtype, str):
        import mlx.core as mx

        if dtype not in ("bfloat16", "float16", "float32"):
            raise MoshiMacError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
        dtype = getattr(mx, dtype)
    checked = check(name_or_repo_or_folder, weights=weights, download=download)
    return Model.from_files(checked.files, checked.config, quantize=quantize, dtype=dtype)


def score(model, codes, conditions: list[dict[str, str]] | None = None):
    """Teacher-forced logits of `codes` [B, 1 + n_q, T] (see scoring.py); `model` is a
    `Model` or an `Lm`."""
    from .scoring import score as lm_score

    return lm_score(model.lm if isinstance(model, Model) else model, codes, conditions)


# ---------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """One piece of a stream's output (see the module docstring)."""

    kind: str  # "audio" | "text"
    start: float  # seconds on the output timeline
    end: float
    pcm: np.ndarray | None = None  # audio: FRAME_SIZE float32 samples at 24 kHz
    text: str = ""  # text: the piece of text the frame added


class PushSource:
    """A session source fed by `push`, then `end`: frames are cut, padded and flushed as
    `engine.FileSource` does for a whole file. It returns None when it has no frame left,
    which ends the session's run until more audio comes."""

    def __init__(self, flush: bool, max_tail_frames: int):
        self.flush = flush
        self.max_tail_frames = max_tail_frames
        self._frames: collections.deque[InFrame] = collections.deque()
        self._buf = np.zeros(0, np.float32)
        self._offset = 0  # first sample of the next frame
        self._tail_left = 0
        self.ended = False

    def _add(self, kind: str, pcm) -> None:
        self._frames.append(InFrame(kind, pcm, self._offset))
        self._offset += FRAME_SIZE

    def push(self, pcm: np.ndarray) -> None:
        buf = np.concatenate([self._buf, pcm]) if self._buf.size else pcm
        n = buf.size // FRAME_SIZE
        for i in range(n):
            self._add("input", buf[i * FRAME_SIZE:(i + 1) * FRAME_SIZE])
        self._buf = buf[n * FRAME_SIZE:]

    def end(self) -> None:
        """No more input: the last frame zero-padded; Hibiki: the EOS frame, then silence."""
        if self.ended:
            return
        self.ended = True
        if self._buf.size:
            self._add("input", np.pad(self._buf, (0, FRAME_SIZE - self._buf.size)))
        if self.flush and self._offset:
            self._add("eos", None)
            self._tail_left = self.max_tail_frames

    @property
    def ready(self) -> bool:
        """A frame is waiting (or, after the end, Hibiki's tail is not over)."""
        return bool(self._frames or self._tail_left)

    def __call__(self, stop: threading.Event | None = None) -> InFrame | None:
        if self._frames:
            return self._frames.popleft()
        if self._tail_left:
            self._tail_left -= 1
            self._add("tail", np.zeros(FRAME_SIZE, np.float32))
            return self._frames.popleft()
        return None


class Stream:
    """A streaming run of a model: feed audio, get audio and text events (see the module
    docstring for the contract)."""

    def __init__(self, model: Model, sampling: Sampling | None = None, *,
                 keep_audio: bool = True):
        sampling = sampling or Sampling()
        self.model = model
        self.sampling = sampling
        loaded = model.loaded
        self._source = PushSource(loaded.is_hibiki, tail_frames(sampling.tail_s))
        self._session = self._new_session()  # made here too, so bad options fail here
        self._thread = threading.get_ident()  # the thread the session computes on
        self._fed = False
        self._keep_audio = keep_audio
        self._events: list[Event] = []
        self._audio: list[np.ndarray] = []  # the output, when kept
        self._inputs: list[np.ndarray] = []  # the input at 24 kHz, when kept
        self._rate: int | None = None
        self._resampler = None
        self._channels = 1
        self._samples_in = 0
        self._wall_s = 0.0
        self._last: SessionResult | None = None
        self._stop: threading.Event | None = None
        self._cancelled = False
        self._closed = False

    # -- the model side ---------------------------------------------------------------------
    def _new_session(self) -> Session:
        # The session keeps no audio: the stream does (no copy of all of it per feed).
        session = make_session(self.model.loaded, self.sampling.gen_options(), keep_audio=False)
        session.listeners.append(self._on_output)
        return session

    def _check_thread(self) -> None:
        """MLX streams belong to the thread that made them: the first `feed` makes the
        session again on its thread if the stream was made on another one; later calls
        must come from that thread."""
        here = threading.get_ident()
        if here != self._thread:
            if self._fed:
                raise MoshiMacError("feed and close a stream from one thread (MLX computes "
                                    "on the thread of its first feed), e.g. a single-thread "
                                    "executor")
            self._session = self._new_session()
            self._thread = here
        self._fed = True

    def _on_output(self, pcm, out, added: str) -> None:
        """Session listener (its decode thread)."""
        start = out.index * FRAME_S
        if pcm is not None:
            self._events.append(Event("audio", start, start + FRAME_S, pcm=pcm))
            if self._keep_audio:
                self._audio.append(pcm)
        if added:
            self._events.append(Event("text", start, start + FRAME_S, text=added))

    def _run(self) -> list[Event]:
        """Step the model over every frame the source holds; return the new events."""
        if not self._source.ready:  # less than a frame so far: nothing to run
            return []
        self._stop = threading.Event()
        try:
            res = self._session.run(self._source, pipelined=True, stop=self._stop)
        except BaseException:
            self._cancelled = self._closed = True
            raise
        self._last = res
        self._wall_s += res.wall_s
        events, self._events = self._events, []
        if res.interrupted:  # Ctrl-C: Session.run kept what was generated; stop the caller
            self._cancelled = True
            raise KeyboardInterrupt
        return events

    # -- the caller's side --------------------------------------------------------------------
    def feed(self, pcm, sample_rate: int | None = None) -> list[Event]:
        """Add audio (any length); run the model over the complete frames; return their
        events."""
        if self._closed or self._cancelled:
            raise MoshiMacError("this stream is closed; start a new one with model.stream()")
        self._check_thread()
        self._push(self._to_24k(pcm, sample_rate))
        return self._run()

    def close(self) -> list[Event]:
        """End the input (Hibiki: the end-of-input flush), run the model to its end and
        return the last events; [] when already closed or cancelled."""
        if self._closed or self._cancelled:
            self._closed = True
            return []
        self._check_thread()
        if self._resampler is not None:
            last = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._push(np.clip(last, -1.0, 1.0))
        self._source.end()
        events = self._run()
        self._closed = True
        return events

    def cancel(self) -> None:
        """Stop without the flush; a `feed` running on another thread stops soon."""
        self._cancelled = True
        if self._stop is not None:
            self._stop.set()

    def result(self) -> Result:
        """The whole run, once closed (see `Model.run`)."""
        if not (self._closed or self._cancelled):
            raise MoshiMacError("the stream is still open; call close() before result()")
        last = self._last or self._session.run(lambda stop=None: None, pipelined=False)
        pcm = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        res = replace(last, pcm=pcm, wall_s=self._wall_s,
                      interrupted=last.interrupted or self._cancelled)
        rate = self._rate or SAMPLE_RATE
        info = InputInfo(None, rate, self._channels, self._samples_in / rate)
        inputs = np.concatenate(self._inputs) if self._inputs else np.zeros(0, np.float32)
        return to_result(self.model.loaded, self._session, res, inputs, info)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.cancel()
        return False

    # -- input conversion ---------------------------------------------------------------------
    def _to_24k(self, pcm, sample_rate: int | None) -> np.ndarray:
        from .audio_io import to_mono

        rate = (self._rate or SAMPLE_RATE) if sample_rate is None else int(sample_rate)
        if self._rate is not None and rate != self._rate:
            raise MoshiMacError(f"this stream takes {self._rate} Hz audio (its first feed); "
                                f"got {rate} Hz; start a new stream for another rate")
        arr = np.asarray(pcm)
        mono = to_mono(arr, SAMPLE_RATE)  # checks the shape and dtype, mixes the channels
        self._rate = rate
        self._samples_in += arr.shape[0]
        self._channels = arr.shape[1] if arr.ndim == 2 else 1
        if rate != SAMPLE_RATE:
            if self._resampler is None:
                import soxr

                self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32",
                                                      quality="HQ")
            mono = np.clip(self._resampler.resample_chunk(mono), -1.0, 1.0)  # as read_audio
        return mono

    def _push(self, pcm: np.ndarray) -> None:
        if self._keep_audio:
            self._inputs.append(pcm)
        self._source.push(pcm)
