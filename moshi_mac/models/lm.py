"""The MLX language model: temporal transformer, depformer and conditioners.

Mirrors `moshi.models.lm.LMModel` (PyTorch) with the parameter names of the official MLX
checkpoints: `text_emb`, `audio_embs.{k}`, `transformer.layers.{l}.*`, `out_norm`,
`text_linear`, `depformer.slices.{s}.{emb,linear_in,transformer,linear_out}` and
`condition_provider.conditioners.{name}.*`. Streaming state (KV caches) lives outside the
modules, in `LmState`, so one model can serve several sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..config import LmConfig, LutConditionerConfig
from .layers import KVCache, Transformer, dense, make_norm, pytorch_norm_eps

ZERO_TOKEN = -1  # "no input": a zero embedding (LMModel.zero_token_id)
UNGENERATED_TOKEN = -2  # "to be generated" (LMModel.ungenerated_token_id)


class _ZeroTokenEmbedding:
    """The rule both embeddings share: id -1 gives a zero vector. A subclass says how to
    get the rows of ids >= 0 (`lookup`) and what follows them (`project`)."""

    def __call__(self, ids: mx.array) -> mx.array:
        is_zero = (ids == ZERO_TOKEN)[..., None]
        y = self.lookup(mx.maximum(ids, 0))
        return self.project(mx.where(is_zero, mx.zeros((), dtype=y.dtype), y))


class ScaledEmbedding(_ZeroTokenEmbedding, nn.Module):
    """Embedding where id -1 gives a zero vector, optionally low-rank (then a linear)."""

    def __init__(self, num_embeddings: int, dim: int, low_rank: int | None = None):
        super().__init__()
        self.weight = mx.random.normal((num_embeddings, low_rank or dim)) * (low_rank or dim) ** -0.5
        self.low_rank = nn.Linear(low_rank, dim, bias=False) if low_rank else None

    def lookup(self, ids: mx.array) -> mx.array:
        """The rows of ids >= 0, before any low-rank projection."""
        return self.weight[ids]

    def project(self, y: mx.array) -> mx.array:
        return y if self.low_rank is None else dense(self.low_rank, y)

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine"):
        return QuantizedScaledEmbedding.from_embedding(self, group_size, bits, mode)


class QuantizedScaledEmbedding(_ZeroTokenEmbedding, nn.QuantizedEmbedding):
    """The quantized twin of `ScaledEmbedding` (same -1 handling; leaf, so no low rank)."""

    def lookup(self, ids: mx.array) -> mx.array:
        return nn.QuantizedEmbedding.__call__(self, ids)

    def project(self, y: mx.array) -> mx.array:
        return y

    @classmethod
    def from_embedding(cls, emb: ScaledEmbedding, group_size: int, bits: int, mode: str = "affine"):
        n, d = emb.weight.shape
        q = cls(n, d, group_size, bits, mode=mode)
        q.weight, q.scales, *rest = mx.quantize(emb.weight, group_size, bits, mode=mode)
        q.biases = rest[0] if rest else None
        return q


class LutConditioner(nn.Module):
    """`LUTConditioner` + `output_proj`: a label -> a vector added to every input step."""

    def __init__(self, cfg: LutConditionerConfig, output_dim: int):
        super().__init__()
        self.embed = nn.Embedding(cfg.n_bins + 1, cfg.dim)
        self.output_proj = nn.Linear(cfg.dim, output_dim, bias=False)
        self.learnt_padding = mx.zeros((1, 1, output_dim))
        self.possible_values = list(cfg.possible_values)

    def __call__(self, labels: list[str]) -> mx.array:
        for label in labels:
            if label not in self.possible_values:
                raise ValueError(f"{label!r} is not one of {self.possible_values}")
        idx = mx.array([self.possible_values.index(v) for v in labels])
        return self.output_proj(self.embed(idx).astype(mx.float32))  # [B, output_dim]


class ConditionProvider(nn.Module):
    def __init__(self, cfg: LmConfig):
        super().__init__()
        self.conditioners = {name: LutConditioner(c, cfg.transformer.d_model)
                             for name, c in cfg.conditioners.items()}

    def sum_condition(self, batch: list[dict[str, str]]) -> mx.array:
        """The fuser's "sum" of every conditioner, [B, 1, d_model], in float32."""
        total = None
        for name, cond in self.conditioners.items():
            v = cond([conds[name] for conds in batch])
            total = v if total is None else total + v
        return total[:, None, :]


class DepFormerSlice(nn.Module):
    def __init__(self, cfg: LmConfig, slice_idx: int):
        super().__init__()
        dep = cfg.depformer
        dim = dep.transformer.d_model
        vocab = cfg.text_in_vocab_size if slice_idx == 0 else cfg.audio_vocab_size
        self.emb = ScaledEmbedding(vocab, dim, dep.low_rank_embeddings)
        self.linear_in = nn.Linear(cfg.transformer.d_model, dim, bias=False)
        self.transformer = Transformer(dep.transformer, cfg.norm_eps,
                                       cfg.moshi_mac.rope_layout == "interleaved")
        norm = cfg.moshi_mac.depformer_norm
        self.out_norm = make_norm(norm, dim, pytorch_norm_eps(norm)) if norm else None
        self.linear_out = nn.Linear(dim, cfg.card, bias=cfg.moshi_mac.bias_proj)


