"""Safetensors I/O without loading tensor data: header reading and a streamed writer.

`read_header` validates a file (exists, is safetensors, not truncated) from its header
alone, with one-line errors that end in a caller-given fix. `save_safetensors_streamed`
writes lazily computed tensors one at a time, atomically, so huge models can be written
(random models, conversions) with the memory of their largest tensor.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .errors import ModelNotFoundError, MoshiMacError

_MAX_HEADER = 100 * 1024 * 1024
_MX_TO_ST = {mx.bfloat16: "BF16", mx.float16: "F16", mx.float32: "F32", mx.uint32: "U32",
             mx.int32: "I32", mx.int64: "I64", mx.uint8: "U8"}


@dataclass
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_header(path: str | Path, what: str = "weights file", fix: str = "re-download it",
                error: type[MoshiMacError] = MoshiMacError) -> dict[str, TensorInfo]:
    """Tensor name -> TensorInfo. `what` names the file in messages ("Mimi checkpoint"),
    `fix` ends them, `error` is the class raised for a corrupt or truncated file."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{what} {path} does not exist; {fix}")
    size = path.stat().st_size
    bad = f"{what} {path} is not a safetensors file"
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise error(f"{bad} (only {size} bytes); {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise error(f"{bad} (bad header length); {fix}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise error(f"{bad} (unreadable header); {fix}") from None
    if not isinstance(header, dict):
        raise error(f"{bad} (header is not a JSON object); {fix}")
    header.pop("__metadata__", None)
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
        infos = {k: TensorInfo(v["dtype"], tuple(v["shape"])) for k, v in header.items()}
    except (TypeError, KeyError, IndexError, ValueError):
        raise error(f"{bad} (malformed header); {fix}") from None
    if 8 + n + end > size:
        raise error(f"{what} {path} is truncated: {size} bytes on disk, the header describes "
                    f"{8 + n + end}; {fix}")
    return infos


def save_safetensors_streamed(path: str | Path, tensors: dict[str, mx.array],
                              metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file evaluating one (lazy) tensor at a time, so writing a 7B
    model needs the memory of its largest tensor, not of the model. Atomic: a temp file
    in the same folder is renamed into place.

    The dict is consumed: each entry is removed once written, so its memory can be freed
    (pass a copy to keep it). Build it from lazy sources (e.g. `mx.load`, whose arrays
    read the file only when evaluated) and keep no other reference to them."""
    import numpy as np

    path = Path(path)
    header: dict = {"__metadata__": metadata or {"format": "mlx"}}
    offset = 0
    for name, v in tensors.items():
        header[name] = {"dtype": _MX_TO_ST[v.dtype], "shape": list(v.shape),
                        "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name in list(tensors):
                v = tensors.pop(name)
                mx.eval(v)
                if v.dtype in (mx.bfloat16, mx.float16):
                    v = v.view(mx.uint16)
                f.write(np.asarray(v).tobytes())
                del v
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
