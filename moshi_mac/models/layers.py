"""Transformer building blocks in MLX, faithful to the official PyTorch `moshi` modules.

Owns: norms, RoPE (interleaved and concat layouts) and sinusoidal embeddings, the ring
KV cache (plain arrays; a sliding window of `context` steps, like
`moshi.modules.transformer.RingKVCache`), attention with GQA and causal masking (one
forward path for teacher forcing and streaming), gated and plain MLPs, layer scale, the
`Transformer` stack, and `DensePlans`, the performance state of a generator (transposed
weight views, large matmuls split over CPU streams). Parameter names follow the official
MLX checkpoints. Every layer takes its linear layers' caller `mm` as an argument
(`plain_linear` or a `DensePlans`), so the model itself holds no performance state.
"""

from __future__ import annotations

import os
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..config import TransformerConfig

ACTIVATIONS = {
    "silu": nn.silu,
    "gelu": nn.gelu,  # exact (erf) GELU, as torch.nn.functional.gelu
    "relu": nn.relu,
    "sigmoid": mx.sigmoid,
    "tanh": mx.tanh,
}


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """`kind` in the Rust vocabulary (RmsNorm, LayerNorm) or PyTorch's (rms_norm, layer_norm...)."""
    k = kind.lower().replace("_", "").removesuffix("f32")
    if k == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    if k == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")


def pytorch_norm_eps(kind: str) -> float:
    """Epsilon of `moshi.modules.transformer.create_norm_fn` for a PyTorch norm name."""
    return 1e-8 if kind.endswith("_f32") else 1e-5


def sin_embedding(positions: mx.array, dim: int, max_period: float) -> mx.array:
    """`create_sin_embedding`: [T] positions -> [T, dim], cos then sin halves."""
    half = dim // 2
    adim = mx.arange(half, dtype=mx.float32)
    phase = positions.astype(mx.float32)[:, None] / (max_period ** (adim / (half - 1)))
    return mx.concatenate([mx.cos(phase), mx.sin(phase)], axis=-1)


Linear = Callable[[nn.Module, mx.array], mx.array]


def plain_linear(lin: nn.Module, x: mx.array) -> mx.array:
    """`lin(x)`: how the layers call a linear layer unless given a `DensePlans`."""
    return lin(x)


class _Dense:
    """A linear layer's weight, transposed once (an evaluated view: no copy), so a call is
    one matmul op and no transpose op; or, for a large matrix on the CPU backend, the
    same as `chunks` blocks of output rows spread round-robin over CPU streams (one
    thread each), whose results are concatenated. Views only: no weight memory."""

    def __init__(self, lin: nn.Module, streams: list, chunks: int = 1):
        self.weight = lin.weight
        self.bias = lin.get("bias")
        self.quant = None
        if "scales" in lin:  # nn.QuantizedLinear: quantized_matmul takes `transpose`
            self.quant = (lin.group_size, lin.bits, lin.mode)
            arrays = [lin.weight, lin.scales, lin.get("biases")]
        else:
            arrays = [lin.weight]
        rows = lin.weight.shape[0]
        bounds = [rows * i // chunks for i in range(chunks + 1)]
        self.parts = []
        for i in range(chunks):
            part = [None if a is None else (a[bounds[i]:bounds[i + 1]] if chunks > 1 else a)
                    for a in arrays]
            if self.quant is None:
                part[0] = part[0].T
            mx.eval([a for a in part if a is not None])
            self.parts.append((part, streams[i % len(streams)]))
        self.streams = min(chunks, len(streams))

    def __call__(self, x: mx.array) -> mx.array:
        outs = []
        for (w, *q), stream in self.parts:
            if self.quant is None:
                outs.append(mx.matmul(x, w, stream=stream))
            else:
                group, bits, mode = self.quant
                outs.append(mx.quantized_matmul(x, w, q[0], q[1], transpose=True, group_size=group,
                                                bits=bits, mode=mode, stream=stream))
        y = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=-1)
        return y if self.bias is None else y + self.bias


