"""Streaming generation: the MLX twin of `moshi.models.lm.LMGen`.

Each `step` takes the user stream's audio codes for one 80 ms frame and returns, once the
delays are filled, the text token and the generated audio codebooks of an earlier frame
(un-delayed), exactly as the reference does. Classifier-free guidance runs a
[condition, unconditioned] batch and mixes `uncond + cfg * (cond - uncond)` for the text
and every depformer slice. Text and audio have separate seeded samplers.

Nothing here forces a device sync: tokens come back as lazy `mx.array`s, so callers can
`mx.async_eval` a step while preparing the next.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mlx.core as mx

from .config import GenerationConfig
from .models.lm import UNGENERATED_TOKEN, Lm
from .sampling import Sampler
from .scoring import initial_tokens


@dataclass
class GenOptions:
    """Sampling options; `None` fields take the model config's defaults."""

    temp: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    temp_text: float | None = None
    top_k_text: int | None = None
    top_p_text: float | None = None
    cfg_coef: float | None = None
    greedy: bool = False
    seed: int | None = None

    def resolve(self, gen: GenerationConfig) -> "GenOptions":
        out = GenOptions(greedy=self.greedy, seed=self.seed)
        for name in ("temp", "top_k", "top_p", "temp_text", "top_k_text", "top_p_text", "cfg_coef"):
            v = getattr(self, name)
            setattr(out, name, getattr(gen, name) if v is None else v)
        return out


class LmGen:
    def __init__(self, model: Lm, batch_size: int = 1, options: GenOptions | None = None,
                 conditions: dict[str, str] | None = None, check: bool = False):
        cfg = model.cfg
        self.model = model
        self.cfg = cfg
        self.batch_size = batch_size
        self.opts = (options or GenOptions()).resolve(cfg.moshi_mac.generation)
        self.check = check
        # Two independent streams of randomness from one seed (seed s and s + 1 share none).
        seed = self.opts.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        text_key, audio_key = mx.random.split(mx.random.key(seed))
        self.text_sampler = Sampler(self.opts.temp_text, self.opts.top_k_text, self.opts.top_p_text,
                                    not self.opts.greedy, key=text_key)
        self.audio_sampler = Sampler(self.opts.temp, self.opts.top_k, self.opts.top_p,
                                     not self.opts.greedy, key=audio_key)
        self.delays = list(cfg.delays)
        self.max_delay = max(self.delays)
        self.dep_q = cfg.dep_q
        self.cfg_coef = float(self.opts.cfg_coef)
        self.use_cfg = self.cfg_coef != 1.0
        gen = cfg.moshi_mac.generation
        cond = dict(gen.conditions, **(conditions or {}))
        if model.condition_provider is not None:
            rows = [cond] * batch_size
            if self.use_cfg:
                rows += [dict(cond, **gen.cfg_conditions)] * batch_size
            self.condition_sum = model.conditions(rows)
        else:
            if self.use_cfg:
                raise ValueError("CFG needs a model with a conditioner (cfg_coef must be 1)")
            self.condition_sum = None
        self.initial = mx.array(initial_tokens(model), dtype=mx.int32)
        self.reset()

    # -- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        B = self.batch_size * (2 if self.use_cfg else 1)
        self.ring = self.max_delay + 2
        self.cache = mx.full((self.batch_size, 1 + self.cfg.audio_codebooks, self.ring),
                             UNGENERATED_TOKEN, dtype=mx.int32)
        self.caches = self.model.make_caches(B)
        self.offset = 0

    def state_arrays(self) -> list[mx.array]:
        """Arrays that hold the streaming state (for `mx.eval` / `mx.async_eval`)."""
        return [self.cache] + [a for c in self.caches for a in c.state()]

    @property
    def user_codebooks(self) -> int:
        return self.cfg.user_codebooks

    # -- one step --------------------------------------------------------------------------
    def _input_column(self) -> mx.array:
        pos = self.offset % self.ring
        col = self.cache[:, :, pos]
        is_init = mx.array([self.offset <= d for d in self.delays])[None, :]
        return mx.where(is_init, self.initial[None, :], col)

    def _mix(self, logits: mx.array) -> mx.array:
        if not self.use_cfg:
            return logits
        cond, uncond = mx.split(logits, 2, axis=0)
        return uncond + (cond - uncond) * self.cfg_coef

    def step(self, user_codes: mx.array) -> mx.array | None:
        """user_codes [B, >= user_codebooks] -> tokens [B, 1 + dep_q] or None (warm-up)."""
        B = self.batch_size
        K_user = self.user_codebooks
        user_codes = mx.array(user_codes, dtype=mx.int32)
        if user_codes.ndim == 3:
            user_codes = user_codes[..., 0]
        if user_codes.shape[0] != B or user_codes.shape[1] < K_user:
            raise ValueError(f"expected user codes [{B}, {K_user}], got {tuple(user_codes.shape)}")
        first_user = 1 + self.dep_q
        for i in range(K_user):
            k = first_user + i
            self.cache[:, k, (self.offset + self.delays[k]) % self.ring] = user_codes[:, i]
        inp = self._input_column()
        if self.check:
            mx.eval(inp)
            if (inp == UNGENERATED_TOKEN).any().item():
                raise RuntimeError(f"step {self.offset}: an ungenerated token would be fed")
        inp = inp[:, :, None]
        if self.use_cfg:
            inp = mx.concatenate([inp, inp], axis=0)
        out, text_logits = self.model.forward_text(inp, offset=self.offset, caches=self.caches,
                                                    condition_sum=self.condition_sum)
        text_logits = self._mix(text_logits[:, 0].astype(mx.float32))
        text = self.text_sampler(text_logits)  # [B]
        audio = self._depformer(out, text) if self.dep_q else None
        self.offset += 1
        pos = self.offset % self.ring
        self.cache[:, 0, pos] = text
        if audio is not None:
            self.cache[:, 1:1 + self.dep_q, pos] = audio
        if self.offset <= self.max_delay:
            return None
        cols = [self.cache[:, k, (self.offset - self.max_delay + self.delays[k]) % self.ring]
                for k in range(1 + self.dep_q)]
        return mx.stack(cols, axis=1)

    def _depformer(self, transformer_out: mx.array, text: mx.array) -> mx.array:
        dep = self.model.depformer
        rows = transformer_out.shape[0]
        caches = dep.make_caches(rows, dtype=transformer_out.dtype)
        prev = text
        tokens = []
        for k in range(self.dep_q):
            inp = mx.concatenate([prev, prev]) if self.use_cfg else prev
            logits = dep.slice_logits(k, transformer_out, inp[:, None], caches)
            prev = self.audio_sampler(self._mix(logits[:, 0].astype(mx.float32)))
            tokens.append(prev)
        return mx.stack(tokens, axis=1)


def input_eos_codes(model: Lm, batch_size: int = 1) -> mx.array:
    """Hibiki's end-of-input frame: the code `card` on every user codebook."""
    return mx.full((batch_size, model.cfg.user_codebooks), model.cfg.card, dtype=mx.int32)
