"""Parity of our MLX LM with the official PyTorch `moshi` (0.2.x) on tiny random models.

- Teacher forcing: `scoring.score` vs `LMModel.forward`, logits within 1e-4, same masks and
  NaN positions, with -1 ("zero token") entries and T > context (sliding-window mask).
- Greedy streaming: `generate.LmGen` vs `LMGen(use_sampling=False)`, token-identical for
  60 emitted steps with a context of 16 (the ring KV cache wraps), CFG 3 on the Hibiki
  shape, batch 2 for two models.
- Quantization (no reference needed): q8 / q4 / bf16 top-1 agreement with fp32, printed
  (run with `-s` to see the numbers).

The tiny configs and the PyTorch -> MLX export live in `reference.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as R  # noqa: E402
from reference import torch  # noqa: E402  (None without the references: those tests skip)

from moshi_mac import scoring  # noqa: E402
from moshi_mac import weights as W  # noqa: E402
from moshi_mac.generate import GenOptions, LmGen  # noqa: E402
from moshi_mac.models import Lm  # noqa: E402
from moshi_mac.random_model import random_lm_tensors  # noqa: E402

ATOL = 1e-4


@pytest.fixture(autouse=True)
def _torch_one_thread():
    """Tiny models: PyTorch's thread pool only adds overhead (2-4x slower on 2 cores)."""
    if torch is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _conditions(cfg, batch: int, cfg_coef: float = 1.0) -> list[dict[str, str]] | None:
    """The [cond] * B (+ [uncond] * B with CFG) rows LmGen builds from the config."""
    if not cfg.conditioners:
        return None
    gen = cfg.moshi_mac.generation
    rows = [dict(gen.conditions)] * batch
    if cfg_coef != 1.0:
        rows += [dict(gen.cfg_conditions)] * batch
    return rows


# ---------------------------------------------------------------------------------------
# Teacher forcing
# ---------------------------------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("name", ["moshi", "hibiki", "zero", "variant", "shared"])
def test_teacher_forced_logits_match_reference(name):
    context, steps = 8, 20  # T > context: the non-streaming sliding-window mask matters
    cfg = R.tiny(name, context=context)
    ref, model = R.make_pair(cfg, seed=1)
    assert not R.unmapped_names(cfg, ref), "reference tensors our mapping ignores"
    codes = R.random_codes(cfg, batch=2, steps=steps, seed=2, zero_frac=0.1)
    assert (codes == -1).any() and (codes[:, 0] == -1).any()
    conds = None
    if cfg.conditioners:  # one row per label: the conditioner must follow the batch
        conds = [{"description": "very_good"}, {"description": "very_bad"}]
    with torch.no_grad():
        out = ref(torch.from_numpy(codes), R.condition_tensors(ref, conds))
    ours = scoring.score(model, mx.array(codes), conds)

    for what, mine, theirs in [("text", ours.text_logits, out.text_logits),
                               ("audio", ours.logits, out.logits)]:
        mine, theirs = R.to_numpy(mine), R.to_numpy(theirs)
        assert mine.shape == theirs.shape, what
        assert (np.isnan(mine) == np.isnan(theirs)).all(), f"{what}: NaN positions differ"
        assert not np.isnan(theirs).all()
        diff = np.nanmax(np.abs(mine - theirs))
        assert diff <= ATOL, f"{name} {what} logits: max abs diff {diff:.2e} > {ATOL}"
    for what, mine, theirs in [("text_mask", ours.text_mask, out.text_mask),
                               ("mask", ours.mask, out.mask)]:
        mine, theirs = R.to_numpy(mine), R.to_numpy(theirs)
        assert mine.shape == theirs.shape and (mine == theirs).all(), f"{name}: {what} differs"
    assert not R.to_numpy(ours.mask).all()  # -1 entries and delays mask some positions