# Matrices with at least this many entries are split over the CPU streams (smaller ones
# lose more to the cross-stream sync than they gain), in blocks of at most CHUNK_ENTRIES:
# MLX's CPU matmul converts a 16-bit weight to a float32 temporary, and blocks bound it
# (64 MB each) for the largest matrices, which matters at the Moshi-7B shape.
SPLIT_MIN_ENTRIES = 1 << 20
CHUNK_ENTRIES = 1 << 24


def cpu_streams() -> list:
    """New CPU streams, one per core (at most 8), the default one first, when MLX computes
    on the CPU; else [None] (the default stream of the default device)."""
    if mx.default_device() != mx.cpu:
        return [None]
    n = max(1, min(8, os.cpu_count() or 1))
    return [mx.default_stream(mx.cpu)] + [mx.new_stream(mx.cpu) for _ in range(n - 1)]


class DensePlans:
    """The performance state of one generator (`generate.LmGen` holds one): the CPU
    streams and a `_Dense` plan for every linear layer of `model`, kept here, not on the
    model, which is left untouched. Called as `plans(lin, x)` where the layers take a
    `Linear`: the plan's matmul while `lin` still holds the weight the plan was made
    from, else `lin(x)`.

    `split`: spread matrices of at least `min_entries` entries over the CPU streams in
    blocks of at most `chunk_entries` (default: on the CPU backend with several cores);
    `n_split` says how many layers are split. Costs no weight memory (views only)."""

    def __init__(self, model: nn.Module, split: bool | None = None, *,
                 min_entries: int = SPLIT_MIN_ENTRIES, chunk_entries: int = CHUNK_ENTRIES):
        self.streams = cpu_streams() if split is not False else [None]
        self._plans: dict[int, _Dense] = {}
        for _, m in model.named_modules():
            if not isinstance(m, (nn.Linear, nn.QuantizedLinear)):
                continue
            rows, cols = m.weight.shape
            if "scales" in m:
                cols = cols * 32 // m.bits
            chunks = 1
            if rows * cols >= min_entries and len(self.streams) > 1:
                per_stream = -(-rows * cols // (len(self.streams) * chunk_entries))
                chunks = min(rows, len(self.streams) * per_stream)
            self._plans[id(m)] = _Dense(m, self.streams, chunks)
        self.n_split = sum(p.streams > 1 for p in self._plans.values())

    def __call__(self, lin: nn.Module, x: mx.array) -> mx.array:
        plan = self._plans.get(id(lin))
        if plan is None or plan.weight is not lin.weight:  # not planned, or new weights
            return lin(x)
        return plan(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-4):
        super().__init__()
        self.scale = mx.full((dim,), init)

    def __call__(self, x: mx.array) -> mx.array:
        return x * self.scale


# ---------------------------------------------------------------------------------------
# The ring KV cache: plain arrays [B, kv_heads, C, head_dim], slot = position % C
# ---------------------------------------------------------------------------------------

def ring_mask(pos, T: int, capacity: int, L: int, window: int) -> mx.array | None:
    """Which of the first `L` slots of a ring of `capacity` slots each of the `T` queries
    at positions pos .. pos + T - 1 attends to, once their keys are written: [T, L] bool,
    or None when every one of the L slots is visible to the query (decided only for a
    Python int `pos`). Slot s holds the latest position p <= pos + T - 1 with p % C == s
    (none yet when p < 0); query q sees it when 0 <= q - p < window (the causal sliding
    window of the reference's RingKVCache)."""
    if isinstance(pos, int) and T == 1 and pos < min(capacity, window) and L == pos + 1:
        return None
    last = pos + T - 1
    held = last - (last - mx.arange(L)) % capacity
    diff = (pos + mx.arange(T))[:, None] - held[None, :]
    return (held >= 0) & (diff >= 0) & (diff < window)


def ring_write(ring: mx.array, new: mx.array, pos) -> mx.array:
    """`ring` [B, H, C, D] with new [B, H, T, D] written at slots (pos + t) % C."""
    C, T = ring.shape[2], new.shape[2]
    if T == 1:
        slot = pos % C
        slot = slot.reshape(1) if isinstance(slot, mx.array) else mx.array([slot])
        return mx.slice_update(ring, new, slot, axes=(2,))
    idx = ((pos + mx.arange(T)) % C)[None, None, :, None]
    return mx.put_along_axis(ring, mx.broadcast_to(idx, new.shape), new, axis=2)


class Attention(nn.Module):
    """Self-attention with a fused in_proj ([q; k; v]), optional RoPE and GQA, on a ring
    KV cache: the one forward path of teacher-forced scoring (T steps at once on a ring
    that holds them all) and of streaming (one step on a ring of `context` slots)."""

    def __init__(self, cfg: TransformerConfig, rope_traditional: bool):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        out_dim = cfg.d_model + 2 * self.num_kv_heads * self.head_dim
        self.in_proj = nn.Linear(cfg.d_model, out_dim, bias=cfg.bias_attn)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias_attn)
        self.scale = self.head_dim ** -0.5
        self.use_rope = cfg.positional_embedding == "Rope"
        self.rope_traditional = rope_traditional
        self.rope_base = float(cfg.max_period)

    def _rope(self, q: mx.array, k: mx.array, offset) -> tuple[mx.array, mx.array]:
        """RoPE (if any) on q and k [B, heads, T, D] from `offset` (an int or an array)."""
        if not self.use_rope:
            return q, k
        return tuple(mx.fast.rope(a, self.head_dim, traditional=self.rope_traditional,
                                  base=self.rope_base, scale=1.0, offset=offset) for a in (q, k))

    def __call__(self, x: mx.array, pos, keys: mx.array, values: mx.array, mask, L: int,
                 mm: Linear = plain_linear) -> tuple[mx.array, mx.array, mx.array]:
        """x [B, T, d] at positions pos .. pos + T - 1 (`pos` an int or an int32 scalar
        array); keys, values: the ring [B, Hkv, C, D]; the queries attend to its first
        `L` slots under `mask` (see `ring_mask`). Returns (out [B, T, d], keys, values)
        with this step's keys (after RoPE) and values written."""
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = mm(self.in_proj, x)
        if T == 1:  # the same layout, without the transpose op
            qkv = qkv.reshape(B, H + 2 * Hkv, 1, D)
        else:
            qkv = qkv.reshape(B, T, H + 2 * Hkv, D).transpose(0, 2, 1, 3)
        q, k, v = mx.split(qkv, [H, H + Hkv], axis=1)
        q, k = self._rope(q, k, pos)
        keys, values = ring_write(keys, k, pos), ring_write(values, v, pos)
        k, v = (keys, values) if L == keys.shape[2] else (keys[:, :, :L], values[:, :, :L])
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        out = out.reshape(B, H * D) if T == 1 else out.transpose(0, 2, 1, 3).reshape(B, T, H * D)
        return mm(self.out_proj, out).reshape(B, T, -1), keys, values


