"""One websocket conversation on the engine: the same pieces as `live`, with the network
in place of the sound card.

The event loop writes the client's audio (24 kHz) into a `SampleRing`; live's
`MicSource` drains it on the engine's encode thread with the same bounded-lag policy
(skip or merge late frames); `EndOfInput` adds Hibiki's flush (one end-of-input frame,
then silence until the translation's EOS) when the client says it has stopped. The
`Sender` listener (decode thread) encodes each output frame for the client (Ogg/Opus or
the PCM extension) and hands it to the event loop. The playback jitter buffer is the
client's: our page runs live's `JitterBuffer` rules with the server's settings.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..buffers import LagPolicy, SampleRing
from ..codec import FRAME_SIZE, SAMPLE_RATE
from ..engine import FRAME_S, InFrame, Session
from ..live import LiveStats, MicSource, WavRecorder
from ..live import _record_dir as record_dir
from . import protocol

FRAME_RATE = 1 / FRAME_S  # 12.5 steps/s is real time
SLOW_FRACTION = 0.9  # below 90 % of real time (or skipping input) counts as "behind"


@dataclass
class ChatSettings:
    """The server's runtime settings, the same for every conversation."""

    max_lag_ms: float = 400
    lag_policy: str = "skip"
    jitter_ms: float = 160
    max_buffer_ms: float = 480
    max_tail_s: float = 15.0
    pipelined: bool = True
    record: Path | None = None
    slow_s: float = 0.0  # artificial per-step delay (tests of the lag policy)


class _Until:
    """An Event-like stop flag computed on demand (MicSource only calls is_set)."""

    def __init__(self, test: Callable[[], bool]):
        self.is_set = test


class EndOfInput:
    """The engine's source: the client's frames through `MicSource` until the client
    ends its input, then what is queued, then (with `flush`, Hibiki) one end-of-input
    frame and at most `max_tail_frames` frames of silence."""

    def __init__(self, mic: MicSource, ring: SampleRing, flush: bool, max_tail_frames: int):
        self.mic = mic
        self.ring = ring
        self.flush = flush
        self.max_tail_frames = max_tail_frames
        self.ended = threading.Event()
        self.tail = -1  # -1: input still flowing; then the frames sent after it
        self._next_offset = 0

    def end(self) -> None:
        """Called by the event loop (the ring's producer) when the client stops: the last
        partial frame is completed with silence so it is not lost."""
        part = self.ring.written % FRAME_SIZE
        if part:
            self.ring.write(np.zeros(FRAME_SIZE - part, np.float32))
        self.ended.set()

    def _drained(self) -> bool:
        return self.ended.is_set() and self.ring.available() == 0 and self.mic.fifo.frames() == 0

    def __call__(self, stop: threading.Event) -> InFrame | None:
        if self.tail < 0:
            frame = self.mic(_Until(lambda: stop.is_set() or self._drained()))
            if frame is not None:
                self._next_offset = frame.offset + FRAME_SIZE
                return frame
            if stop.is_set() or not self.flush:
                return None
            self.tail = 0
            return InFrame("eos", None, self._next_offset)
        if self.tail >= self.max_tail_frames:
            return None
        self.tail += 1
        return InFrame("tail", np.zeros(FRAME_SIZE, np.float32),
                       self._next_offset + self.tail * FRAME_SIZE)


class Sender:
    """Session listener (decode thread): each output frame -> messages for the client."""

    def __init__(self, send: Callable[[bytes], None], pcm_ext: bool, stats: LiveStats,
                 recorder: WavRecorder | None, clock=time.monotonic):
        import sphn

        self.send = send
        self.pcm_ext = pcm_ext
        self.opus = None if pcm_ext else sphn.OpusStreamWriter(SAMPLE_RATE)
        self.stats = stats
        self.recorder = recorder
        self.clock = clock
        self.samples = 0

    def __call__(self, pcm, out, text: str) -> None:
        if pcm is not None:
            if out.frame.t_capture is not None:
                self.stats.add_latency(self.clock() - out.frame.t_capture)
            self.stats.frames_out += 1
            self.samples += pcm.size
            if self.recorder is not None:
                self.recorder.write_at(out.frame.offset, pcm)
            if self.pcm_ext:
                self.send(protocol.pcm16_message(pcm))
            else:
                pages = self.opus.append_pcm(np.asarray(pcm, np.float32))
                if pages:
                    self.send(protocol.frame(protocol.AUDIO, pages))
        if text:
            self.send(protocol.text_message(text))


