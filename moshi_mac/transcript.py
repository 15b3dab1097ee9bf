"""Timed transcripts: the text a model speaks, as SRT or WebVTT subtitles and as JSON.

Owns the timed units (`Token`: one text token and its time; `Word`: a word with start and
end), `make_cues` (words grouped into subtitle cues by length, duration, pauses and
sentence ends), the SRT / WebVTT / JSON renderers (`transcript_files`; the JSON is strict:
a NaN or Inf becomes null), and `write_transcript`, which writes the subtitle file and the
JSON (per-word and per-token times) atomically.
Times are seconds on the timeline of the audio the transcript goes with.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import MoshiMacError
from .outputs import atomic_path, write_error

FORMATS = ("srt", "vtt")
SENTENCE_END = (".", "?", "!", "…")


@dataclass(frozen=True)
class Token:
    id: int
    piece: str  # as the tokenizer writes it ("▁" marks a word start)
    time: float


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def make_cues(words: list[Word], max_chars: int = 84, max_duration: float = 6.0,
              max_gap: float = 1.0) -> list[Cue]:
    """Group words into cues: a new cue after a sentence end, a pause longer than
    `max_gap`, or when the cue would pass `max_chars` characters or `max_duration` s."""
    cues: list[Cue] = []
    group: list[Word] = []

    def flush() -> None:
        if group:
            cues.append(Cue(group[0].start, group[-1].end, " ".join(w.text for w in group)))
            group.clear()

    for w in words:
        if group:
            last = group[-1]
            length = sum(len(g.text) + 1 for g in group) + len(w.text)
            if (last.text.endswith(SENTENCE_END) or w.start - last.end > max_gap
                    or length > max_chars or w.end - group[0].start > max_duration):
                flush()
        group.append(w)
    flush()
    return cues


def _timestamp(t: float, decimal: str) -> str:
    ms = max(0, round(t * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def format_srt(cues: list[Cue]) -> str:
    blocks = [f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n"
              for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


def format_vtt(cues: list[Cue]) -> str:
    blocks = [f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text}\n" for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)


def transcript_dict(text: str, words: list[Word], tokens: list[Token], **meta) -> dict:
    """The JSON transcript: `meta` (model, input, durations, ...), the text, the cues,
    every word with start/end and every printed token with its time."""
    return {
        **meta,
        "text": text,
        "segments": [asdict(c) for c in make_cues(words)],
        "words": [asdict(w) for w in words],
        "tokens": [asdict(t) for t in tokens],
    }


def strict_json(obj):
    """`obj` with every NaN / Inf float replaced by None, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def dumps_json(doc) -> str:
    return json.dumps(strict_json(doc), ensure_ascii=False, indent=1, allow_nan=False) + "\n"


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        raise write_error(path, e) from None
    return path


def transcript_files(subtitles: Path, json_path: Path, text: str, words: list[Word],
                     tokens: list[Token], **meta) -> dict[Path, str]:
    """The contents of `subtitles` (.srt or .vtt, by its suffix) and of the JSON."""
    fmt = subtitles.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise MoshiMacError(f"subtitle format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    cues = make_cues(words)
    return {subtitles: format_srt(cues) if fmt == "srt" else format_vtt(cues),
            json_path: dumps_json(transcript_dict(text, words, tokens, **meta))}


def write_transcript(subtitles: Path, json_path: Path, text: str, words: list[Word],
                     tokens: list[Token], **meta) -> tuple[Path, Path]:
    """Write `subtitles` (.srt or .vtt, by its suffix) and the JSON transcript."""
    files = transcript_files(subtitles, json_path, text, words, tokens, **meta)
    for path, content in files.items():
        write_text_atomic(path, content)
    return subtitles, json_path
