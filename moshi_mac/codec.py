"""Mimi, the audio codec: checks of a checkpoint file and a streaming wrapper on rustymimi.

Owns the codec constants (24 kHz mono, 1920-sample frames at 12.5 Hz, 2048 codes per
codebook), `mimi_codebook_count` / `check_mimi` (read the safetensors header only, never the
tensor data), and `Mimi`, one independent streaming encoder + decoder per instance (hold
one per thread).

Bounded memory (`Handover`). rustymimi 0.4.1 appends every key/value of the codec
transformers (8 layers, 2 x 512 floats per 25 Hz step) to a KV cache preallocated for 8192
steps, and only ever attends to the last `context` of them: its resident memory grows by
64 KB per 80 ms frame and direction, and at frame 4096 (5.5 min) the cache is full and
every further step fails ("kv-cache: above max-seq-len"). Its `reset` frees the cache but
keeps the attention positions (and the downsampling conv state), so it does not help.
`Mimi` therefore hands each direction over to a fresh rustymimi instance every
`Handover.every` frames; the fresh instance is fed the last `Handover.warm` frames alongside
the old one first, so its convolutions and its 250-step attention context hold what the old
one's hold, and its output continues the stream (see `Handover` for how close).
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import WeightsMismatchError
from .safetensors_io import read_header

SAMPLE_RATE = 24000
FRAME_SIZE = 1920
FRAME_RATE = SAMPLE_RATE / FRAME_SIZE  # 12.5 Hz
CARDINALITY = 2048  # codes per codebook
CODEBOOK_DIM = 256
MAX_CODEBOOKS = 32
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"

_ACOUSTIC = re.compile(r"quantizer\.rvq_rest\.vq\.layers\.(\d+)\._codebook\.embedding_sum")
# Keys every Mimi checkpoint has, whatever its codebook count.
_REQUIRED = ("encoder.model.0.conv.conv.weight", "decoder.model.0.conv.conv.weight",
             "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum")
_LM_MARKERS = ("text_emb.weight", "text_linear.weight", "emb.0.weight")


def read_mimi_header(path: str | Path) -> dict:
    """Tensor name -> TensorInfo, from the header alone (one-line errors otherwise)."""
    return read_header(path, "Mimi checkpoint", f"pass the Mimi codec {MIMI_FILE}")


def _contiguous_count(header: dict[str, dict], pattern: re.Pattern) -> int:
    found = {int(m.group(1)) for k in header if (m := pattern.fullmatch(k))}
    count = 0
    while count in found:
        count += 1
    return count


def mimi_codebook_count(path: str | Path) -> int:
    """Codebooks (1 semantic + acoustic) a Mimi checkpoint provides; checks it is a Mimi."""
    header = read_mimi_header(path)
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        lm = next((k for k in _LM_MARKERS if k in header), None)
        what = f"LM weights (it has {lm})" if lm else f"not a Mimi checkpoint (no {missing[0]})"
        raise WeightsMismatchError(f"{path} is {what}; pass the Mimi codec {MIMI_FILE}")
    shape = header[_REQUIRED[-1]].shape
    if list(shape) != [CARDINALITY, CODEBOOK_DIM]:
        raise WeightsMismatchError(
            f"{path}: Mimi codebooks are {shape}, expected [{CARDINALITY}, {CODEBOOK_DIM}]; "
            f"pass the Mimi codec {MIMI_FILE}")
    return 1 + _contiguous_count(header, _ACOUSTIC)


def check_mimi(path: str | Path, needed: int) -> int:
    """Check a Mimi checkpoint provides `needed` codebooks (the config's `mimi_codebooks`);
    return the number it provides."""
    have = mimi_codebook_count(path)
    if have < needed:
        raise WeightsMismatchError(
            f"Mimi checkpoint {path} provides {have} codebooks, the config needs {needed} "
            f"(use the full {MIMI_FILE}, which has {MAX_CODEBOOKS}, or a config with fewer codebooks)")
    return have


# rustymimi 0.4.1 sizes its KV caches and rotary tables for 8192 transformer steps at 25 Hz:
# one instance can stream at most this many frames in each direction.
RUSTYMIMI_MAX_FRAMES = 4096
CONTEXT_FRAMES = 125  # Mimi's attention context: 250 transformer steps at 25 Hz


@dataclass(frozen=True)
class Handover:
    """When each direction of a `Mimi` stream moves to a fresh rustymimi instance.

    An instance serves `every` frames; for the last `warm` of them the next instance (loaded
    then) is fed the same frames, its outputs discarded, and takes over after them. Costs:
    warm / every extra codec steps, one load of the checkpoint per `every` frames (it holds
    the GIL: ~1-2 s on a 2-core VM), and during the warm frames a second copy of the
    weights (~400 MB). Memory stays below that plus (warm + every) x 64 KB of KV cache.

    The next instance's convolutions hold exactly the old one's state after a few frames,
    and its attention sees the same 250 steps once warm > 125; the deeper layers' keys
    still carry the shorter history it started from, fading layer by layer (the codec's
    attention adds through layer scales), and the rotary positions restart from 0, which
    rounds differently in float32. So the output is not bit-identical to an uninterrupted
    stream, though close: with warm = 250, identical codes and a PCM SNR of ~120 dB after
    a handover (tests/test_codec_memory.py, tests/test_mimi_reference.py).
    """

    every: int = 2000
    warm: int = 250

    def __post_init__(self) -> None:
        if not 0 < self.warm <= self.every or self.every + self.warm > RUSTYMIMI_MAX_FRAMES:
            raise ValueError(f"need 0 < warm <= every and every + warm <= "
                             f"{RUSTYMIMI_MAX_FRAMES}, got {self}")


class _Stream:
    """One direction (encode or decode) of a Mimi stream, with its handovers.

    `tok` may be an instance shared with the other direction (each direction has its own
    state inside it); `on_handover` is called after each handover."""

    def __init__(self, step: Callable[[Any, np.ndarray], np.ndarray], load: Callable[[], Any],
                 handover: Handover | None, tok: Any = None) -> None:
        self._step, self._load, self._handover = step, load, handover
        self.tok, self.next = tok, None
        self.frames = 0  # frames stepped in this direction
        self.served = 0  # frames output by the serving instance
        self.handovers = 0
        self.on_handover: Callable[[], None] = lambda: None

    def drop_if_unused(self) -> None:
        """Forget a shared instance this direction never stepped (loaded again if it is)."""
        if self.frames == 0:
            self.tok = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = self._handover
        if self.tok is None:
            self.tok = self._load()
        if h is not None and self.next is None and self.served == h.every - h.warm:
            self.next = self._load()
        out = self._step(self.tok, x)
        if self.next is not None:
            self._step(self.next, x)
        self.frames += 1
        self.served += 1
        if h is not None and self.served == h.every:
            self.tok, self.next, self.served = self.next, None, 0
            self.handovers += 1
            self.on_handover()
            _return_freed_memory()
        return out


def _return_freed_memory() -> None:
    """Hand the heap pages of a dropped rustymimi instance back to the OS. glibc keeps
    them otherwise (each handover then adds ~100-200 MB of RSS until fragmentation
    plateaus); elsewhere (macOS: no malloc_trim) large blocks go back on free anyway."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value


@functools.cache
def _keep_large_blocks_mapped() -> None:
    """Keep glibc's mmap threshold at its initial 128 KB. By default it rises (up to 32 MB)
    after a large block is freed, so a fresh rustymimi instance's weights land in the heap,
    where a later handover cannot always return them (measured: RSS steps of ~180 MB).
    Fixed, every block >= 128 KB is its own mapping, unmapped when freed. No-op off glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _encode_step(tok, pcm: np.ndarray) -> np.ndarray:
    codes = tok.encode_step(pcm[None, None])
    if codes is None:  # rustymimi emits a frame per full 1920-sample input
        raise RuntimeError("rustymimi returned no codes for a full frame")
    return codes[0, :, 0].astype(np.int32)


def _decode_step(tok, codes: np.ndarray) -> np.ndarray:
    pcm = tok.decode_step(codes[None, :, None])
    if pcm is None:
        raise RuntimeError("rustymimi returned no audio for a full frame")
    return pcm[0, 0]


class Mimi:
    """Streaming Mimi: one 1920-sample frame in, `num_codebooks` codes out, and back.

    Each instance keeps its own streaming state (rustymimi.Tokenizer): use one per thread.
    `handover` bounds memory and lets streams run past rustymimi's 4096-frame limit (see
    `Handover`); None streams on one rustymimi instance per direction, as rustymimi does.
    """

    def __init__(self, path: str | Path, num_codebooks: int, *, dtype: str = "f32",
                 check: bool = True, handover: Handover | None = Handover()) -> None:
        if check:
            check_mimi(path, num_codebooks)
        self.path = Path(path)
        self.num_codebooks = num_codebooks
        self.dtype = dtype
        self.handover = handover
        if handover is not None:
            _keep_large_blocks_mapped()
        self.reset()

    def _load(self):
        import rustymimi

        try:
            return rustymimi.Tokenizer(str(self.path), num_codebooks=self.num_codebooks,
                                       dtype=self.dtype)
        except ValueError as e:
            first = str(e).strip().splitlines()[0]
            raise WeightsMismatchError(f"cannot load Mimi from {self.path}: {first}; "
                                       f"pass the Mimi codec {MIMI_FILE}") from None

    def reset(self) -> None:
        """Start a new stream. Loads the weights again: rustymimi 0.4.1's own `reset` keeps
        the downsampling conv state and the attention positions."""
        tok = self._load()  # shared by both directions until one hands over
        self._encoder = _Stream(_encode_step, self._load, self.handover, tok)
        self._decoder = _Stream(_decode_step, self._load, self.handover, tok)
        # A Mimi used in one direction only keeps one instance, not the shared first one too.
        self._encoder.on_handover = self._decoder.drop_if_unused
        self._decoder.on_handover = self._encoder.drop_if_unused
        _return_freed_memory()  # the previous stream's instances, if any

    @property
    def handovers(self) -> int:
        """Handovers to a fresh rustymimi instance so far, both directions."""
        return self._encoder.handovers + self._decoder.handovers

    def encode_step(self, pcm: np.ndarray) -> np.ndarray:
        """One frame of 24 kHz mono float audio [1920] -> codes [num_codebooks] (int32)."""
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.shape != (FRAME_SIZE,):
            raise ValueError(f"encode_step takes {FRAME_SIZE} samples, got shape {pcm.shape}")
        return self._encoder(np.ascontiguousarray(pcm))

    def decode_step(self, codes: np.ndarray) -> np.ndarray:
        """Codes [num_codebooks] in [0, 2048) -> one frame of audio [1920] (float32)."""
        codes = np.asarray(codes)
        if codes.shape != (self.num_codebooks,):
            raise ValueError(f"decode_step takes {self.num_codebooks} codes, got shape {codes.shape}")
        if codes.min() < 0 or codes.max() >= CARDINALITY:
            raise ValueError(f"codes must be in [0, {CARDINALITY}), got {codes.min()}..{codes.max()}")
        return self._decoder(codes.astype(np.uint32))

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """Whole signal -> codes [num_codebooks, frames], by streaming steps (zero-padded)."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        frames = -(-pcm.size // FRAME_SIZE)
        pcm = np.pad(pcm, (0, frames * FRAME_SIZE - pcm.size))
        steps = [self.encode_step(f) for f in pcm.reshape(frames, FRAME_SIZE)]
        return np.stack(steps, axis=1) if steps else np.zeros((self.num_codebooks, 0), np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [num_codebooks, frames] -> audio [frames * 1920], by streaming steps."""
        codes = np.asarray(codes)
        return np.concatenate([np.zeros(0, np.float32)]
                              + [self.decode_step(codes[:, t]) for t in range(codes.shape[1])])
