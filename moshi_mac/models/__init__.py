"""MLX model definitions: layers (transformer blocks) and lm (LM, depformer, conditioners)."""

from .lm import Lm, LmState, UNGENERATED_TOKEN, ZERO_TOKEN

__all__ = ["Lm", "LmState", "UNGENERATED_TOKEN", "ZERO_TOKEN"]
