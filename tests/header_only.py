"""Real-shape safetensors files that cost no disk or memory: a header and a hole."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path


def write_header_only(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """A safetensors file of the real size whose data is a hole: `check` reads headers."""
    size = {"BF16": 2, "F16": 2, "F32": 4, "U32": 4}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * size[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
