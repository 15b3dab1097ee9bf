"""The streaming session shared by `translate` (files) and `live` (microphone and speaker):
Mimi encode -> LM step -> Mimi decode, one 80 ms frame at a time.

- `Session.run(source, pipelined=True)` runs Mimi's encoder and decoder on threads of
  their own, each with its own rustymimi instance, overlapped with the LM steps on the
  calling thread (rustymimi and MLX release the GIL while they compute). With
  `pipelined=False` the three stages run in turn on the calling thread. Ctrl-C stops
  either cleanly: the frames already generated are decoded and kept.
- `LmStepper` feeds the model as the reference's file inference does: the first frame
  twice; for Hibiki, after the input, one frame of input-EOS codes (`card` on every user
  codebook) and then Mimi-encoded silence until the model emits the text EOS. A
  `FileSource` bounds that tail.
- Lookahead: a `Session` schedules the LM step of frame n + 1 before it reads frame n's
  tokens (`LmStepper.schedule` / `collect`), as mlx-lm's `generate_step` does; the
  outputs are the same, the device never idles while Python works.
- `TextAssembler` turns text tokens into printable text (the padding ids and control pieces
  are not printed, "▁" becomes a space) and words with start and end times.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .codec import FRAME_SIZE, SAMPLE_RATE
from .errors import UsageError
from .guards import check_pcm, check_step
from .tokenizer import EOS_ID, PAD_ID, UNK_ID
from .transcript import Token, Word

FRAME_S = FRAME_SIZE / SAMPLE_RATE  # 0.08 s


# ---------------------------------------------------------------------------------------
# Model and options
# ---------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    files: object  # modeldir.ModelFiles
    cfg: object  # config.LmConfig
    lm: object  # models.lm.Lm
    tokenizer: object  # sentencepiece.SentencePieceProcessor

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def is_hibiki(self) -> bool:
        return self.cfg.moshi_mac.model_type == "hibiki"


# ---------------------------------------------------------------------------------------
# Frames in and out
# ---------------------------------------------------------------------------------------

@dataclass
class InFrame:
    kind: str  # "input" | "eos" (Hibiki's end-of-input codes, no audio) | "tail" (silence)
    pcm: np.ndarray | None  # FRAME_SIZE samples at 24 kHz
    offset: int = 0  # index of the frame's first sample on the input timeline
    t_capture: float | None = None  # live: clock time its last sample was captured


@dataclass
class StepOut:
    index: int  # output frame number (0 = the first frame of generated audio)
    text: int  # text token id
    audio: np.ndarray | None  # [dep_q] audio codes
    frame: InFrame  # the input frame of the step that produced it


Source = Callable[[threading.Event], "InFrame | None"]


class FileSource:
    """A file's audio as frames (the last one zero-padded); with `flush` (Hibiki), then
    one EOS frame and at most `max_tail_frames` frames of silence. Every frame is there in
    advance (`in_advance`), so a sequential session reads one ahead (see `Session`)."""

    in_advance = True

    def __init__(self, pcm: np.ndarray, flush: bool, max_tail_frames: int = 0):
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        self.n_input = -(-pcm.size // FRAME_SIZE)
        self._pcm = np.pad(pcm, (0, self.n_input * FRAME_SIZE - pcm.size))
        self.n_total = self.n_input + ((1 + max_tail_frames) if flush else 0)
        self._next = 0

    def __call__(self, stop: threading.Event | None = None) -> InFrame | None:
        i = self._next
        if i >= self.n_total:
            return None
        self._next += 1
        offset = i * FRAME_SIZE
        if i < self.n_input:
            return InFrame("input", self._pcm[offset:offset + FRAME_SIZE], offset)
        if i == self.n_input:
            return InFrame("eos", None, offset)
        return InFrame("tail", np.zeros(FRAME_SIZE, np.float32), offset)


@dataclass
class Scheduled:
    """A step handed to the device and not read yet (see `LmStepper.schedule`)."""

    tokens: object  # mx.array [1, 1 + dep_q] being computed, or None (warm-up of the delays)
    frame: InFrame
    input_ended: bool  # the input had ended when this step was fed
    steps: int  # model steps made (the first frame counts twice)


class LmStepper:
    """`LmGen` plus the reference's feeding rules and end detection (see the module doc).

    A step is `schedule` (hand it to the device: no sync) then `collect` (wait for its
    tokens and read them); `step` does both. Scheduling step n + 1 before collecting step
    n (`Session` does, as mlx-lm's `generate_step`) lets the device compute while Python
    reads, decodes and builds the next step; the outputs are the same.

    `stop_on_eos`: end when the text EOS comes once the input has ended (Hibiki files).
    `slow_s`: an artificial delay per step (for testing the live lag policy)."""

    def __init__(self, lm, options=None, *, stop_on_eos: bool = False, slow_s: float = 0.0):
        from .generate import LmGen

        try:
            self.gen = LmGen(lm, options=options)
        except ValueError as e:
            raise UsageError(f"{e}; this model has no CFG conditioner, leave --cfg out") from None
        cfg = lm.cfg
        self.user_codebooks = cfg.user_codebooks
        self.dep_q = cfg.dep_q
        self.eos_codes = np.full(cfg.user_codebooks, cfg.card, np.int32)
        self.stop_on_eos = stop_on_eos
        self.slow_s = slow_s
        self.steps = 0  # model steps collected (the first frame counts twice)
        self.outputs = 0
        self.input_ended = False  # as of the last step collected
        self.done = False
        self.eos_reached = False
        self.early_eos = 0  # text EOS before the input ended (the reference warns)
        self._scheduled = 0  # frames scheduled
        self._ended = False  # as of the last step scheduled

    def warm_up(self, steps: int = 4) -> None:
        """Run a few steps on zero codes so MLX has built and allocated everything, then
        start over."""
        import mlx.core as mx

        zeros = mx.zeros((1, self.user_codebooks), dtype=mx.int32)
        for _ in range(steps):
            out = self.gen.step(zeros)
            mx.eval([out] if out is not None else self.gen.state_arrays())
        self.gen.reset()

    def schedule(self, codes: np.ndarray, frame: InFrame) -> Scheduled:
        """Feed one frame's user codes; the step is computed in the background."""
        import mlx.core as mx

        if self.slow_s:
            time.sleep(self.slow_s)
        x = mx.array(np.asarray(codes[: self.user_codebooks], np.int32)[None])
        steps = 1
        if self._scheduled == 0:  # the reference feeds the first frame twice
            self.gen.step(x)
            steps = 2
        self._scheduled += 1
        self._ended = self._ended or frame.kind == "eos"
        return Scheduled(self.gen.step(x), frame, self._ended, steps)

    def collect(self, s: Scheduled) -> StepOut | None:
        """Wait for a scheduled step's tokens (in order); its output, or None (warm-up)."""
        import mlx.core as mx

        self.steps += s.steps
        self.input_ended = s.input_ended
        if s.tokens is None:
            return None
        mx.eval(s.tokens)  # releases the GIL: the Mimi threads run meanwhile
        tokens = np.array(s.tokens[0])
        check_step(tokens, self.steps)
        text = int(tokens[0])
        if text == EOS_ID:
            if s.input_ended:
                self.eos_reached = True
                self.done = self.stop_on_eos
            else:
                self.early_eos += 1
        result = StepOut(self.outputs, text, tokens[1:] if self.dep_q else None, s.frame)
        self.outputs += 1
        return result

    def step(self, codes: np.ndarray, frame: InFrame) -> StepOut | None:
        """`schedule` then `collect`: one step, no lookahead."""
        return self.collect(self.schedule(codes, frame))


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------

class TextAssembler:
    """Text tokens -> printable text, timed tokens and timed words."""

    def __init__(self, tokenizer, frame_s: float = FRAME_S, hidden_ids=(UNK_ID, PAD_ID)):
        self.sp = tokenizer
        self.frame_s = frame_s
        self.hidden = set(hidden_ids) | {EOS_ID}
        self.tokens: list[Token] = []
        self.words: list[Word] = []
        self.text = ""
        self._space = True

    def add(self, token_id: int, time_s: float) -> str:
        """Record the token emitted at `time_s`; return the text it adds ('' if none)."""
        if token_id in self.hidden or self.sp.is_control(token_id) or self.sp.is_unknown(token_id):
            return ""
        piece = self.sp.id_to_piece(token_id)
        text = piece.replace("▁", " ")
        self.tokens.append(Token(token_id, piece, round(time_s, 3)))
        body = text.strip()
        end = round(time_s + self.frame_s, 3)
        if body:
            if text[0] == " " or self._space or not self.words:
                self.words.append(Word(body, round(time_s, 3), end))
            else:
                last = self.words[-1]
                self.words[-1] = Word(last.text + body, last.start, end)
        self._space = text.endswith(" ") or (not body and text != "")
        self.text += text
        return text


# ---------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------

STAGE_NAMES = {"lm": "LM", "encode": "Mimi encode", "decode": "Mimi decode"}  # for messages


@dataclass
class StageTimes:
    """Seconds spent and calls made per stage (each stage is written by one thread)."""

    seconds: dict[str, float] = field(default_factory=lambda: {"encode": 0.0, "lm": 0.0, "decode": 0.0})
    calls: dict[str, int] = field(default_factory=lambda: {"encode": 0, "lm": 0, "decode": 0})

    def add(self, stage: str, dt: float, call: bool = True) -> None:
        self.seconds[stage] += dt
        self.calls[stage] += call

    def ms_per_call(self) -> dict[str, float]:
        return {k: round(1000 * v / max(1, self.calls[k]), 2) for k, v in self.seconds.items()}


@dataclass
class SessionResult:
    pcm: np.ndarray  # the generated audio, 24 kHz (empty when not kept)
    steps: int
    outputs: int
    input_frames: int
    wall_s: float
    eos_reached: bool
    early_eos: int
    interrupted: bool
    pipelined: bool
    stage_ms: dict[str, float]

    @property
    def duration(self) -> float:
        return self.outputs * FRAME_S


# listener(pcm [FRAME_SIZE] | None, step output, text it added)
Listener = Callable[[np.ndarray | None, StepOut, str], None]
_END = object()
_POLL_S = 0.05


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while True:
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            if stop.is_set():
                return False


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set():
                return _END


class Session:
    """One streaming run of a loaded model (see the module docstring).

    `timeline`: "output" puts text at the output frame's own time (files: the output wav
    is contiguous); "input" at the time of the input frame of its step (live: recordings
    line up with the microphone's).

    `lookahead` (default on): schedule the LM step of frame n + 1 before reading the
    tokens of frame n, so the device computes step n + 1 while Python reads, decodes and
    hands out step n (mlx-lm's `generate_step` does the same). Outputs are identical.
    Only for a source whose frames are all there in advance (`in_advance`: a file), and
    in pipelined mode only when the next frame is already encoded: an output is handed
    out one step later, so live input (a microphone) gets no lookahead and no added
    latency."""

    def __init__(self, model: LoadedModel, options=None, *, stop_on_eos: bool = False,
                 keep_audio: bool = True, timeline: str = "output", slow_s: float = 0.0,
                 queue_size: int = 2, lookahead: bool = True, codecs: tuple | None = None):
        from .codec import Mimi

        cfg = model.cfg
        self.model = model
        self.stepper = LmStepper(model.lm, options, stop_on_eos=stop_on_eos, slow_s=slow_s)
        # One rustymimi instance per thread: each keeps its own streaming state.
        # `codecs`: the (encoder, decoder) of an earlier session to reuse (`warm_up`
        # resets them): loading Mimi takes seconds, a server does it once.
        self.encoder, self.decoder = codecs or (
            Mimi(model.files.mimi, cfg.user_codebooks),
            Mimi(model.files.mimi, cfg.dep_q) if cfg.dep_q else None)
        self.text = TextAssembler(model.tokenizer,
                                  hidden_ids=(cfg.moshi_mac.end_of_text_padding_id,
                                              cfg.moshi_mac.text_padding_id))
        self.timeline = timeline
        self.keep_audio = keep_audio
        self.queue_size = queue_size
        self.lookahead = lookahead
        self.listeners: list[Listener] = []
        self.times = StageTimes()
        self.input_frames = 0
        self._pcm: list[np.ndarray] = []
        self._errors: list[BaseException] = []
        self._codes_q: queue.Queue | None = None

    def pending_frames(self) -> int:
        """Frames encoded and waiting for the LM (pipelined mode)."""
        q = self._codes_q
        return 0 if q is None else q.qsize()

    def warm_up(self) -> None:
        """Build the LM's compute graph and touch Mimi before the first real frame."""
        self.stepper.warm_up()
        self.encoder.encode_step(np.zeros(FRAME_SIZE, np.float32))
        self.encoder.reset()
        if self.decoder is not None:
            self.decoder.decode_step(np.zeros(self.stepper.dep_q, np.int64))
            self.decoder.reset()

    # -- stages ----------------------------------------------------------------------------
    def _encode(self, frame: InFrame) -> np.ndarray:
        if frame.kind == "eos":
            return self.stepper.eos_codes
        t = time.perf_counter()
        codes = self.encoder.encode_step(frame.pcm)
        self.times.add("encode", time.perf_counter() - t)
        return codes

    def _schedule(self, frame: InFrame, codes: np.ndarray) -> Scheduled:
        t = time.perf_counter()
        scheduled = self.stepper.schedule(codes, frame)
        self.times.add("lm", time.perf_counter() - t)
        return scheduled

    def _collect(self, scheduled: Scheduled, deliver: Callable[[StepOut], None], on_step) -> bool:
        """Read a scheduled step; its output (if any) goes to `deliver`. True when the
        model is done."""
        t = time.perf_counter()
        out = self.stepper.collect(scheduled)
        self.times.add("lm", time.perf_counter() - t, call=False)
        self.input_frames += scheduled.frame.kind == "input"
        if out is not None:
            deliver(out)
        if on_step is not None:
            on_step(self)
        return self.stepper.done

    def _feed(self, item: tuple[InFrame, np.ndarray], pending: Scheduled | None, deliver,
              on_step, ahead: bool) -> tuple[Scheduled | None, bool]:
        """Schedule `item`'s step, then collect `pending` (the previous one) or, without
        `ahead`, this one. Returns (the step left pending, whether the model is done)."""
        scheduled = self._schedule(*item)
        if not ahead:
            return None, self._collect(scheduled, deliver, on_step)
        if pending is not None and self._collect(pending, deliver, on_step):
            return None, True  # `scheduled` is dropped: the model was done before it
        return scheduled, False

    def _emit(self, out: StepOut) -> None:
        pcm = None
        if self.decoder is not None:
            t = time.perf_counter()
            pcm = self.decoder.decode_step(out.audio)
            self.times.add("decode", time.perf_counter() - t)
            check_pcm(pcm, out.index)
            if self.keep_audio:
                self._pcm.append(pcm)
        when = out.index * FRAME_S if self.timeline == "output" else out.frame.offset / SAMPLE_RATE
        added = self.text.add(out.text, when)
        for listener in self.listeners:
            listener(pcm, out, added)

    # -- loops -----------------------------------------------------------------------------
    def run(self, source: Source, *, pipelined: bool = True, stop: threading.Event | None = None,
            on_step: Callable[["Session"], None] | None = None) -> SessionResult:
        """Run until the source ends, the model is done, `stop` is set or Ctrl-C."""
        stop = stop or threading.Event()
        t0 = time.perf_counter()
        interrupted = False
        try:
            (self._run_pipelined if pipelined else self._run_sequential)(source, stop, on_step)
        except KeyboardInterrupt:
            interrupted = True
        except Exception as e:  # noqa: BLE001  (re-raised below with the partial result)
            self._errors.insert(0, e)
        finally:
            stop.set()
        s = self.stepper
        pcm = np.concatenate(self._pcm) if self._pcm else np.zeros(0, np.float32)
        result = SessionResult(pcm=pcm, steps=s.steps, outputs=s.outputs,
                               input_frames=self.input_frames, wall_s=time.perf_counter() - t0,
                               eos_reached=s.eos_reached, early_eos=s.early_eos,
                               interrupted=interrupted, pipelined=pipelined,
                               stage_ms=self.times.ms_per_call())
        if self._errors:
            self._errors[0].partial = result  # what was made before the failure
            raise self._errors[0]
        return result

    def _ahead(self, source: Source) -> bool:
        return self.lookahead and getattr(source, "in_advance", False)

    def _run_sequential(self, source: Source, stop: threading.Event, on_step) -> None:
        ahead = self._ahead(source)
        pending = None
        while not stop.is_set():
            frame = source(stop)
            if frame is None:
                break
            pending, done = self._feed((frame, self._encode(frame)), pending, self._emit,
                                       on_step, ahead)
            if done:
                return
        if pending is not None:
            self._collect(pending, self._emit, on_step)

    def _run_pipelined(self, source: Source, stop: threading.Event, on_step) -> None:
        codes_q: queue.Queue = queue.Queue(maxsize=self.queue_size)
        self._codes_q = codes_q
        out_q: queue.Queue = queue.Queue(maxsize=self.queue_size)
        encoder = threading.Thread(target=self._encode_loop, args=(source, codes_q, stop),
                                   name="mimi-encode", daemon=True)
        decoder = threading.Thread(target=self._decode_loop, args=(out_q,),
                                   name="mimi-decode", daemon=True)
        encoder.start()
        decoder.start()
        ahead, pending = self._ahead(source), None
        try:
            while not self._errors:
                if pending is not None and codes_q.empty():  # no frame to look ahead to:
                    done = self._collect(pending, out_q.put, on_step)  # no added latency
                    pending = None
                    if done:
                        break
                item = _get(codes_q, stop)
                if item is _END:
                    break
                pending, done = self._feed(item, pending, out_q.put, on_step, ahead)
                if done:
                    break
            if pending is not None and not self._errors:
                self._collect(pending, out_q.put, on_step)
        finally:
            stop.set()  # the encoder thread stops; the decoder drains what was generated
            out_q.put(_END)
            decoder.join()
            encoder.join()

    def _encode_loop(self, source: Source, codes_q: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                frame = source(stop)
                if frame is None:
                    break
                if not _put(codes_q, (frame, self._encode(frame)), stop):
                    return
            _put(codes_q, _END, stop)
        except BaseException as e:  # noqa: BLE001  (re-raised by run on the main thread)
            self._errors.append(e)
            stop.set()

    def _decode_loop(self, out_q: queue.Queue) -> None:
        while True:
            out = out_q.get()
            if out is _END:
                return
            if self._errors:
                continue  # keep draining so the LM thread never blocks
            try:
                self._emit(out)
            except BaseException as e:  # noqa: BLE001
                self._errors.append(e)
