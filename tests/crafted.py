"""A random model crafted to emit one text token at every step, for tests of what follows
from the text stream (the doctor's PAD checks, the engine's EOS stop)."""

from __future__ import annotations

import mlx.core as mx


def always_emit(lm, token_id: int):
    """Make `lm` (in place; returned) emit `token_id` whatever its input: every input
    embedding is the same positive vector and the layers add nothing, so the output is a
    constant positive direction, which only row `token_id` of the text head matches."""
    for emb in [lm.text_emb, *lm.audio_embs]:
        emb.weight = mx.ones_like(emb.weight)
    for layer in lm.transformer.layers:
        layer.self_attn.out_proj.weight = mx.zeros_like(layer.self_attn.out_proj.weight)
        layer.gating.linear_out.weight = mx.zeros_like(layer.gating.linear_out.weight)
    for cond in (lm.condition_provider.conditioners.values() if lm.condition_provider else []):
        cond.output_proj.weight = mx.zeros_like(cond.output_proj.weight)
    lm.out_norm.weight = mx.ones_like(lm.out_norm.weight)
    w = mx.zeros_like(lm.text_linear.weight)
    w[token_id] = mx.ones((w.shape[1],), w.dtype)
    lm.text_linear.weight = w
    return lm
