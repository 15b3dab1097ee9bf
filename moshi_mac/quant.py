"""Quantization presets: the one home of the names `q8` / `q4` and their (bits, group size).

`weights.quantize_model` applies them; `convert --quantize`, `make-random-model
--quantize` and the registry's quantized entries name them. A new preset goes here.
"""

from __future__ import annotations

QUANT_PRESETS: dict[str, tuple[int, int]] = {"q8": (8, 64), "q4": (4, 32)}
