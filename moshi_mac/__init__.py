"""moshi-mac: Kyutai's speech models (Moshi, Hibiki, Hibiki-Zero) on MLX.

The Python API (api.py; the README's "Python API"):

    import moshi_mac
    model = moshi_mac.load("hibiki-1b-bf16")     # or a repo id, or a model folder
    moshi_mac.check("hibiki-1b-bf16")              # its files checked together, not loaded
    result = model.run("talk.wav", seed=0)         # or a numpy array and its sample_rate
    result.save("talk-out")                        # .wav, .srt, .json, as `translate` writes
    with model.stream(seed=0) as stream: ...       # feed() chunks, close(); see api.py
    moshi_mac.score(model, codes)                  # teacher-forced logits

The package is laid out one concern per module:
api (the public API: load, Model, Stream, score), result (Result and its output files),
config (model configs), registry (known models and downloads), weights (strict loading),
models/ (the MLX LM and depformer), generate (streaming generation), scoring
(teacher-forced logits), engine (the streaming session every command runs), codec (Mimi
through rustymimi), audio_io, transcript, cli and the command modules (translate, live,
doctor, convert, bench). The names below load on first use, so `import moshi_mac` is cheap.
"""

__version__ = "0.1.0"

__all__ = ["load", "check", "Model", "Stream", "Event", "Result", "Sampling", "score"]


def __getattr__(name: str):
    if name in ("load", "check", "Model", "Stream", "Event", "Sampling", "score"):
        from . import api

        return getattr(api, name)
    if name == "Result":
        from .result import Result

        return Result
    raise AttributeError(f"module 'moshi_mac' has no attribute {name!r}")
