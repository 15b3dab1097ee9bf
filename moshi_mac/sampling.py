"""Token samplers: greedy, temperature with top-k or top-p, each with its own seeded key.

Mirrors `moshi.utils.sampling.sample_token`: softmax(logits / temp), then top-p if
top_p > 0, else top-k if top_k > 0, else the full distribution; greedy when sampling is
off or temp <= 0. Keys are split per call so a seed makes a run repeatable.
"""

from __future__ import annotations

import os

import mlx.core as mx


class Sampler:
    def __init__(self, temp: float = 1.0, top_k: int = 0, top_p: float = 0.0,
                 use_sampling: bool = True, seed: int | None = None, key: mx.array | None = None):
        self.temp = temp
        self.top_k = top_k
        self.top_p = top_p
        self.use_sampling = use_sampling and temp > 0
        if key is None:
            key = mx.random.key(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
        self.key = key

    def _next_key(self) -> mx.array:
        self.key, sub = mx.random.split(self.key)
        return sub

    def __call__(self, logits: mx.array) -> mx.array:
        """logits [..., V] -> tokens [...] (int32)."""
        if not self.use_sampling:
            return mx.argmax(logits, axis=-1).astype(mx.int32)
        logits = logits.astype(mx.float32) / self.temp
        key = self._next_key()
        if self.top_p > 0.0:
            return _sample_top_p(logits, self.top_p, key)
        if self.top_k > 0 and self.top_k < logits.shape[-1]:
            return _sample_top_k(logits, self.top_k, key)
        return mx.random.categorical(logits, axis=-1, key=key).astype(mx.int32)


def _sample_top_k(logits: mx.array, k: int, key: mx.array) -> mx.array:
    idx = mx.argpartition(-logits, kth=k - 1, axis=-1)[..., :k]
    top = mx.take_along_axis(logits, idx, axis=-1)
    choice = mx.random.categorical(top, axis=-1, key=key)
    return mx.take_along_axis(idx, choice[..., None], axis=-1)[..., 0].astype(mx.int32)


def _sample_top_p(logits: mx.array, p: float, key: mx.array) -> mx.array:
    order = mx.argsort(-logits, axis=-1)
    sorted_logits = mx.take_along_axis(logits, order, axis=-1)
    probs = mx.softmax(sorted_logits, axis=-1)
    cum = mx.cumsum(probs, axis=-1)
    keep = (cum - probs) <= p  # as the reference: drop where the mass before exceeds p
    masked = mx.where(keep, sorted_logits, -mx.inf)
    choice = mx.random.categorical(masked, axis=-1, key=key)
    return mx.take_along_axis(order, choice[..., None], axis=-1)[..., 0].astype(mx.int32)
