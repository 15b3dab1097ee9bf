"""Token samplers: greedy, temperature with top-k or top-p, each with its own seeded key.

Mirrors `moshi.utils.sampling.sample_token`: softmax(logits / temp), then top-p if
top_p > 0, else top-k if top_k > 0, else the full distribution; greedy when sampling is
off or temp <= 0. Keys are split per call so a seed makes a run repeatable (a generator's
seed and temperatures come from the model config: see `generate.GenOptions`). Draws use the
Gumbel-max trick (argmax of logits / temp + Gumbel noise): few ops, and the noise of many
draws can be made at once (`noise` then `pick`), which a compiled step uses.
"""

from __future__ import annotations

import mlx.core as mx


class Sampler:
    def __init__(self, temp: float = 1.0, top_k: int = 0, top_p: float = 0.0,
                 use_sampling: bool = True, seed: int = 0, key: mx.array | None = None):
        self.temp = temp
        self.top_k = top_k
        self.top_p = top_p
        self.use_sampling = use_sampling and temp > 0
        self.key = mx.random.key(seed) if key is None else key

    def __call__(self, logits: mx.array) -> mx.array:
        """logits [..., V] -> tokens [...] (int32)."""
        tokens, self.key = self.sample(logits, self.key)
        return tokens

    def sample(self, logits: mx.array, key: mx.array) -> tuple[mx.array, mx.array]:
        """The pure form of `__call__`: (tokens int32, next key), `self` untouched; what a
        compiled step calls with the key as an input."""
        noise, key = self.noise(key, logits.shape)
        return self.pick(logits, noise).astype(mx.int32), key

    def noise(self, key: mx.array, shape: tuple[int, ...]) -> tuple[mx.array | None, mx.array]:
        """Gumbel noise for drawing from logits of `shape` [..., V] (None when greedy), and
        the next key. A leading axis draws the noise of several `pick`s at once."""
        if not self.use_sampling:
            return None, key
        key, sub = mx.random.split(key)
        return mx.random.gumbel((*shape[:-1], self._width(shape[-1])), key=sub), key

    def pick(self, logits: mx.array, noise: mx.array | None) -> mx.array:
        """Tokens [...] (uint32) from logits [..., V] (any float dtype; only what is drawn
        from is cast to float32) and `noise` from `noise`: the Gumbel-max trick,
        argmax(logits / temp + Gumbel) ~ softmax(logits / temp), over the top-k or top-p
        candidates."""
        if noise is None:
            return mx.argmax(logits, axis=-1)
        V = logits.shape[-1]
        if self.top_p > 0.0:
            order = mx.argsort(-logits, axis=-1)
            top = mx.take_along_axis(logits, order, axis=-1).astype(mx.float32) / self.temp
            probs = mx.softmax(top, axis=-1)
            keep = (mx.cumsum(probs, axis=-1) - probs) <= self.top_p  # as the reference:
            top = mx.where(keep, top, -mx.inf)  # drop where the mass before exceeds p
        elif self._width(V) < V:
            order = mx.argpartition(logits, kth=V - self.top_k, axis=-1)[..., V - self.top_k:]
            top = mx.take_along_axis(logits, order, axis=-1).astype(mx.float32) / self.temp
        else:
            return mx.argmax(logits.astype(mx.float32) / self.temp + noise, axis=-1)
        choice = mx.argmax(top + noise, axis=-1, keepdims=True)
        return mx.take_along_axis(order, choice, axis=-1)[..., 0]

    def _width(self, vocab: int) -> int:
        """How many candidates a draw is among: top-k, else the whole vocabulary."""
        if self.top_p <= 0.0 and 0 < self.top_k < vocab:
            return self.top_k
        return vocab