class GatedMlp(nn.Module):
    """`ActivationGating`: linear_in to 2 * hidden, act(first half) * second half."""

    def __init__(self, d_model: int, hidden: int, activation: str, bias: bool):
        super().__init__()
        self.linear_in = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.linear_out = nn.Linear(hidden, d_model, bias=bias)
        self.activation = activation

    def __call__(self, x: mx.array, mm: Linear = plain_linear) -> mx.array:
        a, b = mx.split(mm(self.linear_in, x), 2, axis=-1)
        return mm(self.linear_out, ACTIVATIONS[self.activation](a) * b)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, norm_eps: float, rope_traditional: bool):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.d_model, norm_eps)
        self.norm2 = make_norm(cfg.norm, cfg.d_model, norm_eps)
        self.self_attn = Attention(cfg, rope_traditional)
        if cfg.gating is None:
            self.gating = None
            self.linear1 = nn.Linear(cfg.d_model, cfg.dim_feedforward, bias=cfg.bias_ff)
            self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.d_model, bias=cfg.bias_ff)
        else:
            self.gating = GatedMlp(cfg.d_model, cfg.mlp_hidden, cfg.gating, cfg.bias_ff)
        if cfg.layer_scale is not None:
            self.layer_scale_1 = LayerScale(cfg.d_model, cfg.layer_scale)
            self.layer_scale_2 = LayerScale(cfg.d_model, cfg.layer_scale)
        else:
            self.layer_scale_1 = self.layer_scale_2 = None

    def _mlp(self, x: mx.array, mm: Linear) -> mx.array:
        if self.gating is not None:
            return self.gating(x, mm)
        return mm(self.linear2, nn.gelu(mm(self.linear1, x)))

    def __call__(self, x: mx.array, pos, keys: mx.array, values: mx.array, mask, L: int,
                 mm: Linear = plain_linear) -> tuple[mx.array, mx.array, mx.array]:
        """`Attention.__call__` inside the layer: returns (x, keys, values)."""
        update, keys, values = self.self_attn(self.norm1(x), pos, keys, values, mask, L, mm)
        if self.layer_scale_1 is not None:
            update = self.layer_scale_1(update)
        x = x + update
        update = self._mlp(self.norm2(x), mm)
        if self.layer_scale_2 is not None:
            update = self.layer_scale_2(update)
        return x + update, keys, values


