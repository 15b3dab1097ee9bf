"""`moshi-mac translate`: run a model over audio files. Hibiki translates them; Moshi
answers them (its spoken replies to the file, as if the file were the user).

For each input (wav, mp3, flac or ogg, any rate and channel count, converted to 24 kHz
mono) it writes, next to the input or under `-o`:
    NAME-out.wav          the generated speech, 24 kHz mono
    NAME-out.srt / .vtt   the generated text as subtitles
    NAME-out.json         the text with per-word and per-token times
    NAME-out-stereo.wav   with --stereo: the input left, the output right
Before the model loads, every input is probed (length, readable) and every output
checked (writable folder, free space, not in the way without --force, not being written
by another run: outputs.py). The files of one input are committed together. Ctrl-C,
SIGTERM or SIGHUP, or NaN/Inf out of the model, keep what was made as valid partial
outputs, `NAME-out.partial.wav` / `.srt` / `.json` (a complete output is never replaced by
them). A batch goes on past an unreadable input and exits 1 at the end; inputs are
decoded one at a time.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from .engine import FRAME_S
from .errors import MoshiMacError, NonFiniteError, UsageError
from .outputs import OutputSet
from .transcript import FORMATS
from .tables import Column

from .api import DEFAULT_MAX_TAIL_S  # noqa: E402  (its home is api.py)


def register(subparsers) -> None:
    from .cli import add_model_args
    from .cli import add_generation_args

    p = subparsers.add_parser(
        "translate", help="translate audio files (Hibiki) or answer them (Moshi)",
        description="Run a model over audio files and write the generated speech, "
                    "timed subtitles and a JSON transcript for each.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="wav, mp3, flac or ogg files")
    p.add_argument("-o", "--output", dest="out", type=Path,
                   help="output folder, or (one input) the output .wav; default: beside each input")
    add_model_args(p)
    p.add_argument("--subtitles", choices=FORMATS, default=FORMATS[0], help=f"default: {FORMATS[0]}")
    p.add_argument("--stereo", action="store_true",
                   help="also write a stereo wav: input left, output right")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--max-tail", type=float, default=DEFAULT_MAX_TAIL_S, metavar="SECONDS",
                   help="Hibiki: the most silence fed after the input while waiting for the "
                        f"end of the translation (default {DEFAULT_MAX_TAIL_S:g})")
    add_generation_args(p)
    p.set_defaults(func=main)


# ---------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------

@dataclass
class Outputs:
    wav: Path
    subtitles: Path
    json: Path
    stereo: Path | None

    def all(self) -> list[Path]:
        return [p for p in (self.wav, self.subtitles, self.json, self.stereo) if p is not None]


def plan_outputs(inputs: list[Path], out: Path | None, subtitles: str, stereo: bool) -> list[Outputs]:
    """The output paths of every input; checks they are distinct and not an input."""
    if out is not None and out.suffix.lower() == ".wav" and not out.is_dir():
        if len(inputs) > 1:
            raise UsageError(f"-o {out} names one file but there are {len(inputs)} inputs; "
                                f"pass a folder with -o")
        bases = [out.with_suffix("")]
    else:
        bases = [(out if out is not None else p.parent) / f"{p.stem}-out" for p in inputs]
    plans = [Outputs(b.parent / f"{b.name}.wav", b.parent / f"{b.name}.{subtitles}",
                     b.parent / f"{b.name}.json",
                     b.parent / f"{b.name}-stereo.wav" if stereo else None) for b in bases]
    seen: dict[Path, Path] = {}
    resolved_inputs = {p.resolve() for p in inputs}
    for src, plan in zip(inputs, plans):
        for path in plan.all():
            key = path.resolve()
            if key in resolved_inputs:
                raise UsageError(f"output {path} would overwrite an input; choose another -o")
            if key in seen:
                raise UsageError(f"{seen[key]} and {src} would both write {path}; "
                                    f"rename one or translate them separately")
            seen[key] = src
    return plans


def estimate_bytes(duration_s: float, tail_s: float, stereo: bool) -> int:
    """An upper bound of one input's outputs on disk: 16-bit wavs of the input's length
    plus the tail, and generous room for the subtitles and the JSON (one token a frame)."""
    from .codec import FRAME_SIZE

    frames = math.ceil((duration_s + tail_s) / FRAME_S) + 2
    wav = 44 + 2 * frames * FRAME_SIZE
    return wav * (3 if stereo else 1) + 512 * frames


# ---------------------------------------------------------------------------------------
# Screen
# ---------------------------------------------------------------------------------------

class FileProgress:
    """On a terminal: a progress bar (steps/s, real-time factor, ETA) with the text
    streaming under it. Otherwise: the text written out as it comes."""

    def __init__(self, console, label: str, total_steps: int, input_steps: int):
        self.console = console
        self.tty = console.is_terminal
        self.input_steps = input_steps
        self._live = None
        if self.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
                                     TimeRemainingColumn(), console=console, auto_refresh=False)
            self.task = self.progress.add_task(label, total=input_steps, speed="")
        self.total_steps = total_steps
        self.text = ""

    def __rich__(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        tail = self.text.strip()[-400:] or "…"
        return Group(self.progress, Panel(Text(tail, overflow="fold"), title="text",
                                          title_align="left", border_style="dim"))

    def __enter__(self):
        if self.tty:
            from rich.live import Live

            self._live = Live(self, console=self.console, refresh_per_second=8, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)
        elif self.text:
            sys.stdout.write("\n")
            sys.stdout.flush()
        return False

    def on_text(self, pcm, out, text: str) -> None:
        """Session listener (decode thread)."""
        if not text:
            return
        self.text += text
        if not self.tty:
            sys.stdout.write(text)
            sys.stdout.flush()

    def on_step(self, session) -> None:
        """Session progress hook (LM thread)."""
        if not self.tty:
            return
        steps = session.stepper.steps
        wall = self.progress.tasks[0].elapsed or 1e-9
        speed = f"{steps / wall:5.1f} steps/s  RTF {wall / (steps * FRAME_S):.2f}"
        if steps <= self.input_steps:
            self.progress.update(self.task, completed=steps, speed=speed)
        else:
            self.progress.update(self.task, description="input done, waiting for the end",
                                 total=self.total_steps, completed=steps, speed=speed)


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------

@dataclass
class Job:
    """One input: its outputs and, once probed, its length."""

    path: Path
    plan: Outputs
    outputs: OutputSet
    duration: float = 0.0


def _probe(args, plans: list[Outputs]) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Every input's length from its header; unreadable inputs are set aside (a batch goes
    on without them), or raised when there is only one."""
    from .audio_io import probe_audio

    jobs, failed = [], []
    for path, plan in zip(args.inputs, plans):
        try:
            jobs.append(Job(path, plan, OutputSet(plan.all()), probe_audio(path)))
        except UsageError as e:
            if len(args.inputs) == 1:
                raise
            failed.append((path, str(e)))
    if not jobs:
        raise UsageError(f"none of the {len(failed)} inputs can be read: {failed[0][1]}")
    return jobs, failed


