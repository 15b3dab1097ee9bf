"""Safetensors I/O without loading tensor data: header reading and a streamed writer.

`read_header` validates a file (exists, is safetensors, every tensor's `data_offsets`
consistent with its dtype and shape and inside the file, not truncated) from its header
alone, with one-line errors that end in a caller-given fix. `save_safetensors_streamed`
writes lazily computed tensors one at a time, atomically, so huge models can be written
(random models, conversions) with the memory of their largest tensor.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .errors import ModelNotFoundError, MoshiMacError, UsageError, WeightsMismatchError
from .outputs import atomic_path

_MAX_HEADER = 100 * 1024 * 1024
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MX_TO_ST = {mx.bfloat16: "BF16", mx.float16: "F16", mx.float32: "F32", mx.uint32: "U32",
             mx.int32: "I32", mx.int64: "I64", mx.uint8: "U8"}


@dataclass
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_header(path: str | Path, what: str = "weights file", fix: str = "re-download it",
                error: type[MoshiMacError] = WeightsMismatchError) -> dict[str, TensorInfo]:
    """Tensor name -> TensorInfo. `what` names the file in messages ("Mimi checkpoint"),
    `fix` ends them, `error` is the class raised for a corrupt or truncated file."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a safetensors file; {fix}")
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
        spans = {k: (int(v["data_offsets"][0]), int(v["data_offsets"][1])) for k, v in header.items()}
        infos = {k: TensorInfo(v["dtype"], tuple(int(d) for d in v["shape"]))
                 for k, v in header.items()}
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        raise error(f"{bad} (malformed header); {fix}") from None
    end = max((e for _, e in spans.values()), default=0)
    problem = _offsets_problem(infos, spans)
    if problem:
        raise error(f"{what} {path} is corrupt: {problem}; {fix}")
    if 8 + n + end > size:
        raise error(f"{what} {path} is truncated: {size} bytes on disk, the header describes "
                    f"{8 + n + end}; {fix}")
    return infos


def _offsets_problem(infos: dict[str, TensorInfo], spans: dict[str, tuple[int, int]]) -> str | None:
    """Why the tensors' byte ranges do not fit their dtypes and shapes, or overlap."""
    for name, info in infos.items():
        width = DTYPE_BYTES.get(info.dtype)
        if width is None:
            return f"tensor {name} has an unknown dtype {info.dtype!r}"
        if any(d < 0 for d in info.shape):
            return f"tensor {name} has a negative dimension {list(info.shape)}"
        start, end = spans[name]
        want = width * _prod(info.shape)
        if start < 0 or end - start != want:
            return (f"tensor {name} ({info.dtype} {list(info.shape)}, {want} bytes) has "
                    f"data_offsets [{start}, {end}]")
    last = 0
    for name, (start, end) in sorted(spans.items(), key=lambda kv: kv[1]):
        if start < last:
            return f"tensor {name} overlaps the tensor before it (data_offsets [{start}, {end}])"
        last = end
    return None


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


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
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in list(tensors):
            v = tensors.pop(name)
            mx.eval(v)
            if v.dtype in (mx.bfloat16, mx.float16):
                v = v.view(mx.uint16)
            f.write(np.asarray(v).tobytes())
            del v