@pytest.mark.reference
def test_variant_reference_really_has_its_traits():
    """The config -> LMModel kwargs translation must not drop a trait silently."""
    ref = R.build_reference(R.tiny("variant"))
    layer, dep_layer = ref.transformer.layers[0], ref.depformer.layers[0]
    assert ref.transformer.positional_embedding == "sin"
    assert ref.depformer.positional_embedding == "sin"
    assert isinstance(ref.out_norm, torch.nn.LayerNorm) and isinstance(layer.norm1, torch.nn.LayerNorm)
    assert layer.gating is None and layer.linear1 is not None  # plain GELU MLP
    assert dep_layer.gating[0].activation is torch.nn.functional.gelu
    assert type(layer.layer_scale_1).__name__ == "LayerScale"
    assert ref.text_linear.bias is not None and ref.linears[0].bias is not None
    assert ref.depformer_text_emb.low_rank is not None and ref.depformer_emb[0].low_rank is not None
    assert len(ref.depformer_in) == 1  # depformer_multi_linear = false


@pytest.mark.reference
def test_context_window_changes_late_logits():
    """The test above has teeth: with the same weights, a wider context gives different
    logits after `context` steps, and identical ones before."""
    cfg = R.tiny("moshi", context=8)
    wide = R.tiny("moshi", context=64)
    ref = R.build_reference(cfg, seed=1)
    narrow_lm, wide_lm = R.export(cfg, ref), R.export(wide, ref)
    codes = mx.array(R.random_codes(cfg, batch=1, steps=20, seed=3))
    a = np.array(scoring.score(narrow_lm, codes).text_logits)[0, 0]
    b = np.array(scoring.score(wide_lm, codes).text_logits)[0, 0]
    assert np.abs(a[:8] - b[:8]).max() < 1e-5
    assert np.abs(a[9:] - b[9:]).max() > 1e-2


# ---------------------------------------------------------------------------------------
# Greedy streaming
# ---------------------------------------------------------------------------------------

GREEDY_CASES = [
    # name, batch, cfg_coef
    ("moshi", 1, 1.0),
    ("hibiki", 2, 3.0),
    ("zero", 1, 1.0),
    ("variant", 2, 1.0),
]


@pytest.mark.reference
@pytest.mark.parametrize("name,batch,cfg_coef", GREEDY_CASES,
                         ids=[f"{n}-b{b}-cfg{c:g}" for n, b, c in GREEDY_CASES])
def test_greedy_streaming_matches_reference(name, batch, cfg_coef):
    from moshi.models.lm import LMGen

    context, emitted = 16, 60
    cfg = R.tiny(name, context=context)
    ref, model = R.make_pair(cfg, seed=4)
    max_delay = max(cfg.delays)
    steps = emitted + max_delay
    assert steps > 3 * context  # the ring KV cache wraps several times
    rows = _conditions(cfg, batch, cfg_coef)
    ref_gen = LMGen(ref, use_sampling=False, cfg_coef=cfg_coef,
                    condition_tensors=R.condition_tensors(ref, rows), check=True)
    our_gen = LmGen(model, batch_size=batch, options=GenOptions(greedy=True, cfg_coef=cfg_coef),
                    check=True)
    rng = np.random.default_rng(5)
    user = rng.integers(0, cfg.card, size=(steps, batch, cfg.user_codebooks, 1))
    n_emitted = 0
    with ref_gen.streaming(batch):
        for s in range(steps):
            theirs = ref_gen.step(torch.from_numpy(user[s]))
            mine = our_gen.step(mx.array(user[s]))
            assert (theirs is None) == (mine is None), f"step {s}: warm-up differs"
            if theirs is None:
                continue
            theirs = theirs[:, :, 0].numpy()
            mine = np.array(mine)
            assert mine.shape == theirs.shape == (batch, 1 + cfg.dep_q)
            if not (mine == theirs).all():
                bad = np.argwhere(mine != theirs)[0]
                pytest.fail(f"{name}: step {s} (emitted {n_emitted}) first differs at batch "
                            f"{bad[0]}, stream {bad[1]}: ours {mine[tuple(bad)]}, "
                            f"reference {theirs[tuple(bad)]}")
            n_emitted += 1
    assert n_emitted == emitted


# ---------------------------------------------------------------------------------------
# Quantization vs full precision (no reference model needed)
# ---------------------------------------------------------------------------------------

