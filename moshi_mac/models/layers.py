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


def dense(lin: nn.Module, x: mx.array) -> mx.array:
    """`lin(x)` for an nn.Linear or nn.QuantizedLinear, through the plan `prepare_dense`
    made for it if it still holds the same weight."""
    plan = lin.__dict__.get("_dense")
    if plan is None:
        return lin(x)
    if plan.weight is not lin.weight:  # new weights: drop the views that pin the old ones
        del lin.__dict__["_dense"]
        return lin(x)
    return plan(x)


# Matrices with at least this many entries are split over the CPU streams (smaller ones
# lose more to the cross-stream sync than they gain), in blocks of at most CHUNK_ENTRIES:
# MLX's CPU matmul converts a 16-bit weight to a float32 temporary, and blocks bound it
# (64 MB each) for the largest matrices, which matters at the Moshi-7B shape.
SPLIT_MIN_ENTRIES = 1 << 20
CHUNK_ENTRIES = 1 << 24


def cpu_streams() -> list:
    """One CPU stream per core (at most 8) when MLX computes on the CPU, else [None]."""
    global _STREAMS
    if mx.default_device() != mx.cpu:
        return [None]
    if _STREAMS is None:
        import os

        n = max(1, min(8, os.cpu_count() or 1))
        _STREAMS = [mx.default_stream(mx.cpu)] + [mx.new_stream(mx.cpu) for _ in range(n - 1)]
    return _STREAMS


_STREAMS: list | None = None