class DepFormer(nn.Module):
    """Emits the generated audio codebooks one slice at a time within a step."""

    def __init__(self, cfg: LmConfig):
        super().__init__()
        self.slices = [DepFormerSlice(cfg, k) for k in range(cfg.dep_q)]

    def make_caches(self, batch: int, dtype=mx.float32) -> list[KVCache]:
        t = self.slices[0].transformer
        return t.make_caches(batch, capacity=len(self.slices), dtype=dtype)

    def slice_logits(self, k: int, transformer_out: mx.array, prev_token: mx.array,
                     caches: list[KVCache]) -> mx.array:
        """Logits of codebook k given the temporal output [B, T, D] and the previous token
        (text for k = 0) [B, T]. `caches` holds slices 0..k-1 of this step."""
        s = self.slices[k]
        x = s.linear_in(transformer_out) + s.emb(prev_token)
        x = s.transformer(x, offset=k, caches=caches)
        return self._head(s, x)

    @staticmethod
    def _head(s: DepFormerSlice, x: mx.array) -> mx.array:
        if s.out_norm is not None:
            x = s.out_norm(x)
        return dense(s.linear_out, x)

    def slice_step(self, k: int, transformer_out: mx.array, prev: mx.array,
                   kv: list | None) -> tuple[mx.array, list]:
        """One streaming step of slice k: transformer_out [rows, D], the previous token
        [rows] (text for k = 0; ids >= 0, any integer dtype) and the keys and values of
        slices 0..k-1 of this frame (None for k = 0) -> (logits [rows, card], kv with
        slice k's appended). No Python state, so it compiles (see `generate.LmGen`)."""
        s = self.slices[k]
        kv = kv or [None] * len(s.transformer.layers)
        x = dense(s.linear_in, transformer_out) + s.emb.project(s.emb.lookup(prev))
        x = s.transformer.add_positional(x, k)
        kv = list(kv)
        for i, layer in enumerate(s.transformer.layers):
            x, kv[i] = layer.step_append(x, k, kv[i])
        return self._head(s, x), kv


class Lm(nn.Module):
    def __init__(self, cfg: LmConfig):
        super().__init__()
        self.cfg = cfg
        t = cfg.transformer
        d = t.d_model
        self.text_emb = ScaledEmbedding(cfg.text_in_vocab_size, d)
        self.audio_embs = [ScaledEmbedding(cfg.audio_vocab_size, d) for _ in range(cfg.audio_codebooks)]
        self.transformer = Transformer(t, cfg.norm_eps, cfg.moshi_mac.rope_layout == "interleaved")
        self.out_norm = make_norm(t.norm, d, cfg.norm_eps)
        self.text_linear = nn.Linear(d, cfg.text_out_vocab_size, bias=cfg.moshi_mac.bias_proj)
        self.depformer = DepFormer(cfg) if cfg.dep_q > 0 else None
        self.condition_provider = ConditionProvider(cfg) if cfg.conditioners else None
        self.extra_heads = ([nn.Linear(d, cfg.extra_heads.dim, bias=False)
                             for _ in range(cfg.extra_heads.num_heads)] if cfg.extra_heads else [])

    # -- temporal transformer ------------------------------------------------------------
    def embed(self, tokens: mx.array, condition_sum: mx.array | None = None) -> mx.array:
        """tokens [B, 1 + n_q, T] (already delayed) -> summed input embeddings [B, T, d]
        (or [B, 1 + n_q] -> [B, d], one step)."""
        x = None
        for k, emb in enumerate(self.audio_embs):
            e = emb(tokens[:, 1 + k])
            x = e if x is None else x + e
        e = self.text_emb(tokens[:, 0])
        x = e if x is None else x + e
        if condition_sum is not None:
            x = x + condition_sum.astype(x.dtype)
        return x

    def embed_step(self, tokens: mx.array, condition_sum: mx.array | None = None) -> mx.array:
        """`embed` of one step, in fewer ops: tokens [B, 1 + n_q] -> [B, d] (the same sum,
        in the same order: audio codebooks, text, condition)."""
        B, K = tokens.shape
        ids = mx.split(mx.maximum(tokens, 0), K, axis=1)  # [B, 1] each
        keep = mx.split((tokens != ZERO_TOKEN)[..., None], K, axis=1)  # [B, 1, 1] each
        embs = list(enumerate(self.audio_embs, start=1)) + [(0, self.text_emb)]
        x = None
        for k, emb in embs:
            e = emb.project(emb.lookup(ids[k]) * keep[k])
            x = e if x is None else x + e
        if condition_sum is not None:
            x = x + condition_sum.astype(x.dtype)
        return x.reshape(B, -1)

    def forward_text(self, tokens: mx.array, offset: int = 0, caches: list[KVCache] | None = None,
                     condition_sum: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """Returns (transformer_out [B, T, d] after out_norm, text_logits [B, T, V])."""
        x = self.transformer(self.embed(tokens, condition_sum), offset=offset, caches=caches)
        x = self.out_norm(x)
        return x, self.text_linear(x)

    def step_text(self, tokens: mx.array, pos: mx.array, kv: list[mx.array], slots: mx.array,
                  condition_sum: mx.array | None = None) -> tuple[mx.array, mx.array, list[mx.array]]:
        """`forward_text` for one streaming step on ring KV caches (`Transformer.step`):
        tokens [B, 1 + n_q] -> (transformer_out [B, d], text_logits [B, V], kv)."""
        x, kv = self.transformer.step(self.embed_step(tokens, condition_sum), pos, kv, slots)
        x = self.out_norm(x)
        return x, dense(self.text_linear, x), kv

    def make_caches(self, batch: int, dtype=None) -> list[KVCache]:
        return self.transformer.make_caches(batch, dtype=dtype or self.dtype)

    @property
    def dtype(self):
        return self.out_norm.weight.dtype

    def conditions(self, batch: list[dict[str, str]]) -> mx.array | None:
        if self.condition_provider is None:
            return None
        return self.condition_provider.sum_condition(batch)


@dataclass
class LmState:
    """Streaming state of one generation session (see `generate.LmGen`)."""

    caches: list[KVCache]
    offset: int = 0