# d_model 128 / depformer 64 and MLP hidden widths 384 / 192: every matrix input dim is a
# multiple of both group sizes, so everything but the conditioner gets quantized.
QUANT_DIMS = dict(d_model=128, num_heads=4, ff=576, dep_d_model=64, dep_num_heads=4, dep_ff=288)

# Floors calibrated on random weights (seeds 0-3, 2 x 64 steps), where logits are far
# flatter than a trained model's, so top-1 is a harsh measure; measured (text, audio):
#   bf16 top-1 0.98 / 0.97, q8 0.95-0.99 / 0.96, q4 0.59-0.73 / 0.40-0.49;
#   q4 top-5 contains fp32's top-1: 0.93-0.99 / 0.82-0.85; q4 logit cosine 0.97 / 0.93.
FLOORS = {
    "bf16": {"top1": (0.9, 0.9), "top5": (0.99, 0.99), "cos": (0.999, 0.999)},
    "q8": {"top1": (0.9, 0.9), "top5": (0.99, 0.99), "cos": (0.999, 0.999)},
    "q4": {"top1": (0.45, 0.3), "top5": (0.85, 0.7), "cos": (0.93, 0.88)},
}


def _agreement(base: np.ndarray, other: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    b, o = base[mask], other[mask]
    top1 = float((o.argmax(-1) == b.argmax(-1)).mean())
    top5 = np.argsort(-o, axis=-1)[:, :5]
    in_top5 = float((top5 == b.argmax(-1)[:, None]).any(-1).mean())
    cos = (b * o).sum(-1) / (np.linalg.norm(b, axis=-1) * np.linalg.norm(o, axis=-1))
    return {"top1": top1, "top5": in_top5, "cos": float(cos.mean())}


def _quantizable_leaves(model: Lm) -> list[str]:
    flat = tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
    return [p for p, m in flat if hasattr(m, "to_quantized") and hasattr(m, "weight")
            and not p.startswith("condition_provider.")]


def test_quantized_agreement_with_full_precision():
    cfg = R.tiny("hibiki", text_vocab=1000, dims=QUANT_DIMS)
    tensors = random_lm_tensors(cfg, seed=0, dtype=mx.float32)

    def build(dtype=mx.float32, bits=None, group=None):
        model = Lm(cfg)
        model.load_weights([(k, v if k.startswith("condition_provider.") else v.astype(dtype))
                            for k, v in tensors.items()], strict=True)
        if bits:
            leaves = _quantizable_leaves(model)
            quant = W.quantize_model(model, bits, group)
            assert sorted(quant.modules) == sorted(leaves), "some matrices were left unquantized"
            assert quant.short == f"q{bits}"
        mx.eval(model.parameters())
        return model

    codes = mx.array(R.random_codes(cfg, batch=2, steps=64, seed=0))
    conds = [dict(cfg.moshi_mac.generation.conditions)] * 2
    base = scoring.score(build(), codes, conds)
    text_mask, audio_mask = np.array(base.text_mask), np.array(base.mask)
    results = {}
    for label, kwargs in [("bf16", {"dtype": mx.bfloat16}), ("q8", {"bits": 8, "group": 64}),
                          ("q4", {"bits": 4, "group": 32})]:
        out = scoring.score(build(**kwargs), codes, conds)
        results[label] = {
            "text": _agreement(np.array(base.text_logits), np.array(out.text_logits), text_mask),
            "audio": _agreement(np.array(base.logits), np.array(out.logits), audio_mask),
        }
    print("\nagreement with fp32 (tiny hibiki, d_model 128, 2 x 64 steps):")
    for label, r in results.items():
        print(f"  {label:5s} " + "  ".join(
            f"{s}: top-1 {r[s]['top1']:.3f}, fp32 top-1 in top-5 {r[s]['top5']:.3f}, "
            f"cos {r[s]['cos']:.4f}" for s in ("text", "audio")))
    for label, floors in FLOORS.items():
        for metric, (text_floor, audio_floor) in floors.items():
            assert results[label]["text"][metric] >= text_floor, (label, "text", metric, results[label])
            assert results[label]["audio"][metric] >= audio_floor, (label, "audio", metric, results[label])
    assert results["q8"]["audio"]["cos"] > results["q4"]["audio"]["cos"]
