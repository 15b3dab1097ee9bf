"""moshi-mac: Kyutai's speech models (Moshi, Hibiki, Hibiki-Zero) on MLX.

The package is laid out one concern per module:
config (model configs), registry (known models and downloads), weights (strict loading),
models/ (the MLX LM and depformer), generate (streaming generation), scoring
(teacher-forced logits), codec (Mimi through rustymimi), audio_io, cli.
"""

__version__ = "0.1.0"
