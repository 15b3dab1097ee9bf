"""Transformer building blocks in MLX, faithful to the official PyTorch `moshi` modules.

Owns: norms, RoPE (interleaved and concat layouts) and sinusoidal embeddings, the ring
KV cache (sliding window of `context` steps, like `moshi.modules.transformer.RingKVCache`),
attention with GQA and causal masking, gated and plain MLPs, layer scale, and the
`Transformer` stack. Parameter names follow the official MLX checkpoints.
"""

from __future__ import annotations

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


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-4):
        super().__init__()
        self.scale = mx.full((dim,), init)

    def __call__(self, x: mx.array) -> mx.array:
        return x * self.scale


class KVCache:
    """Ring KV cache holding the last `capacity` steps, as the reference's RingKVCache.

    Keys are stored after RoPE, so attention is position-correct whatever the slot order.
    `offset` is the number of steps written so far (the position of the next one).
    """

    def __init__(self, batch: int, n_kv_heads: int, head_dim: int, capacity: int, dtype):
        self.capacity = capacity
        self.shape = (batch, n_kv_heads, capacity, head_dim)
        self.dtype = dtype
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def reset(self) -> None:
        self.offset = 0

    def state(self) -> list[mx.array]:
        return [] if self.keys is None else [self.keys, self.values]

    def update(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array, mx.array | None]:
        """Write T new steps; return keys, values and a boolean mask [T, S] (or None when
        every returned key is visible to every query)."""
        T = k.shape[2]
        C = self.capacity
        if self.keys is None:
            self.keys = mx.zeros(self.shape, dtype=k.dtype)
            self.values = mx.zeros(self.shape, dtype=v.dtype)
        start = self.offset
        end = start + T
        if T > C:
            raise ValueError(f"cannot feed {T} steps at once into a KV cache of {C} steps")
        s = start % C
        if s + T <= C:
            self.keys[:, :, s:s + T] = k
            self.values[:, :, s:s + T] = v
        else:  # wraps around the ring
            n = C - s
            self.keys[:, :, s:] = k[:, :, :n]
            self.values[:, :, s:] = v[:, :, :n]
            self.keys[:, :, :T - n] = k[:, :, n:]
            self.values[:, :, :T - n] = v[:, :, n:]
        self.offset = end
        if end <= C:  # not wrapped yet: the first `end` slots hold positions 0..end-1
            keys, values = self.keys[:, :, :end], self.values[:, :, :end]
            if T == 1:
                return keys, values, None
            pos_k = mx.arange(end)
        else:
            keys, values = self.keys, self.values
            if T == 1:  # every slot holds one of the last C positions: all visible
                return keys, values, None
            slots = mx.arange(C)
            last = end - 1
            end_slot = last % C
            delta = slots - end_slot
            pos_k = mx.where(delta <= 0, last + delta, last + delta - C)
        pos_q = mx.arange(start, end)
        diff = pos_q[:, None] - pos_k[None, :]
        mask = (pos_k[None, :] >= 0) & (diff >= 0) & (diff < C)
        return keys, values, mask


class Attention(nn.Module):
    """Self-attention with a fused in_proj ([q; k; v]), optional RoPE and GQA."""

    def __init__(self, cfg: TransformerConfig, rope_traditional: bool):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.context = cfg.context
        self.causal = cfg.causal
        out_dim = cfg.d_model + 2 * self.num_kv_heads * self.head_dim
        self.in_proj = nn.Linear(cfg.d_model, out_dim, bias=cfg.bias_attn)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias_attn)
        self.scale = self.head_dim ** -0.5
        self.use_rope = cfg.positional_embedding == "Rope"
        self.rope_traditional = rope_traditional
        self.rope_base = float(cfg.max_period)

    def __call__(self, x: mx.array, offset: int, cache: KVCache | None) -> mx.array:
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.in_proj(x)
        q = qkv[..., : H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3)
        kv = qkv[..., H * D:].reshape(B, T, 2, Hkv, D)
        k = kv[:, :, 0].transpose(0, 2, 1, 3)
        v = kv[:, :, 1].transpose(0, 2, 1, 3)
        if self.use_rope:
            q = mx.fast.rope(q, D, traditional=self.rope_traditional, base=self.rope_base,
                             scale=1.0, offset=offset)
            k = mx.fast.rope(k, D, traditional=self.rope_traditional, base=self.rope_base,
                             scale=1.0, offset=offset)
        if cache is not None:
            k, v, mask = cache.update(k, v)
        else:
            mask = None
            if self.causal and T > 1:
                pos = mx.arange(T)
                diff = pos[:, None] - pos[None, :]
                mask = (diff >= 0) & (diff < self.context)
        if mask is not None and not self.causal:
            mask = None
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        out = out.transpose(0, 2, 1, 3).reshape(B, T, H * D)
        return self.out_proj(out)


class GatedMlp(nn.Module):
    """`ActivationGating`: linear_in to 2 * hidden, act(first half) * second half."""

    def __init__(self, d_model: int, hidden: int, activation: str, bias: bool):
        super().__init__()
        self.linear_in = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.linear_out = nn.Linear(hidden, d_model, bias=bias)
        self.activation = activation

    def __call__(self, x: mx.array) -> mx.array:
        h = self.linear_in(x)
        h = h.reshape(*h.shape[:-1], 2, -1)
        return self.linear_out(ACTIVATIONS[self.activation](h[..., 0, :]) * h[..., 1, :])


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

    def _mlp(self, x: mx.array) -> mx.array:
        if self.gating is not None:
            return self.gating(x)
        return self.linear2(nn.gelu(self.linear1(x)))

    def __call__(self, x: mx.array, offset: int, cache: KVCache | None) -> mx.array:
        update = self.self_attn(self.norm1(x), offset, cache)
        if self.layer_scale_1 is not None:
            update = self.layer_scale_1(update)
        x = x + update
        update = self._mlp(self.norm2(x))
        if self.layer_scale_2 is not None:
            update = self.layer_scale_2(update)
        return x + update


class Transformer(nn.Module):
    """A stack of layers; `offset` is the position of the first input step."""

    def __init__(self, cfg: TransformerConfig, norm_eps: float, rope_traditional: bool):
        super().__init__()
        self.cfg = cfg
        self.layers = [TransformerLayer(cfg, norm_eps, rope_traditional)
                       for _ in range(cfg.num_layers)]

    def add_positional(self, x: mx.array, offset: int) -> mx.array:
        if self.cfg.positional_embedding != "Sin":
            return x
        T, C = x.shape[1], x.shape[2]
        pos = mx.arange(offset, offset + T)
        return x + sin_embedding(pos, C, self.cfg.max_period).astype(x.dtype)

    def __call__(self, x: mx.array, offset: int = 0,
                 caches: list[KVCache] | None = None) -> mx.array:
        x = self.add_positional(x, offset)
        for i, layer in enumerate(self.layers):
            x = layer(x, offset, None if caches is None else caches[i])
        return x

    def make_caches(self, batch: int, capacity: int | None = None, dtype=mx.float32) -> list[KVCache]:
        cap = self.cfg.context if capacity is None else capacity
        return [KVCache(batch, self.cfg.num_kv_heads, self.cfg.head_dim, cap, dtype)
                for _ in self.layers]
