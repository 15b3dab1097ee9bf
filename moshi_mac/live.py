"""`moshi-mac live`: talk with Moshi, or hear Hibiki translate you, through the
microphone and speaker; `moshi-mac devices` lists the audio devices.

Audio callbacks only move samples: the microphone callback writes into a `SampleRing`,
the speaker callback reads from a `JitterBuffer` (see buffers.py). Everything else runs on
the engine's threads: `MicSource` (encode thread) drains the ring, resamples the device
rate to 24 kHz, applies the bounded-lag policy and the optional echo guard; `Speaker`
(decode thread) resamples the model's audio to the device rate, queues it, and measures
the end-to-end latency. The model is warmed up before the streams open.

Microphone samples that are NaN/Inf or outside [-1, 1] are cleaned before Mimi (one
warning at the end). SIGINT, SIGTERM and SIGHUP end the session the same way (the
recording finalized, the transcript written; exit 130 / 143 / 129, signals.py); NaN/Inf
out of the model ends it too, recording kept, exit 1.
"""

from __future__ import annotations

import collections
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from rich.markup import escape

from .buffers import LAG_MODES, FrameFifo, JitterBuffer, LagPolicy, SampleRing
from .codec import FRAME_SIZE, SAMPLE_RATE
from .errors import MoshiMacError, NonFiniteError, UsageError
from .guards import SanitizeReport, sanitize_pcm
from .audio_io import native_stderr_to
from .live_status import METER_FLOOR_DB, device_label, level_db, level_meter

HEADPHONES = ("[yellow]Use headphones.[/] Through laptop speakers the model hears its own voice "
              "and answers itself. [bold]--echo-guard[/] turns the microphone down while the "
              "model speaks; it is not echo cancellation.")
ECHO_THRESHOLD_RMS = 0.01  # model output louder than this counts as speaking
ECHO_HOLD_S = 0.25  # the guard stays on this long after the output went quiet


def add_latency_args(g) -> None:
    """The bounded-latency flags, shared with `serve` (checked by `check_latency_args`)."""
    g.add_argument("--jitter-ms", type=float, default=160,
                   help="audio queued before the speaker starts (default 160)")
    g.add_argument("--max-buffer-ms", type=float, default=480,
                   help="most audio queued for the speaker; older audio is dropped (default 480)")
    g.add_argument("--max-lag-ms", type=float, default=400,
                   help="how far the model may fall behind the microphone before input "
                        "frames are given up (default 400)")
    g.add_argument("--lag-policy", choices=LAG_MODES, default="skip",
                   help="past --max-lag-ms: skip late frames, or merge them into one (sped up)")


def register(subparsers) -> None:
    from .cli import add_model_args
    from .cli import add_generation_args

    p = subparsers.add_parser(
        "live", help="real-time conversation (Moshi) or translation (Hibiki) with mic and speaker",
        description="Stream the microphone through the model and play its speech. Ctrl-C stops.")
    add_model_args(p)
    g = p.add_argument_group("audio")
    g.add_argument("--input-device", help="index or part of the name (see `moshi-mac devices`)")
    g.add_argument("--output-device", help="index or part of the name (see `moshi-mac devices`)")
    g.add_argument("--device-latency", choices=["low", "high"], default="low",
                   help="PortAudio latency setting for both streams (default low)")
    add_latency_args(g)
    g.add_argument("--echo-guard", action="store_true",
                   help="turn the microphone down while the model speaks (for laptop speakers; "
                        "not echo cancellation)")
    g.add_argument("--echo-guard-db", type=float, default=20, help="how much (default 20 dB)")
    p.add_argument("--record", type=Path, metavar="DIR",
                   help="keep the session in DIR/session-TIME/: input.wav (microphone), "
                        "output.wav (model), transcript.srt and transcript.json")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    add_generation_args(p)
    p.set_defaults(func=main)

    d = subparsers.add_parser("devices", help="list audio input and output devices")
    d.set_defaults(func=cmd_devices)


# ---------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------

def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as e:  # the PortAudio library is missing
        raise MoshiMacError(f"PortAudio is not available ({e}); install it "
                            f"(macOS: `brew install portaudio`, Debian: `apt install libportaudio2`)") from None
    return sd


