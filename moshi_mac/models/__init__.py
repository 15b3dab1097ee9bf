"""MLX model definitions: layers (transformer blocks) and lm (LM, depformer, conditioners)."""

from .lm import Lm, UNGENERATED_TOKEN, ZERO_TOKEN

__all__ = ["Lm", "UNGENERATED_TOKEN", "ZERO_TOKEN"]