def prepare_dense(model: nn.Module, split: bool | None = None, *,
                  min_entries: int = SPLIT_MIN_ENTRIES, chunk_entries: int = CHUNK_ENTRIES) -> int:
    """Give every linear layer of `model` its `_Dense` plan (see there); `split`: spread
    matrices of at least `min_entries` over the CPU streams in blocks of at most
    `chunk_entries` (default: on the CPU backend with several cores). Returns how many
    layers are split. A layer keeps the plan it has while its weight is the same (the
    first call decides); costs no weight memory."""
    streams = cpu_streams()
    if split is False:
        streams = streams[:1]
    n_split = 0
    for _, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.QuantizedLinear)):
            continue
        plan = m.__dict__.get("_dense")
        if plan is not None and plan.weight is m.weight:
            n_split += plan.streams > 1
            continue
        rows, cols = m.weight.shape
        if "scales" in m:
            cols = cols * 32 // m.bits
        chunks = 1
        if rows * cols >= min_entries and len(streams) > 1:
            per_stream = -(-rows * cols // (len(streams) * chunk_entries))
            chunks = min(rows, len(streams) * per_stream)
        plan = _Dense(m, streams, chunks)
        object.__setattr__(m, "_dense", plan)
        n_split += plan.streams > 1
    return n_split


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

    def _rope(self, q: mx.array, k: mx.array, offset) -> tuple[mx.array, mx.array]:
        """RoPE (if any) on q and k [B, heads, T, D] from `offset` (an int or an array)."""
        if not self.use_rope:
            return q, k
        return tuple(mx.fast.rope(a, self.head_dim, traditional=self.rope_traditional,
                                  base=self.rope_base, scale=1.0, offset=offset) for a in (q, k))

    def __call__(self, x: mx.array, offset: int, cache: KVCache | None) -> mx.array:
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.in_proj(x)
        q = qkv[..., : H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3)
        kv = qkv[..., H * D:].reshape(B, T, 2, Hkv, D)
        k = kv[:, :, 0].transpose(0, 2, 1, 3)
        v = kv[:, :, 1].transpose(0, 2, 1, 3)
        q, k = self._rope(q, k, offset)
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

    # -- streaming steps: one position, activations [B, d] (no Python state: they compile) --
    def _qkv_step(self, x: mx.array, offset) -> tuple[mx.array, mx.array, mx.array]:
        """x [B, d] -> q [B, H, 1, D], k, v [B, Hkv, 1, D], RoPE at `offset` (int or array)."""
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = dense(self.in_proj, x).reshape(x.shape[0], H + 2 * Hkv, 1, D)
        q, k, v = mx.split(qkv, [H, H + Hkv], axis=1)
        q, k = self._rope(q, k, offset)
        return q, k, v

    def _attend_step(self, q: mx.array, k: mx.array, v: mx.array, mask) -> mx.array:
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return dense(self.out_proj, out.reshape(q.shape[0], -1))

    def step(self, x: mx.array, pos: mx.array, keys: mx.array, values: mx.array,
             slots: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """One streaming step on a preallocated ring.

        x [B, d]; pos: this step's position, an int32 scalar array; keys, values
        [B, Hkv, C, D]: the ring, slot = position % C; slots: `arange(L)`, the first L <= C
        slots to attend to, L >= min(pos + 1, C). Unfilled slots are masked, so the output
        equals `__call__` with a `KVCache` for any L. Returns (out [B, d], keys, values)."""
        q, k, v = self._qkv_step(x, pos)
        slot = (pos % keys.shape[2]).reshape(1)
        keys = mx.slice_update(keys, k, slot, axes=(2,))
        values = mx.slice_update(values, v, slot, axes=(2,))
        L = slots.shape[0]
        if L < keys.shape[2]:
            k, v = keys[:, :, :L], values[:, :, :L]
        else:
            k, v = keys, values
        return self._attend_step(q, k, v, slots <= pos), keys, values

    def step_append(self, x: mx.array, offset: int,
                    kv: tuple[mx.array, mx.array] | None) -> tuple[mx.array, tuple[mx.array, mx.array]]:
        """One step attending to every earlier step of `kv` (the depformer within a frame):
        x [B, d]; returns (out [B, d], kv with this step appended)."""
        q, k, v = self._qkv_step(x, offset)
        if kv is not None:
            k = mx.concatenate([kv[0], k], axis=2)
            v = mx.concatenate([kv[1], v], axis=2)
        return self._attend_step(q, k, v, None), (k, v)


class GatedMlp(nn.Module):
    """`ActivationGating`: linear_in to 2 * hidden, act(first half) * second half."""

    def __init__(self, d_model: int, hidden: int, activation: str, bias: bool):
        super().__init__()
        self.linear_in = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.linear_out = nn.Linear(hidden, d_model, bias=bias)
        self.activation = activation

    def __call__(self, x: mx.array) -> mx.array:
        a, b = mx.split(dense(self.linear_in, x), 2, axis=-1)
        return dense(self.linear_out, ACTIVATIONS[self.activation](a) * b)


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
        return dense(self.linear2, nn.gelu(dense(self.linear1, x)))

    def _residual(self, x: mx.array, attn_update: mx.array) -> mx.array:
        """Everything after the attention: layer scale, residuals and the MLP."""
        if self.layer_scale_1 is not None:
            attn_update = self.layer_scale_1(attn_update)
        x = x + attn_update
        update = self._mlp(self.norm2(x))
        if self.layer_scale_2 is not None:
            update = self.layer_scale_2(update)
        return x + update

    def __call__(self, x: mx.array, offset: int, cache: KVCache | None) -> mx.array:
        return self._residual(x, self.self_attn(self.norm1(x), offset, cache))

    def step(self, x: mx.array, pos: mx.array, keys: mx.array, values: mx.array,
             slots: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """`Attention.step` inside the layer: returns (x, keys, values)."""
        update, keys, values = self.self_attn.step(self.norm1(x), pos, keys, values, slots)
        return self._residual(x, update), keys, values

    def step_append(self, x: mx.array, offset: int, kv):
        update, kv = self.self_attn.step_append(self.norm1(x), offset, kv)
        return self._residual(x, update), kv


class Transformer(nn.Module):
    """A stack of layers; `offset` is the position of the first input step."""

    def __init__(self, cfg: TransformerConfig, norm_eps: float, rope_traditional: bool):
        super().__init__()
        self.cfg = cfg
        self.layers = [TransformerLayer(cfg, norm_eps, rope_traditional)
                       for _ in range(cfg.num_layers)]

    def add_positional(self, x: mx.array, offset) -> mx.array:
        """Sinusoidal positions for x [B, T, C] from `offset`, or for x [B, C] (one step)
        at `offset`; `offset` is an int or an int32 scalar array."""
        if self.cfg.positional_embedding != "Sin":
            return x
        T = x.shape[1] if x.ndim == 3 else 1
        emb = sin_embedding(mx.arange(T) + offset, x.shape[-1], self.cfg.max_period)
        return x + emb.astype(x.dtype)

    def __call__(self, x: mx.array, offset: int = 0,
                 caches: list[KVCache] | None = None) -> mx.array:
        x = self.add_positional(x, offset)
        for i, layer in enumerate(self.layers):
            x = layer(x, offset, None if caches is None else caches[i])
        return x

    def step(self, x: mx.array, pos: mx.array, kv: list[mx.array],
             slots: mx.array) -> tuple[mx.array, list[mx.array]]:
        """One streaming step (see `Attention.step`) of x [B, d]; kv is [keys_0, values_0,
        keys_1, ...] as made by `make_ring`. Returns (x, updated kv)."""
        x = self.add_positional(x, pos)
        out = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer.step(x, pos, kv[2 * i], kv[2 * i + 1], slots)
            out += [k, v]
        return x, out

    def make_ring(self, batch: int, dtype, capacity: int | None = None) -> list[mx.array]:
        """Zeroed ring KV caches for `step`, allocated once: [keys_0, values_0, ...]."""
        cap = self.cfg.context if capacity is None else capacity
        shape = (batch, self.cfg.num_kv_heads, cap, self.cfg.head_dim)
        return [mx.zeros(shape, dtype=dtype) for _ in range(2 * len(self.layers))]

    def make_caches(self, batch: int, capacity: int | None = None, dtype=mx.float32) -> list[KVCache]:
        cap = self.cfg.context if capacity is None else capacity
        return [KVCache(batch, self.cfg.num_kv_heads, self.cfg.head_dim, cap, dtype)
                for _ in self.layers]