def pick_device(spec: str | None, kind: str) -> int:
    """`--input-device` / `--output-device` (index, name or part of a name) -> index."""
    sd = _sounddevice()
    devices = list(sd.query_devices())
    channels = f"max_{kind}_channels"
    usable = [i for i, d in enumerate(devices) if d[channels] > 0]
    hint = "see `moshi-mac devices`"
    if spec is None:
        idx = sd.default.device[0 if kind == "input" else 1]
        if idx is None or idx < 0 or idx not in usable:
            if not usable:
                raise MoshiMacError(f"no audio {kind} device found; connect one ({hint})")
            raise MoshiMacError(f"no default audio {kind} device; pass --{kind}-device ({hint})")
        return int(idx)
    if spec.strip().isdigit():
        idx = int(spec)
        if idx not in usable:
            raise MoshiMacError(f"--{kind}-device {idx} is not an {kind} device ({hint})")
        return idx
    exact = [i for i in usable if devices[i]["name"].lower() == spec.lower()]
    found = exact or [i for i in usable if spec.lower() in devices[i]["name"].lower()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise MoshiMacError(f"no {kind} device matches {spec!r} ({hint})")
    names = ", ".join(f"{i}: {devices[i]['name']}" for i in found)
    raise MoshiMacError(f"--{kind}-device {spec!r} matches several devices ({names}); "
                        f"pass its index")


def cmd_devices(args) -> int:
    from rich.table import Table

    from .cli import console

    sd = _sounddevice()
    if len(sd.query_devices()) == 0:
        raise MoshiMacError("no audio devices found; connect a microphone and a speaker (or "
                            "start PulseAudio) and run `moshi-mac devices` again")
    default_in, default_out = sd.default.device
    apis = sd.query_hostapis()
    table = Table(title="audio devices")
    for col in ("#", "name", "host API", "in", "out", "rate", "note"):
        table.add_column(col)
    for i, d in enumerate(sd.query_devices()):
        rate = int(d["default_samplerate"])
        notes = [n for n, ok in (("default input", i == default_in),
                                 ("default output", i == default_out)) if ok]
        if rate != SAMPLE_RATE:
            notes.append("resampled")
        table.add_row(str(i), escape(d["name"]), escape(apis[d["hostapi"]]["name"]),
                      str(d["max_input_channels"]),
                      str(d["max_output_channels"]), f"{rate} Hz", ", ".join(notes))
    console.print(table)
    console.print("Pick with `moshi-mac live --input-device N --output-device M` "
                  "(an index or part of a name).")
    return 0


# ---------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------

class WavRecorder:
    """Streams 24 kHz mono audio to a temp file beside `path`, moved into place on close
    (memory stays flat however long the session)."""

    def __init__(self, path: Path):
        import soundfile as sf

        from .audio_io import atomic_path

        self.path = path
        self._ctx = atomic_path(path)
        tmp = self._ctx.__enter__()
        self._file = sf.SoundFile(str(tmp), "w", SAMPLE_RATE, 1, "PCM_16", format="WAV")
        self.samples = 0
        self._lock = threading.RLock()  # close() may come from a signal handler (same thread)

    def write(self, pcm: np.ndarray) -> None:
        with self._lock:
            if self._file is None:
                return
            self._file.write(np.clip(pcm, -1.0, 1.0))
            self.samples += pcm.size

    def write_at(self, offset: int, pcm: np.ndarray) -> None:
        """Write `pcm` starting at sample `offset`: silence fills a gap, an overlap is cut."""
        if offset > self.samples:
            self.write(np.zeros(offset - self.samples, np.float32))
        self.write(pcm[max(0, self.samples - offset):])

    def close(self, timeout: float = -1) -> None:
        """Finalize the wav and move it into place (once; later calls do nothing)."""
        if not self._lock.acquire(timeout=timeout):
            return
        try:
            if self._file is None:
                return
            self._file.close()
            self._file = None
            self._ctx.__exit__(None, None, None)
        finally:
            self._lock.release()


# ---------------------------------------------------------------------------------------
# Audio paths
# ---------------------------------------------------------------------------------------

def stream_resampler(src_rate: int, dst_rate: int):
    """A chunk-by-chunk resampler that keeps its state between chunks (identity when
    the rates match)."""
    if src_rate == dst_rate:
        return lambda x: x
    import soxr

    return soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality="HQ").resample_chunk


