"""The MLX language model: temporal transformer, depformer and conditioners.

Mirrors `moshi.models.lm.LMModel` (PyTorch) with the parameter names of the official MLX
checkpoints: `text_emb`, `audio_embs.{k}`, `transformer.layers.{l}.*`, `out_norm`,
`text_linear`, `depformer.slices.{s}.{emb,linear_in,transformer,linear_out}` and
`condition_provider.conditioners.{name}.*`. The modules hold no state: the KV caches are
arrays that the caller passes in and gets back (`generate.LmGen` for streaming,
`scoring.score` for teacher forcing, on the same forward path), so one model can serve
several sessions.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..config import LmConfig, LutConditionerConfig
from .layers import Linear, Transformer, make_norm, plain_linear, pytorch_norm_eps

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

    def project(self, y: mx.array, mm: Linear = plain_linear) -> mx.array:
        return y if self.low_rank is None else mm(self.low_rank, y)

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine"):
        return QuantizedScaledEmbedding.from_embedding(self, group_size, bits, mode)


class QuantizedScaledEmbedding(_ZeroTokenEmbedding, nn.QuantizedEmbedding):
    """The quantized twin of `ScaledEmbedding` (same -1 handling; leaf, so no low rank)."""

    def lookup(self, ids: mx.array) -> mx.array:
        return nn.QuantizedEmbedding.__call__(self, ids)

    def project(self, y: mx.array, mm: Linear = plain_linear) -> mx.array:
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

    def _head(self, s: DepFormerSlice, x: mx.array, mm: Linear) -> mx.array:
        if s.out_norm is not None:
            x = s.out_norm(x)
        return mm(s.linear_out, x)

    def slice_step(self, k: int, transformer_out: mx.array, prev: mx.array,
                   kv: list[mx.array] | None, mm: Linear = plain_linear,
                   zero_tokens: bool = False) -> tuple[mx.array, list[mx.array]]:
        """Slice k for every row: transformer_out [rows, D], the previous token [rows]
        (text for k = 0; ids >= 0 unless `zero_tokens`, then -1 gives a zero embedding)
        and the ring KV caches of slices 0..k-1 of this frame (None for k = 0: a ring of
        dep_q slots is made) -> (logits [rows, card], kv with slice k's written). The one
        path of streaming (`generate.LmGen`, compiled) and teacher forcing (`scoring`,
        every frame a row)."""
        s = self.slices[k]
        if kv is None:
            kv = s.transformer.make_ring(prev.shape[0], transformer_out.dtype, len(self.slices))
        e = s.emb(prev) if zero_tokens else s.emb.project(s.emb.lookup(prev), mm)
        x = mm(s.linear_in, transformer_out) + e
        x, kv = s.transformer(x[:, None], k, kv, None, mm)
        return self._head(s, x[:, 0], mm), kv


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
    def embed(self, tokens: mx.array, condition_sum: mx.array | None = None,
              mm: Linear = plain_linear) -> mx.array:
        """tokens [B, 1 + n_q, T] (already delayed; -1: a zero embedding) -> the summed
        input embeddings [B, T, d]: audio codebooks, then text, then the condition."""
        B, K, T = tokens.shape
        ids = mx.split(mx.maximum(tokens, 0), K, axis=1)  # [B, 1, T] each
        keep = mx.split((tokens != ZERO_TOKEN)[..., None], K, axis=1)  # [B, 1, T, 1] each
        embs = list(enumerate(self.audio_embs, start=1)) + [(0, self.text_emb)]
        x = None
        for k, emb in embs:
            e = emb.project(emb.lookup(ids[k]) * keep[k], mm)
            x = e if x is None else x + e
        x = x.reshape(B, T, -1)
        if condition_sum is not None:
            x = x + condition_sum.astype(x.dtype)
        return x

    def forward(self, tokens: mx.array, pos, kv: list[mx.array], slots: mx.array | None = None,
                condition_sum: mx.array | None = None,
                mm: Linear = plain_linear) -> tuple[mx.array, mx.array, list[mx.array]]:
        """The temporal transformer on tokens [B, 1 + n_q, T] at positions pos .. pos + T - 1
        with ring KV caches `kv` (see `Transformer.__call__`) -> (transformer_out [B, T, d]
        after out_norm, text_logits [B, T, V], kv). Teacher forcing and streaming (T = 1)
        both come here."""
        x, kv = self.transformer(self.embed(tokens, condition_sum, mm), pos, kv, slots, mm)
        x = self.out_norm(x)
        return x, mm(self.text_linear, x), kv

    def forward_text(self, tokens: mx.array, condition_sum: mx.array | None = None
                     ) -> tuple[mx.array, mx.array]:
        """`forward` teacher-forced from position 0 on a ring that holds all T steps:
        tokens [B, 1 + n_q, T] -> (transformer_out [B, T, d], text_logits [B, T, V])."""
        B, _, T = tokens.shape
        ring = self.transformer.make_ring(B, self.dtype, capacity=T)
        out, logits, _ = self.forward(tokens, 0, ring, condition_sum=condition_sum)
        return out, logits

    @property
    def dtype(self):
        return self.out_norm.weight.dtype

    def conditions(self, batch: list[dict[str, str]]) -> mx.array | None:
        if self.condition_provider is None:
            return None
        return self.condition_provider.sum_condition(batch)

