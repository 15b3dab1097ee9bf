"""Teacher-forced scoring: the MLX twin of `moshi.models.lm.LMModel.forward`.

`score(model, codes)` takes codes [B, 1 + n_q, T] in the un-delayed layout (text first,
then the audio codebooks; -1 marks "no token") and returns text and audio logits aligned
with the codes, plus validity masks, exactly shaped as the reference's `LMOutput`:
logits [B, dep_q, T, card], mask [B, dep_q, T], text_logits [B, 1, T, text_card],
text_mask [B, 1, T]. Invalid positions are NaN. It is the core of the parity tests and of
the self-checks (quantized vs full-precision agreement). It runs the streaming forward path
(`Lm.forward`, `DepFormer.slice_step`) with all T steps at once on a ring that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from .models.lm import ZERO_TOKEN, Lm


@dataclass
class ScoreOutput:
    logits: mx.array  # [B, dep_q, T, card]
    mask: mx.array  # [B, dep_q, T]
    text_logits: mx.array  # [B, 1, T, text_card]
    text_mask: mx.array  # [B, 1, T]


def initial_tokens(model: Lm) -> list[int]:
    """The start-of-sequence token of every stream: text_card for text, card for audio."""
    cfg = model.cfg
    return [cfg.text_out_vocab_size] + [cfg.card] * cfg.audio_codebooks


def delay_codes(codes: mx.array, delays: list[int], initial: list[int]) -> mx.array:
    """Shift stream k right by delays[k], filling with its initial token."""
    B, K, T = codes.shape
    rows = []
    for k, d in enumerate(delays):
        row = codes[:, k]
        if d > 0:
            pad = mx.full((B, min(d, T)), initial[k], dtype=codes.dtype)
            row = mx.concatenate([pad, row[:, : max(T - d, 0)]], axis=1)
        rows.append(row)
    return mx.stack(rows, axis=1)


def undelay(x: mx.array, delays: list[int]) -> tuple[mx.array, mx.array]:
    """Inverse of `delay_codes` for logits [B, K, T, V]: NaN where no valid prediction."""
    B, K, T = x.shape[:3]
    rows, masks = [], []
    for k, d in enumerate(delays):
        row = x[:, k]
        valid = mx.ones((B, T), dtype=mx.bool_)
        if d > 0:
            nan = mx.full((B, min(d, T)) + tuple(x.shape[3:]), float("nan"), dtype=x.dtype)
            row = mx.concatenate([row[:, d:], nan], axis=1)
            valid = mx.concatenate([valid[:, d:], mx.zeros((B, min(d, T)), dtype=mx.bool_)], axis=1)
        rows.append(row)
        masks.append(valid)
    return mx.stack(rows, axis=1), mx.stack(masks, axis=1)


def depformer_logits(model: Lm, transformer_out: mx.array, targets: mx.array) -> mx.array:
    """All depformer slices for every step at once (teacher forcing): every frame is a row
    of the streaming path (`DepFormer.slice_step`).

    transformer_out [B, T, D]; targets [B, 1 + n_q, T] (delayed, aligned with the output
    step). Returns [B, dep_q, T, card].
    """
    B, T, D = transformer_out.shape
    dep = model.depformer
    flat_out = transformer_out.reshape(B * T, D)
    kv, logits = None, []
    for k in range(len(dep.slices)):
        prev = targets[:, k].reshape(B * T)  # text for k = 0, else audio codebook k - 1
        lk, kv = dep.slice_step(k, flat_out, prev, kv, zero_tokens=True)  # [B*T, card]
        logits.append(lk.reshape(B, T, -1))
    return mx.stack(logits, axis=1)


def score(model: Lm, codes: mx.array, conditions: list[dict[str, str]] | None = None) -> ScoreOutput:
    """Teacher-forced logits for codes [B, 1 + n_q, T] (see the module docstring)."""
    cfg = model.cfg
    B, K, T = codes.shape
    if K != 1 + cfg.audio_codebooks:
        raise ValueError(f"codes have {K} streams, the model has {1 + cfg.audio_codebooks}")
    codes = codes.astype(mx.int32)
    initial = initial_tokens(model)
    delayed = delay_codes(codes, cfg.delays, initial)
    init_col = mx.array(initial, dtype=mx.int32)[None, :, None]
    delayed = mx.concatenate([mx.broadcast_to(init_col, (B, K, 1)), delayed], axis=2)
    cond = model.conditions(conditions) if conditions else None
    out, text_logits = model.forward_text(delayed[:, :, :-1], condition_sum=cond)
    logits = depformer_logits(model, out, delayed[:, :, 1:]) if cfg.dep_q else None
    text_logits, text_mask = undelay(text_logits[:, None].astype(mx.float32), cfg.delays[:1])
    text_mask = text_mask & (codes[:, :1] != ZERO_TOKEN)
    if logits is not None:
        logits, mask = undelay(logits.astype(mx.float32), cfg.delays[1:1 + cfg.dep_q])
        mask = mask & (codes[:, 1:1 + cfg.dep_q] != ZERO_TOKEN)
    else:
        logits = mx.zeros((B, 0, T, cfg.card))
        mask = mx.zeros((B, 0, T), dtype=mx.bool_)
    return ScoreOutput(logits, mask, text_logits, text_mask)
