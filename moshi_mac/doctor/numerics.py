"""Numerical checks: non-finite values, and quantized vs bf16 logits on probe codes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from .base import CheckResult, FAIL, PROBE_STEPS, QUANT_LIMITS, SKIP, _count, _result



# ---------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------

def probe_codes(cfg, audio_codes: np.ndarray | None = None, steps: int = PROBE_STEPS,
                seed: int = 0) -> np.ndarray:
    """Teacher-forcing codes [1, 1 + n_q, T]: text mostly PAD with a word piece every 4th
    step; every audio stream from `audio_codes` [K, T'] (e.g. Mimi codes of the speech
    sample, reused cyclically over the codebooks) or seeded random codes."""
    rng = np.random.default_rng(seed)
    if audio_codes is not None and audio_codes.size:
        steps = min(steps, audio_codes.shape[1])
    codes = np.empty((1, 1 + cfg.audio_codebooks, steps), np.int64)
    text = np.full(steps, cfg.moshi_mac.text_padding_id)
    text[1::4] = rng.integers(4, cfg.text_out_vocab_size, size=len(text[1::4]))
    codes[0, 0] = text
    for k in range(cfg.audio_codebooks):
        if audio_codes is not None and audio_codes.size:
            codes[0, 1 + k] = audio_codes[k % audio_codes.shape[0], :steps] % cfg.card
        else:
            codes[0, 1 + k] = rng.integers(0, cfg.card, size=steps)
    return codes


def _conditions(cfg):
    gen = cfg.moshi_mac.generation
    return [dict(gen.conditions)] if cfg.conditioners else None


def score_probe(model, codes: np.ndarray):
    import mlx.core as mx

    from ..scoring import score

    out = score(model, mx.array(codes), _conditions(model.cfg))
    mx.eval(out.logits, out.text_logits, out.mask, out.text_mask)
    return out


def _valid(logits, mask) -> np.ndarray:
    """Rows of valid positions: [N, V] float64."""
    lg, m = np.array(logits, dtype=np.float64), np.array(mask)
    return lg[m]


def check_finite(model, codes: np.ndarray) -> CheckResult:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    params = tree_flatten(model.parameters())
    bad = sum(int(mx.sum(~mx.isfinite(p)).item()) for _, p in params
              if p.dtype in (mx.float32, mx.bfloat16, mx.float16))
    out = score_probe(model, codes)
    rows = [_valid(out.text_logits, out.text_mask), _valid(out.logits, out.mask)]
    bad_logits = sum(int((~np.isfinite(r)).sum()) for r in rows)
    n_logits = sum(r.size for r in rows)
    peak = max((float(np.abs(r[np.isfinite(r)]).max()) for r in rows if np.isfinite(r).any()),
               default=float("nan"))
    figures = (f"{bad} non-finite values in {len(params)} weight tensors; {bad_logits} non-finite of "
               f"{_count(n_logits)} logits over {codes.shape[-1]} steps (max |logit| {peak:.1f})")
    return _result("weights finite", bad == 0 and bad_logits == 0, figures, "no NaN/Inf")


@dataclass
class Agreement:
    text_top1: float
    audio_top1: float
    kl: float  # mean KL(reference || other) over text and audio positions, nats
    max_abs: float  # largest |logit difference|

    @property
    def top1(self) -> float:
        return min(self.text_top1, self.audio_top1)

    def describe(self) -> str:
        return (f"top-1 text {100 * self.text_top1:.1f}%, audio {100 * self.audio_top1:.1f}%, "
                f"KL {self.kl:.2g} nats, max |diff| {self.max_abs:.2g}")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logit_agreement(ref, other) -> Agreement:
    """Top-1 agreement and KL of two `ScoreOutput`s on the same codes."""
    tops, kls, diffs = [], [], [0.0]
    for lg, mask in (("text_logits", "text_mask"), ("logits", "mask")):
        valid = getattr(ref, mask)
        a, b = _valid(getattr(ref, lg), valid), _valid(getattr(other, lg), valid)
        if a.size == 0:
            tops.append(1.0)
            continue
        tops.append(float((a.argmax(-1) == b.argmax(-1)).mean()))
        la, lb = _log_softmax(a), _log_softmax(b)
        kls.append((np.exp(la) * (la - lb)).sum(-1))
        diffs.append(float(np.abs(a - b).max()))
    kl = float(np.concatenate(kls).mean()) if kls else 0.0
    return Agreement(tops[0], tops[1], kl, max(diffs))


def check_quantized(model, quant, reference: Path | None, cfg, codes: np.ndarray,
                    why_missing: str = "no bf16 weights present") -> CheckResult:
    from ..weights import load_lm

    name = "quantized vs bf16"
    if not quant.modules:
        return CheckResult(name, SKIP, f"skipped: the model is {quant.short}, not quantized")
    bits = max(b for b, _ in quant.modules.values())
    min_top1, max_kl = QUANT_LIMITS.get(bits, QUANT_LIMITS[4])
    threshold = f"q{bits}: top-1 >= {100 * min_top1:g}%, KL <= {max_kl:g}"
    if reference is None:
        return CheckResult(name, SKIP, f"skipped: {why_missing}", threshold)
    out = score_probe(model, codes)
    ref_model, ref_report = load_lm(reference, cfg, "reference")
    if ref_report.quantization.modules:
        return CheckResult(name, FAIL, f"{reference} is {ref_report.quantization.label}, not bf16",
                           threshold)
    ref_out = score_probe(ref_model, codes)
    del ref_model
    a = logit_agreement(ref_out, out)
    return _result(name, a.top1 >= min_top1 and a.kl <= max_kl,
                   f"{quant.short} vs {Path(reference).name}: {a.describe()}", threshold)
