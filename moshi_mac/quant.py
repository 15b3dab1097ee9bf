"""Quantization presets: the one home of the names `q8` / `q4`, their (bits, group size)
and the LM weights file each is stored in (`model.q8.safetensors`, ...).

`weights.quantize_model` applies them; `convert --quantize`, `make-random-model
--quantize`, the registry's quantized entries and the model-folder resolver name them. A
new preset goes here.
"""

from __future__ import annotations

QUANT_PRESETS: dict[str, tuple[int, int]] = {"q8": (8, 64), "q4": (4, 32)}

# The LM weights file of each quantization ("bf16": the unquantized one).
LM_FILE = {"bf16": "model.safetensors", **{q: f"model.{q}.safetensors" for q in QUANT_PRESETS}}
QUANT_SUFFIXES = tuple(f".{q}.safetensors" for q in QUANT_PRESETS)