class Transformer(nn.Module):
    """A stack of layers on ring KV caches (see `Attention`)."""

    def __init__(self, cfg: TransformerConfig, norm_eps: float, rope_traditional: bool):
        super().__init__()
        self.cfg = cfg
        self.layers = [TransformerLayer(cfg, norm_eps, rope_traditional)
                       for _ in range(cfg.num_layers)]

    def add_positional(self, x: mx.array, offset) -> mx.array:
        """Sinusoidal positions for x [B, T, C] from `offset` (an int or an int32 scalar)."""
        if self.cfg.positional_embedding != "Sin":
            return x
        emb = sin_embedding(mx.arange(x.shape[1]) + offset, x.shape[-1], self.cfg.max_period)
        return x + emb.astype(x.dtype)

    def __call__(self, x: mx.array, pos, kv: list[mx.array], slots: mx.array | None = None,
                 mm: Linear = plain_linear) -> tuple[mx.array, list[mx.array]]:
        """x [B, T, d] at positions pos .. pos + T - 1; kv: the rings [keys_0, values_0,
        keys_1, ...] of `make_ring`, each of C slots. Attends to the first L slots:
        L = len(slots) (L >= min(pos + T, C); unfilled slots are masked, so any such L
        gives the same output), else min(pos + T, C) for an int `pos`, else C. Once the
        ring has wrapped, T > 1 steps at once must fit in C - context + 1 slots (a slot
        overwritten by this write may still be seen by an earlier query of the same
        write). Returns (x, updated kv)."""
        T, C, window = x.shape[1], kv[0].shape[2], self.cfg.context
        if slots is not None:
            L = slots.shape[0]
        else:
            L = min(pos + T, C) if isinstance(pos, int) else C
        if T > 1 and (not isinstance(pos, int) or (pos + T > C and T > C - window + 1)):
            raise ValueError(f"cannot write {T} steps at once at position {pos} into a ring "
                             f"of {C} slots with a {window}-step window")
        mask = ring_mask(pos, T, C, L, window) if self.cfg.causal else None
        x = self.add_positional(x, pos)
        out = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, pos, kv[2 * i], kv[2 * i + 1], mask, L, mm)
            out += [k, v]
        return x, out

    def make_ring(self, batch: int, dtype, capacity: int | None = None) -> list[mx.array]:
        """Zeroed ring KV caches, allocated once: [keys_0, values_0, ...], each
        [batch, kv_heads, capacity (default: the context), head_dim]."""
        cap = self.cfg.context if capacity is None else capacity
        shape = (batch, self.cfg.num_kv_heads, cap, self.cfg.head_dim)
        return [mx.zeros(shape, dtype=dtype) for _ in range(2 * len(self.layers))]
