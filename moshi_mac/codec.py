"""Mimi, the audio codec: checks of a checkpoint file and a streaming wrapper on rustymimi.

Owns the codec constants (24 kHz mono, 1920-sample frames at 12.5 Hz, 2048 codes per
codebook), `mimi_codebook_count` / `check_mimi` (read the safetensors header only, never the
tensor data), and `Mimi`, one independent streaming encoder + decoder per instance (hold
one per thread).
"""

from __future__ import annotations

import re
from pathlib import Path

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


class Mimi:
    """Streaming Mimi: one 1920-sample frame in, `num_codebooks` codes out, and back.

    Each instance keeps its own streaming state (rustymimi.Tokenizer): use one per thread.
    """

    def __init__(self, path: str | Path, num_codebooks: int, *, dtype: str = "f32",
                 check: bool = True) -> None:
        if check:
            check_mimi(path, num_codebooks)
        self.path = Path(path)
        self.num_codebooks = num_codebooks
        self.dtype = dtype
        self._tok = self._load()

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
        """Start a new stream. Reloads the (memory-mapped) weights: rustymimi 0.4.1's own
        `reset` leaves the first encoded frame different from a fresh codec's."""
        self._tok = self._load()

    def encode_step(self, pcm: np.ndarray) -> np.ndarray:
        """One frame of 24 kHz mono float audio [1920] -> codes [num_codebooks] (int32)."""
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.shape != (FRAME_SIZE,):
            raise ValueError(f"encode_step takes {FRAME_SIZE} samples, got shape {pcm.shape}")
        codes = self._tok.encode_step(np.ascontiguousarray(pcm)[None, None])
        if codes is None:  # rustymimi emits a frame per full 1920-sample input
            raise RuntimeError("rustymimi returned no codes for a full frame")
        return codes[0, :, 0].astype(np.int32)

    def decode_step(self, codes: np.ndarray) -> np.ndarray:
        """Codes [num_codebooks] in [0, 2048) -> one frame of audio [1920] (float32)."""
        codes = np.asarray(codes)
        if codes.shape != (self.num_codebooks,):
            raise ValueError(f"decode_step takes {self.num_codebooks} codes, got shape {codes.shape}")
        if codes.min() < 0 or codes.max() >= CARDINALITY:
            raise ValueError(f"codes must be in [0, {CARDINALITY}), got {codes.min()}..{codes.max()}")
        pcm = self._tok.decode_step(codes.astype(np.uint32)[None, :, None])
        if pcm is None:
            raise RuntimeError("rustymimi returned no audio for a full frame")
        return pcm[0, 0]

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