class LiveStats:
    """What the status line shows; each field is written by one thread."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.started = clock()
        self._step_times: collections.deque = collections.deque(maxlen=25)
        self.latency_ms = 0.0
        self.latency_max_ms = 0.0
        self.latency_series: list[tuple[float, float]] = []  # (session time s, latency ms)
        self.frames_in = 0
        self.frames_out = 0
        self.echo_guarded = 0
        self.input_db = METER_FLOOR_DB  # the last input frame's level (the meter)
        self.pace = None  # a live_status.Pace: which stage is behind, if any

    def on_step(self, session) -> None:
        self._step_times.append(self.clock())
        if self.pace is not None:
            self.pace.update(session.times, self.steps_per_s())

    def steps_per_s(self) -> float:
        t = self._step_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def add_latency(self, seconds: float) -> None:
        ms = 1000 * seconds
        self.latency_ms = ms
        self.latency_max_ms = max(self.latency_max_ms, ms)
        self.latency_series.append((round(self.clock() - self.started, 3), round(ms, 1)))


class MicSource:
    """The engine's source in live mode (runs on the encode thread)."""

    def __init__(self, ring: SampleRing, rate: int, policy: LagPolicy, stats: LiveStats,
                 pending_s, recorder: WavRecorder | None = None, echo_gain: float | None = None,
                 clock=time.monotonic):
        from .engine import InFrame

        self._InFrame = InFrame
        self.ring = ring
        self.fifo = FrameFifo(FRAME_SIZE, SAMPLE_RATE, policy, clock)
        self.resample = stream_resampler(rate, SAMPLE_RATE)
        self.stats = stats
        self.pending_s = pending_s
        self.recorder = recorder
        self.echo_gain = echo_gain
        self.loud_until = 0.0  # set by the Speaker: the model is audible until then
        self.cleaned = SanitizeReport(rate)  # NaN/Inf and out-of-range device samples

    def _drain(self) -> None:
        end_time = self.ring.last_write_time
        data = self.ring.read()
        if data.size == 0:
            return
        pcm = np.clip(self.resample(sanitize_pcm(data, self.cleaned)), -1.0, 1.0)
        if self.recorder is not None:
            self.recorder.write(pcm)
        self.fifo.push(pcm, end_time)

    def __call__(self, stop: threading.Event):
        while not stop.is_set():
            self._drain()
            frame = self.fifo.pop(extra_lag_s=self.pending_s())
            if frame is not None:
                pcm = frame.pcm
                self.stats.input_db = level_db(pcm)
                if self.echo_gain is not None and frame.t_capture < self.loud_until:
                    pcm = pcm * np.float32(self.echo_gain)
                    self.stats.echo_guarded += 1
                self.stats.frames_in += 1
                return self._InFrame("input", pcm, frame.offset, frame.t_capture)
            time.sleep(0.004)
        return None


class Speaker:
    """Session listener (decode thread): model audio -> device rate -> jitter buffer."""

    def __init__(self, jitter: JitterBuffer, rate: int, stats: LiveStats, mic: MicSource,
                 device_latency_s: float, recorder: WavRecorder | None = None,
                 clock=time.monotonic):
        self.jitter = jitter
        self.rate = rate
        self.resample = stream_resampler(SAMPLE_RATE, rate)
        self.stats = stats
        self.mic = mic
        self.device_latency_s = device_latency_s
        self.recorder = recorder
        self.clock = clock

    def __call__(self, pcm, out, text: str) -> None:
        if pcm is None:
            return
        dev = self.resample(pcm)
        self.jitter.write(dev)
        now = self.clock()
        queued_s = max(0, self.jitter.fill() - dev.size) / self.rate
        if out.frame.t_capture is not None:
            self.stats.add_latency(now - out.frame.t_capture + queued_s + self.device_latency_s)
        self.stats.frames_out += 1
        if self.recorder is not None:
            self.recorder.write_at(out.frame.offset, pcm)
        if float(np.sqrt(np.mean(pcm * pcm))) > ECHO_THRESHOLD_RMS:
            self.mic.loud_until = now + queued_s + dev.size / self.rate + ECHO_HOLD_S