SUMMARY_COLUMNS = [Column("input", fold=True), Column("output", fold=True),
                   Column("steps", drop=2, justify="right"), Column("wall", drop=3, justify="right"),
                   Column("steps/s", drop=1, justify="right"), Column("RTF", justify="right"),
                   Column("ending", fold=True)]


def summary_table(title: str, rows: list[list[str]], width: int):
    """The end-of-run summary: at 80 columns, wall, steps and steps/s go and file names
    wrap rather than being cut."""
    from .tables import fit_table

    return fit_table(escape(title), SUMMARY_COLUMNS, [[escape(c) for c in r] for r in rows], width)


def main(args) -> int:
    from .signals import current

    plans = plan_outputs(args.inputs, args.out, args.subtitles, args.stereo)
    jobs, failed = _probe(args, plans)
    guard = current()

    def clean_up() -> None:  # also run by a second signal, just before leaving at once
        for job in jobs:
            job.outputs.discard_temps()
            job.outputs.release()

    guard.on_second.append(clean_up)
    try:
        need: dict[Path, int] = {}  # per folder: the outputs of every input going there
        for job in jobs:
            folder = job.plan.wav.parent.resolve()
            need[folder] = need.get(folder, 0) + estimate_bytes(job.duration, args.max_tail,
                                                                args.stereo)
            job.outputs.preflight(args.force, need[folder])
        return _run(args, jobs, failed, guard)
    finally:
        clean_up()