class Chat:
    """A conversation: a fresh engine `Session` (warmed up), its source and listener.

    `send(bytes)` must be callable from any thread. Call `warm_up`, then `run` on a
    thread of its own; meanwhile the event loop calls `push` with the client's audio and
    `end_input` / `stop`."""

    def __init__(self, model, options, settings: ChatSettings, send: Callable[[bytes], None],
                 pcm_ext: bool, codecs: tuple | None = None, clock=time.monotonic):
        self.model = model
        self.settings = settings
        self.clock = clock
        self.session = Session(model, options, stop_on_eos=model.is_hibiki, keep_audio=False,
                               timeline="input", slow_s=settings.slow_s, queue_size=1,
                               codecs=codecs)
        self.folder = record_dir(settings.record) if settings.record else None
        self.rec_in = WavRecorder(self.folder / "input.wav") if self.folder else None
        self.rec_out = WavRecorder(self.folder / "output.wav") if self.folder else None
        self.stats = LiveStats(clock)
        self.ring = SampleRing(SAMPLE_RATE * 4, clock)  # 4 s: the lag policy acts far sooner
        policy = LagPolicy(max_lag_s=settings.max_lag_ms / 1000, mode=settings.lag_policy,
                           frame_s=FRAME_S)
        self.mic = MicSource(self.ring, SAMPLE_RATE, policy, self.stats,
                             lambda: self.session.pending_frames() * FRAME_S, self.rec_in, None, clock)
        self.source = EndOfInput(self.mic, self.ring, model.is_hibiki,
                                 round(settings.max_tail_s / FRAME_S))
        self.sender = Sender(send, pcm_ext, self.stats, self.rec_out, clock)
        self.session.listeners.append(self.sender)
        self.stop_event = threading.Event()
        self.result = None
        self._skips: list[tuple[float, int]] = []

    def warm_up(self) -> None:
        self.session.warm_up()

    @property
    def codecs(self) -> tuple:
        """Mimi's encoder and decoder, for the next conversation to reuse."""
        return self.session.encoder, self.session.decoder

    def push(self, pcm: np.ndarray) -> None:
        """Client audio (24 kHz float32); ignored once the input has ended."""
        if not self.source.ended.is_set() and pcm.size:
            self.ring.write(pcm)

    def end_input(self) -> None:
        if not self.source.ended.is_set():
            self.source.end()

    def stop(self) -> None:
        self.source.ended.set()
        self.stop_event.set()

    def run(self):
        self.stats.started = self.clock()
        try:
            self.result = self.session.run(self.source, pipelined=self.settings.pipelined,
                                           stop=self.stop_event, on_step=self.stats.on_step)
        finally:
            for rec in (self.rec_in, self.rec_out):
                if rec is not None:
                    rec.close()
        if self.folder is not None:
            self._write_transcript()
        return self.result

    # -- what the page shows -----------------------------------------------------------
    def behind(self) -> bool:
        """Below real time: input frames were given up in the last 2 s, or the model
        steps slower than 90 % of real time while input is waiting."""
        now, skipped = self.clock(), self.mic.fifo.skipped
        self._skips = [(t, n) for t, n in self._skips if now - t <= 2.0] + [(now, skipped)]
        waiting = self.mic.fifo.frames() + self.session.pending_frames() > 0
        steps = self.stats.steps_per_s()
        return (skipped > self._skips[0][1]
                or (waiting and 0 < steps < SLOW_FRACTION * FRAME_RATE
                    and self.stats.frames_in > FRAME_RATE))

    def status(self) -> dict:
        s = self.stats
        return {"event": "stats", "steps_per_s": round(s.steps_per_s(), 2),
                "latency_ms": round(s.latency_ms), "latency_max_ms": round(s.latency_max_ms),
                "frames_in": s.frames_in, "frames_out": s.frames_out,
                "skipped": self.mic.fifo.skipped, "behind": self.behind(),
                "real_time_steps_per_s": FRAME_RATE,
                "state": ("flushing" if self.source.ended.is_set() else "streaming")}

    def info(self) -> dict:
        """The session summary kept in the transcript's JSON (as `live` does)."""
        r, s = self.result, self.stats
        lat = [ms for _, ms in s.latency_series]
        return {
            "duration_s": round(self.clock() - s.started, 3),
            "steps": r.steps if r else 0,
            "steps_per_s": round(r.steps / max(r.wall_s, 1e-9), 2) if r else 0.0,
            "frames_in": s.frames_in, "frames_out": s.frames_out,
            "skipped_frames": self.mic.fifo.skipped, "skip_events": self.mic.fifo.skip_events,
            "max_lag_ms": round(1000 * self.mic.fifo.max_lag_s, 1),
            "input_samples": self.ring.written, "input_overflow_samples": self.ring.dropped,
            "output_samples": self.sender.samples,
            "eos_reached": bool(r and r.eos_reached),
            "latency_ms": {"last": round(s.latency_ms, 1), "max": round(s.latency_max_ms, 1),
                           "median": round(float(np.median(lat)), 1) if lat else None},
            "latency_series": s.latency_series,
        }

    def _write_transcript(self) -> None:
        from ..transcript import write_transcript

        text = self.session.text
        write_transcript(self.folder / "transcript.srt", self.folder / "transcript.json",
                         text.text.strip(), text.words, text.tokens, model=self.model.name,
                         model_type=self.model.cfg.moshi_mac.model_type,
                         sample_rate=SAMPLE_RATE, session=self.info())