class LiveAudio:
    """The two PortAudio streams (separate input and output streams: duplex streams are
    unreliable on some hosts) and the buffers between them and the engine."""

    def __init__(self, in_dev: int, out_dev: int, latency: str, jitter_ms: float,
                 max_buffer_ms: float, clock=time.monotonic):
        sd = _sounddevice()
        self.sd = sd
        self.in_info = sd.query_devices(in_dev)
        self.out_info = sd.query_devices(out_dev)
        self.in_rate = int(self.in_info["default_samplerate"])
        self.out_rate = int(self.out_info["default_samplerate"])
        self.mic = SampleRing(self.in_rate * 4, clock)  # 4 s: the lag policy acts far sooner
        self.jitter = JitterBuffer(int(self.out_rate * jitter_ms / 1000),
                                   int(self.out_rate * max_buffer_ms / 1000), clock)
        self.status_flags = 0
        out_channels = min(2, int(self.out_info["max_output_channels"]))
        try:
            self.input = sd.InputStream(device=in_dev, samplerate=self.in_rate, channels=1,
                                        dtype="float32", latency=latency, callback=self._mic_cb)
            self.output = sd.OutputStream(device=out_dev, samplerate=self.out_rate,
                                          channels=out_channels, dtype="float32",
                                          latency=latency, callback=self._speaker_cb)
        except sd.PortAudioError as e:
            raise MoshiMacError(f"cannot open the audio devices ({e}); pick others with "
                                f"--input-device / --output-device (see `moshi-mac devices`)") from None

    # The callbacks: copies only.
    def _mic_cb(self, indata, frames, time_info, status) -> None:
        self.mic.write(indata[:, 0])
        if status:
            self.status_flags += 1

    def _speaker_cb(self, outdata, frames, time_info, status) -> None:
        self.jitter.read_into(outdata[:, 0])
        if outdata.shape[1] > 1:
            outdata[:, 1:] = outdata[:, :1]
        if status:
            self.status_flags += 1

    @property
    def device_latency_s(self) -> float:
        return float(self.input.latency) + float(self.output.latency)

    def names(self) -> tuple[str, str]:
        """The real input and output device names (live_status.device_label)."""
        if not hasattr(self, "_names"):
            self._names = (device_label(self.sd, self.in_info, "input"),
                           device_label(self.sd, self.out_info, "output"))
        return self._names

    def describe(self) -> str:
        def one(name, rate, what):
            conv = " → 24 kHz" if what == "in" and rate != SAMPLE_RATE else (
                " ← 24 kHz" if rate != SAMPLE_RATE else "")
            return f"{what}: {name} @ {rate} Hz{conv}"
        in_name, out_name = self.names()
        return one(in_name, self.in_rate, "in") + "  ·  " + one(out_name, self.out_rate, "out")

    def __enter__(self):
        self.output.start()
        self.input.start()
        return self

    def __exit__(self, *exc):
        for stream in (self.input, self.output):
            stream.stop()
            stream.close()
        return False


# ---------------------------------------------------------------------------------------
# Screen
# ---------------------------------------------------------------------------------------