def _run(args, jobs: list[Job], failed: list[tuple[Path, str]], guard) -> int:
    from .api import load, run_pcm
    from .audio_io import read_audio
    from .cli import console, gen_options, print_stopped, print_warning
    from .codec import FRAME_SIZE
    from .result import InputInfo

    with console.status("loading the model"):
        model = load(args.model, weights=args.weights).loaded
    options = gen_options(args)
    what = "translating" if model.is_hibiki else "answering"
    console.print(f"[dim]model[/] {escape(model.name)}: {model.cfg.summary()}", highlight=False)

    title = (f"moshi-mac translate ({model.name}, "
             f"{'sequential' if args.sequential else 'pipelined'})")
    rows: list[list[str]] = []  # plain text: escaped when the table is made
    error: NonFiniteError | None = None
    kept: list[Path] = []
    for job in jobs:
        if guard.signum is not None:  # came while the previous input's outputs were written
            break
        try:
            pcm, report = read_audio(job.path)
        except UsageError as e:  # probed fine, yet does not decode
            if len(jobs) + len(failed) == 1:
                raise
            failed.append((job.path, str(e)))
            continue
        console.print(f"[dim]input[/] {escape(report.summary())}", highlight=False)
        if report.cleaned.changed:
            print_warning(report.cleaned.warning(str(report.path)))
        input_steps = -(-pcm.size // FRAME_SIZE) + 1
        tail = math.ceil(args.max_tail / FRAME_S) + 1 if model.is_hibiki else 0
        stop = threading.Event()
        with guard.stopping(stop):
            with FileProgress(console, f"{what} {escape(report.path.name)}", input_steps + tail,
                              input_steps) as progress:
                if not progress.tty:
                    console.print(f"{what} {escape(report.path.name)}:", highlight=False)
                error = None
                try:  # the path of Model.run
                    result = run_pcm(model, pcm, options, InputInfo.from_report(report),
                                     max_tail_s=args.max_tail, pipelined=not args.sequential,
                                     slow_s=args.debug_step_delay_ms / 1000, stop=stop,
                                     listeners=[progress.on_text], on_step=progress.on_step)
                except NonFiniteError as e:
                    result, error = e.result, e
            if guard.signum is not None:
                result = dataclasses.replace(result, interrupted=True, stopped_by=guard.name)
            if progress.tty and result.text:
                console.print(result.text, highlight=False, markup=False)
            partial = result.partial
            written = job.outputs.commit(
                result.writers(wav=job.plan.wav, stereo=job.plan.stereo,
                               subtitles=job.plan.subtitles, json=job.plan.json),
                partial=partial)
        wall = max(result.wall_s, 1e-9)
        rtf = f"{wall / (result.steps * FRAME_S):.2f}" if result.steps else "-"
        rows.append([report.path.name, f"{written[0].name} ({result.pcm.size / 24000:.2f} s)",
                     str(result.steps), f"{wall:.1f} s", f"{result.steps / wall:.1f}", rtf,
                     result.ending.split(":")[0]])
        console.print(("[yellow]kept partial[/] " if partial else "[green]wrote[/] ")
                      + escape(", ".join(str(p) for p in written)), highlight=False)
        if result.early_eos:
            console.print(f"[yellow]note:[/] the model sampled the end of text "
                          f"{result.early_eos} time(s) before the input ended")
        if partial:
            kept = written
            break
    for path, _ in failed:
        rows.append([path.name, "-", "", "", "", "", "failed: unreadable"])
    console.print(summary_table(title, rows, console.width))
    guard.finished = True
    names = ", ".join(p.name for p in kept)
    if guard.signum is not None:
        return print_stopped(guard.signum, f"partial outputs kept: {names}" if kept else
                             "the outputs written before it are complete; later inputs were "
                             "not started")
    if error is not None:
        raise NonFiniteError(f"{error} (partial outputs kept: {names})")
    if failed:
        raise MoshiMacError(f"{len(failed)} of {len(args.inputs)} inputs failed "
                            f"({failed[0][1]}); the others were written")
    return 0
