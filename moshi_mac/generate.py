"""Streaming generation: the MLX twin of `moshi.models.lm.LMGen`.

Each `step` takes the user stream's audio codes for one 80 ms frame and returns, once the
delays are filled, the text token and the generated audio codebooks of an earlier frame
(un-delayed), exactly as the reference does. Classifier-free guidance runs a
[condition, unconditioned] batch and mixes `uncond + cfg * (cond - uncond)` for the text
and every depformer slice. Text and audio have separate seeded samplers.

Nothing here forces a device sync: a step is a few compiled graphs, each scheduled with
`mx.async_eval` as soon as it is built, and tokens come back as `mx.array`s that are being
computed; reading them (`np.array`, `.item()`) waits for them. See `LmGen`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import mlx.core as mx

from .config import GenerationConfig
from .guards import NONFINITE_TOKEN
from .models.layers import prepare_dense
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


# The temporal attention reads the first multiple of this many ring slots that holds every
# filled one (all of them once the ring is full): one compiled graph per multiple, and at
# most this many masked slots read in vain.
ATTEND_BUCKET = 256


class LmGen:
    """Streaming generation, one frame per `step` (see the module docstring).

    A step is a few compiled MLX graphs (`mx.compile`) on arrays only: (1) the token-ring
    bookkeeping, the temporal transformer on preallocated ring KV caches and text sampling,
    (2) one graph per depformer slice with its sampling, (3) writing the tokens back. Each
    piece is handed to `mx.async_eval` as soon as it is built, so the device computes one
    while Python builds the next, and nothing waits for the device (unless `check`).
    Sampler keys are graph inputs and outputs. The graphs capture the model's weights when
    first traced: build a new `LmGen` after changing them."""

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
        # Constants of the ring bookkeeping (streams: text, generated audio, user audio).
        self.ring = self.max_delay + 2
        n_gen = 1 + self.dep_q
        self._delays = mx.array(self.delays, dtype=mx.int32)
        self._is_user = mx.arange(len(self.delays)) >= n_gen
        self._ring_slots = mx.arange(self.ring)
        self._attend_slots: dict[int, mx.array] = {}
        # The compiled graphs capture these as constants: evaluate them once, here.
        mx.eval(self.initial, self._delays, self._is_user, self._ring_slots,
                [] if self.condition_sum is None else self.condition_sum)
        prepare_dense(model)
        self._front_fn = mx.compile(self._front)
        self._slice_fns = [mx.compile(partial(self._slice, k)) for k in range(self.dep_q)]
        self._finish_fn = mx.compile(self._finish)
        self.reset()

    # -- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        rows = self.batch_size * (2 if self.use_cfg else 1)
        self.cache = mx.full((self.batch_size, 1 + self.cfg.audio_codebooks, self.ring),
                             UNGENERATED_TOKEN, dtype=mx.int32)
        self.kv = self.model.transformer.make_ring(rows, self.model.dtype)
        self.offset = 0
        self._pos = mx.array(0, dtype=mx.int32)  # self.offset, on the device

    def state_arrays(self) -> list[mx.array]:
        """Arrays that hold the streaming state (for `mx.eval` / `mx.async_eval`)."""
        return [self.cache, self._pos, self.text_sampler.key, self.audio_sampler.key, *self.kv]

    @property
    def user_codebooks(self) -> int:
        return self.cfg.user_codebooks

    # -- the token ring (pure functions of arrays, traced into the step) -------------------
    def _write_user(self, ring: mx.array, user: mx.array, pos: mx.array) -> mx.array:
        """User codebook k goes to slot (pos + delay_k) % ring."""
        vals = mx.pad(user[:, :self.user_codebooks], [(0, 0), (1 + self.dep_q, 0)])
        hit = (self._ring_slots == ((pos + self._delays) % self.ring)[:, None]) & self._is_user[:, None]
        return mx.where(hit, vals[:, :, None], ring)

    def _input_column(self, ring: mx.array, pos: mx.array) -> mx.array:
        """The tokens fed at step `pos` [B, K]: the ring's column, or the initial token of
        the streams whose delay is not over."""
        col = mx.take(ring, pos % self.ring, axis=2)
        return mx.where(pos <= self._delays, self.initial, col)

    def _write_generated(self, ring: mx.array, pos: mx.array, tokens: mx.array) -> mx.array:
        """Text and audio tokens [B, 1 + dep_q] go to slot pos % ring."""
        vals = mx.pad(tokens, [(0, 0), (0, self.user_codebooks)])
        hit = (self._ring_slots == pos % self.ring) & ~self._is_user[:, None]
        return mx.where(hit, vals[:, :, None], ring)

    def _output(self, ring: mx.array, pos: mx.array) -> mx.array:
        """The un-delayed tokens of frame pos - max_delay - 1: [B, 1 + dep_q]."""
        n_gen = 1 + self.dep_q
        idx = (pos - self.max_delay + self._delays[:n_gen]) % self.ring
        return mx.take_along_axis(ring[:, :n_gen], idx[None, :, None], axis=2)[..., 0]

    def _mix(self, logits: mx.array) -> mx.array:
        """CFG: `uncond + cfg * (cond - uncond)`, in float32."""
        if not self.use_cfg:
            return logits
        cond, uncond = mx.split(logits.astype(mx.float32), 2, axis=0)
        return uncond + (cond - uncond) * self.cfg_coef

    # -- one step, in three kinds of compiled pieces ---------------------------------------
    def _front(self, ring, user, pos, text_key, audio_key, slots, *kv):
        """User codes into the ring, the temporal transformer, the text token, and the
        Gumbel noise of every depformer draw: (ring, out, text, keys, *noise, *kv)."""
        ring = self._write_user(ring, user, pos)
        inp = self._input_column(ring, pos)
        if self.use_cfg:
            inp = mx.concatenate([inp, inp], axis=0)
        out, text_logits, kv = self.model.step_text(inp, pos, list(kv), slots, self.condition_sum)
        text, text_key = self.text_sampler.sample(self._mix(text_logits), text_key)
        # NaN/Inf logits: a marker token the engine stops on (no extra sync; guards.py)
        text = mx.where(mx.isfinite(text_logits).all(), text, NONFINITE_TOKEN)
        noise = []
        if self.dep_q:
            n, audio_key = self.audio_sampler.noise(audio_key, (self.dep_q, text.shape[0], self.cfg.card))
            if n is not None:
                noise = [a.reshape(a.shape[1:]) for a in mx.split(n, self.dep_q, axis=0)]
        return (ring, out, text, text_key, audio_key, *noise, *kv)

    def _slice(self, k: int, out, prev, *rest):
        """Depformer slice k: (token, *kv) from the previous token, its noise (when
        sampling) and the keys and values of slices 0..k-1."""
        noise = None
        if self.audio_sampler.use_sampling:
            noise, rest = rest[0], rest[1:]
        kv = [(rest[i], rest[i + 1]) for i in range(0, len(rest), 2)] or None
        inp = mx.concatenate([prev, prev]) if self.use_cfg else prev
        logits, kv = self.model.depformer.slice_step(k, out, inp, kv)
        tok = self.audio_sampler.pick(self._mix(logits), noise)
        return (tok, *[a for pair in kv for a in pair])

    def _finish(self, ring, pos, *tokens):
        """The step's tokens into the ring; the un-delayed output."""
        tokens = mx.stack(tokens, axis=1).astype(mx.int32)
        pos = pos + 1
        ring = self._write_generated(ring, pos, tokens)
        return ring, pos, self._output(ring, pos)

    def _run_pieces(self, user_codes: mx.array) -> mx.array:
        n_kv = len(self.kv)
        ring, out, text, self.text_sampler.key, self.audio_sampler.key, *rest = self._front_fn(
            self.cache, user_codes, self._pos, self.text_sampler.key, self.audio_sampler.key,
            self._slots(), *self.kv)
        noise, self.kv = rest[:len(rest) - n_kv], rest[len(rest) - n_kv:]
        mx.async_eval(out, text)
        prev, kv, tokens = text, [], [text]
        for k in range(self.dep_q):
            prev, *kv = self._slice_fns[k](out, prev, *noise[k:k + 1], *kv)
            mx.async_eval(prev)
            tokens.append(prev)
        self.cache, self._pos, out = self._finish_fn(ring, self._pos, *tokens)
        return out

    def _slots(self) -> mx.array:
        C = self.cfg.transformer.context
        n = min(C, -(-(self.offset + 1) // ATTEND_BUCKET) * ATTEND_BUCKET)
        if n not in self._attend_slots:  # a graph input: no need to evaluate it here
            self._attend_slots[n] = mx.arange(n)
        return self._attend_slots[n]

    def step(self, user_codes: mx.array) -> mx.array | None:
        """user_codes [B, >= user_codebooks] -> tokens [B, 1 + dep_q] or None (warm-up)."""
        B = self.batch_size
        K_user = self.user_codebooks
        if not isinstance(user_codes, mx.array) or user_codes.dtype != mx.int32:
            user_codes = mx.array(user_codes, dtype=mx.int32)
        if user_codes.ndim == 3:
            user_codes = user_codes[..., 0]
        if user_codes.ndim != 2 or user_codes.shape[0] != B or user_codes.shape[1] < K_user:
            raise ValueError(f"expected user codes [{B}, {K_user}], got {tuple(user_codes.shape)}")
        if self.check:
            inp = self._input_column(self._write_user(self.cache, user_codes, self._pos), self._pos)
            if (inp == UNGENERATED_TOKEN).any().item():
                raise RuntimeError(f"step {self.offset}: an ungenerated token would be fed")
        tokens = self._run_pieces(user_codes)
        self.offset += 1
        mx.async_eval(tokens, *self.state_arrays())
        if self.offset <= self.max_delay:
            return None
        return tokens


def input_eos_codes(model: Lm, batch_size: int = 1) -> mx.array:
    """Hibiki's end-of-input frame: the code `card` on every user codebook."""
    return mx.full((batch_size, model.cfg.user_codebooks), model.cfg.card, dtype=mx.int32)