class LiveScreen:
    def __init__(self, title: str, session, audio: LiveAudio, mic: MicSource,
                 stats: LiveStats, text_chars: int = 480):
        self.title = title
        self.session = session
        self.audio = audio
        self.mic = mic
        self.stats = stats
        self.text_chars = text_chars
        self.notes: list = []  # extra lines under the title

    def status(self) -> str:
        s, a = self.stats, self.audio
        elapsed = int(s.clock() - s.started)
        fill_ms = 1000 * a.jitter.fill() / a.out_rate
        return (f"{level_meter(s.input_db)} │ {s.steps_per_s():4.1f} steps/s │ latency "
                f"{s.latency_ms:4.0f} ms │ buffer {fill_ms:3.0f} ms │ underruns "
                f"{a.jitter.underruns} │ skipped {self.mic.fifo.skipped} │ "
                f"{elapsed // 60:02d}:{elapsed % 60:02d}")

    def __rich__(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        text = self.session.text.text.strip()[-self.text_chars:] or "…"
        return Group(Text.assemble((self.title, "bold"), ("   Ctrl-C stops", "dim")),
                     Text(self.audio.describe(), style="dim"), *self.notes,
                     Panel(Text(text, overflow="fold"), title="text", title_align="left",
                           border_style="dim", height=8),
                     Text(self.status()),
                     *([Text(f"⚠ {self.stats.pace.current}", style="yellow")]
                       if self.stats.pace is not None and self.stats.pace.current else []))


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------

def check_latency_args(args) -> None:
    """How the latency flags relate (each one's own range is checked in flags.py);
    shared with `serve`."""
    if args.max_buffer_ms < args.jitter_ms + 80:
        raise UsageError("--max-buffer-ms must be at least --jitter-ms + 80 (one frame)")


def _check_args(args) -> None:
    """What flags.py cannot check alone; the recording folder before the model loads."""
    from .outputs import check_folder

    check_latency_args(args)
    if args.record is not None:
        check_folder(args.record, "recording folder")


def session_stats(result, audio: LiveAudio, mic: MicSource, stats: LiveStats) -> dict:
    lat = [ms for _, ms in stats.latency_series]
    return {
        "duration_s": round(stats.clock() - stats.started, 3),
        "steps": result.steps, "steps_per_s": round(result.steps / max(result.wall_s, 1e-9), 2),
        "frames_in": stats.frames_in, "frames_out": stats.frames_out,
        "skipped_frames": mic.fifo.skipped, "skip_events": mic.fifo.skip_events,
        "max_lag_ms": round(1000 * mic.fifo.max_lag_s, 1),
        "underruns": audio.jitter.underruns, "output_dropped_samples": audio.jitter.dropped,
        "played_samples": audio.jitter.played, "mic_samples": audio.mic.written,
        "mic_overflow_samples": audio.mic.dropped, "stream_status_flags": audio.status_flags,
        "echo_guarded_frames": stats.echo_guarded,
        "latency_ms": {"last": round(stats.latency_ms, 1), "max": round(stats.latency_max_ms, 1),
                       "median": round(float(np.median(lat)), 1) if lat else None},
        "latency_series": stats.latency_series,
        "stage_ms": result.stage_ms, "pipelined": result.pipelined,
        "input_rate": audio.in_rate, "output_rate": audio.out_rate,
        "input_device": audio.names()[0], "output_device": audio.names()[1],
        "below_real_time_steps": stats.pace.behind_steps if stats.pace else 0,
        "below_real_time": stats.pace.worst if stats.pace else None,
    }


def _record_dir(root: Path) -> Path:
    folder = root / f"session-{datetime.now():%Y%m%d-%H%M%S}"
    n = 1
    while folder.exists():
        n += 1
        folder = root / f"session-{datetime.now():%Y%m%d-%H%M%S}-{n}"
    folder.mkdir(parents=True)
    return folder


def main(args) -> int:
    from rich.live import Live
    from rich.table import Table

    from .api import load
    from .cli import console, gen_options, print_stopped, print_warning
    from .engine import FRAME_S, Session
    from .live_status import Pace
    from .paths import cache_dir
    from .signals import current
    from .transcript import write_transcript

    guard = current()
    _check_args(args)
    in_dev = pick_device(args.input_device, "input")
    out_dev = pick_device(args.output_device, "output")
    with console.status("loading the model"):
        model = load(args.model, weights=args.weights).loaded
    session = Session(model, gen_options(args), keep_audio=False, timeline="input",
                      slow_s=args.debug_step_delay_ms / 1000, queue_size=1)
    with console.status("warming up"):
        session.warm_up()
    audio = LiveAudio(in_dev, out_dev, args.device_latency, args.jitter_ms, args.max_buffer_ms)
    audio.names()  # the real device names (may ask the sound server), before the streams start
    folder = _record_dir(args.record) if args.record else None
    rec_in = WavRecorder(folder / "input.wav") if folder else None
    rec_out = WavRecorder(folder / "output.wav") if folder else None
    recorders = [r for r in (rec_in, rec_out) if r is not None]
    # A second signal leaves at once: the recordings are finalized first if they can be.
    guard.on_second.extend(lambda r=r: r.close(timeout=0.5) for r in recorders)
    stats = LiveStats()
    stats.pace = Pace(pipelined=not args.sequential)
    policy = LagPolicy(max_lag_s=args.max_lag_ms / 1000, mode=args.lag_policy, frame_s=FRAME_S)
    mic = MicSource(audio.mic, audio.in_rate, policy, stats,
                    lambda: session.pending_frames() * FRAME_S, rec_in,
                    10 ** (-args.echo_guard_db / 20) if args.echo_guard else None)
    session.listeners.append(Speaker(audio.jitter, audio.out_rate, stats, mic,
                                     audio.device_latency_s, rec_out))
    what = "translation" if model.is_hibiki else "conversation"
    native_log = (folder or cache_dir("live")) / "audio-library.log"
    quiet = native_stderr_to(native_log)  # stderr keeps one line per fault, screen or not
    screen = LiveScreen(f"moshi-mac live — {model.name} ({what})", session, audio, mic, stats)
    if console.is_terminal:
        from rich.text import Text

        screen.notes.append(Text.from_markup(HEADPHONES))
    else:
        console.print(HEADPHONES)
    stop = threading.Event()
    timer = threading.Timer(args.duration, stop.set) if args.duration else None
    error: NonFiniteError | None = None
    try:
        with guard.stopping(stop), quiet, audio, Live(screen, console=console,
                                                      refresh_per_second=8):
            stats.started = stats.clock()
            if timer is not None:
                timer.start()
            try:
                result = session.run(mic, pipelined=not args.sequential, stop=stop,
                                     on_step=stats.on_step)
            except NonFiniteError as e:
                result, error = e.partial, e
    finally:
        if timer is not None:
            timer.cancel()
        for rec in recorders:
            rec.close()
    if not console.is_terminal:
        console.line()
    info = session_stats(result, audio, mic, stats)
    if folder is not None:
        text = session.text
        write_transcript(folder / "transcript.srt", folder / "transcript.json", text.text.strip(),
                         text.words, text.tokens, model=model.name,
                         model_type=model.cfg.moshi_mac.model_type, sample_rate=SAMPLE_RATE,
                         ending=(f"stopped: {error}" if error else
                                 f"stopped by {guard.name}" if guard.signum else "end"),
                         session=info)
    table = Table(title="live session", show_header=False)
    for key in ("duration_s", "steps_per_s", "frames_in", "frames_out", "skipped_frames",
                "underruns", "latency_ms"):
        value = info[key]
        if key == "latency_ms":
            value = f"median {value['median']}, max {value['max']}"
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)
    if info["below_real_time"]:
        console.print(f"[yellow]warning:[/] {info['below_real_time_steps']} steps ran "
                      f"{info['below_real_time']}", highlight=False)
    if native_log.exists() and not native_log.stat().st_size:
        native_log.unlink()  # nothing was logged
    if native_log.exists():
        n = len(native_log.read_bytes().splitlines())
        console.print(f"[dim]the audio libraries logged {n} line(s) (kept off the screen): "
                      f"{escape(str(native_log))}[/]", highlight=False)
    if folder is not None:
        console.print(f"[green]recorded[/] {escape(str(folder))}: input.wav, output.wav, "
                      f"transcript.srt, transcript.json", highlight=False)
    guard.finished = True
    if mic.cleaned.changed:
        print_warning(mic.cleaned.warning("microphone"))
    if error is not None:
        raise NonFiniteError(f"{error} (the session so far is recorded)" if folder else str(error))
    if guard.signum is not None:
        return print_stopped(guard.signum, f"session recorded in {folder}" if folder
                             else "session ended")
    return 0
