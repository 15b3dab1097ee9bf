"""Sampling and streaming-generation behaviour of `generate.LmGen` and `sampling.Sampler`.

Exact agreement with the reference's greedy `LMGen` is in test_parity.py; here: seeded
repeatability, the top-k / top-p support on crafted logits (and the top-p rule against the
reference's `sample_token`), greedy == argmax, the warm-up of `max_delay` steps, and
Hibiki's end-of-input codes; a step never syncs (`count_syncs`) and its CPU-stream split
(`DensePlans`, held by the generator) changes no token; the session's lookahead changes
no output; and attention's one forward path on the ring KV cache, streaming against
teacher forcing through every branch (wrap-around, chunks, masks).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

from moshi_mac.config import load_config
from moshi_mac.engine import LmStepper
from moshi_mac.generate import GenOptions, LmGen, count_syncs
from moshi_mac.models import Lm
from moshi_mac.models.layers import DensePlans
from moshi_mac.random_model import random_lm_tensors, tiny_config
from moshi_mac.sampling import Sampler

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
N_DRAWS = 4000  # rows sampled at once from identical logits


@lru_cache(maxsize=None)
def _model(name: str, max_user_delay: int | None = None) -> Lm:
    """A tiny random fp32 model of configs/{name}.toml (text vocab 200, real 2048 card)."""
    cfg = tiny_config(load_config(CONFIGS / f"{name}.toml"), text_vocab=200)
    if max_user_delay is not None:  # a larger delay on the last user codebook
        cfg = copy.deepcopy(cfg)
        cfg.moshi_mac.delays[-1] = max_user_delay
        cfg.validate()
    model = Lm(cfg)
    model.load_weights(list(random_lm_tensors(cfg, seed=0, dtype=mx.float32).items()), strict=True)
    mx.eval(model.parameters())
    return model


def _user_codes(model: Lm, steps: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, model.cfg.card, size=(steps, batch, model.cfg.user_codebooks))


def _run(model: Lm, options: GenOptions, steps: int = 12, batch: int = 1) -> np.ndarray:
    gen = LmGen(model, batch_size=batch, options=options, check=True)
    out = []
    for codes in _user_codes(model, steps, batch):
        tokens = gen.step(mx.array(codes))
        if tokens is not None:
            out.append(np.array(tokens))
    return np.stack(out)


def _draw(sampler: Sampler, logits: np.ndarray) -> np.ndarray:
    """N_DRAWS independent samples from one row of logits."""
    batch = mx.broadcast_to(mx.array(logits, dtype=mx.float32)[None], (N_DRAWS, logits.shape[-1]))
    return np.array(sampler(batch))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


# ---------------------------------------------------------------------------------------
# Samplers on crafted logits
# ---------------------------------------------------------------------------------------

def test_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=(16, 300)).astype(np.float32)
    want = logits.argmax(-1)
    for sampler in (Sampler(use_sampling=False), Sampler(temp=0.0, top_k=5, seed=0),
                    Sampler(temp=1.0, top_k=1, seed=0)):
        assert (np.array(sampler(mx.array(logits))) == want).all()


@pytest.mark.parametrize("k,temp", [(1, 1.0), (5, 1.0), (5, 20.0), (40, 3.0)])
def test_top_k_stays_in_top_k(k, temp):
    rng = np.random.default_rng(k)
    logits = rng.permutation(np.linspace(-4.0, 4.0, 64)).astype(np.float32)
    top = set(np.argsort(-logits)[:k].tolist())
    draws = _draw(Sampler(temp=temp, top_k=k, seed=1), logits)
    assert set(draws.tolist()) <= top, "a token outside the top k was sampled"
    # ... and the top k are sampled with softmax(logits / temp) renormalised over them.
    idx = np.array(sorted(top))
    want = _softmax(logits[idx] / temp)
    got = np.array([(draws == i).mean() for i in idx])
    assert np.abs(got - want).max() < 0.04, (got, want)


TOP_P_PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.05] + [0.05 / 45] * 45)


def _top_p_support(probs: np.ndarray, p: float) -> set[int]:
    """The reference rule (moshi.utils.sampling.sample_top_p): sort descending, drop the
    tokens whose preceding mass exceeds p."""
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    return set(order[before <= p].tolist())


@pytest.mark.parametrize("p", [0.3, 0.6, 0.75, 0.85])
def test_top_p_stays_in_nucleus(p):
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(TOP_P_PROBS))
    probs = np.empty_like(TOP_P_PROBS)
    probs[perm] = TOP_P_PROBS
    support = _top_p_support(probs, p)
    assert 1 <= len(support) <= 4
    draws = _draw(Sampler(temp=1.0, top_k=0, top_p=p, seed=2), np.log(probs))
    assert set(draws.tolist()) == support  # never outside; every nucleus token appears
    idx = np.array(sorted(support))
    want = probs[idx] / probs[idx].sum()
    got = np.array([(draws == i).mean() for i in idx])
    assert np.abs(got - want).max() < 0.04, (got, want)


@pytest.mark.reference
def test_top_p_rule_matches_reference_sampler():
    """The nucleus the reference's `sample_token` draws from is the one we draw from."""
    import torch
    from moshi.utils.sampling import sample_token

    probs = np.random.default_rng(3).dirichlet(np.ones(30) * 0.3)
    logits = np.log(probs).astype(np.float32)
    for p in (0.5, 0.8, 0.95):
        torch.manual_seed(0)
        theirs = sample_token(torch.from_numpy(np.tile(logits, (N_DRAWS, 1))), True, 1.0, 0, p)
        ours = _draw(Sampler(temp=1.0, top_p=p, seed=0), logits)
        # every token the reference samples at least 1% of the time is in our nucleus,
        # and we sample nothing the reference's nucleus excludes
        ref_set = set(theirs.numpy().tolist())
        frequent = {t for t in ref_set if (theirs.numpy() == t).mean() > 0.01}
        assert frequent <= set(ours.tolist()) <= _top_p_support(probs, p)
        assert ref_set <= _top_p_support(probs, p)


# ---------------------------------------------------------------------------------------
# LmGen
# ---------------------------------------------------------------------------------------

def test_seeded_sampling_is_repeatable():
    model = _model("hibiki-1b")
    a = _run(model, GenOptions(seed=7))
    b = _run(model, GenOptions(seed=7))
    c = _run(model, GenOptions(seed=8))
    assert a.shape == (12 - max(model.cfg.delays), 1, 1 + model.cfg.dep_q)
    assert (a == b).all(), "same seed, different tokens"
    assert (a != c).any(), "different seeds, same tokens"


def test_greedy_generation_equals_top1_sampling():
    """Greedy LmGen is argmax at every text and depformer step: top-k 1 sampling (with a
    temperature) must give the very same tokens."""
    model = _model("moshi-7b")
    greedy = _run(model, GenOptions(greedy=True), steps=16, batch=2)
    top1 = _run(model, GenOptions(top_k=1, top_k_text=1, temp=0.8, temp_text=0.7, seed=3),
                steps=16, batch=2)
    assert (greedy == top1).all()
    sampled = _run(model, GenOptions(seed=3), steps=16, batch=2)
    assert (greedy != sampled).any()  # sampling at the config's temperatures does differ


@pytest.mark.parametrize("name,max_user_delay", [("moshi-7b", None), ("hibiki-1b", None),
                                                 ("moshi-7b", 3)])
def test_step_returns_none_for_exactly_max_delay_steps(name, max_user_delay):
    model = _model(name, max_user_delay)
    cfg = model.cfg
    max_delay = max(cfg.delays)
    assert max_delay == (max_user_delay or {"moshi": 1, "hibiki": 2}[cfg.moshi_mac.model_type])
    batch = 2
    gen = LmGen(model, batch_size=batch, options=GenOptions(greedy=True), check=True)
    results = [gen.step(mx.array(c)) for c in _user_codes(model, max_delay + 4, batch)]
    assert all(r is None for r in results[:max_delay])
    for r in results[max_delay:]:
        assert r is not None
        r = np.array(r)
        assert r.shape == (batch, 1 + cfg.dep_q)
        assert ((r[:, 0] >= 0) & (r[:, 0] < cfg.text_out_vocab_size)).all()
        assert ((r[:, 1:] >= 0) & (r[:, 1:] < cfg.card)).all()


def test_input_eos_codes_for_hibiki():
    model = _model("hibiki-1b")
    cfg = model.cfg
    eos_codes = LmStepper(model, GenOptions(greedy=True)).eos_codes
    assert eos_codes.shape == (cfg.user_codebooks,)
    assert (eos_codes == cfg.card).all()
    eos = mx.array(np.stack([eos_codes, eos_codes]))
    assert cfg.card == cfg.audio_vocab_size - 1  # a valid input embedding row
    # The generator accepts it after ordinary input, as Hibiki's end-of-speech flush does.
    gen = LmGen(model, batch_size=2, options=GenOptions(greedy=True), check=True)
    for codes in _user_codes(model, 3, 2):
        gen.step(mx.array(codes))
    for _ in range(4):
        out = gen.step(eos)
        assert out is not None and np.isfinite(np.array(out)).all()


def test_cfg_needs_a_conditioner_and_user_codes_are_checked():
    model = _model("moshi-7b")
    with pytest.raises(ValueError, match="CFG"):
        LmGen(model, options=GenOptions(cfg_coef=3.0))
    gen = LmGen(model, batch_size=1, options=GenOptions(greedy=True))
    with pytest.raises(ValueError, match="user codes"):
        gen.step(mx.zeros((1, model.cfg.user_codebooks - 1), dtype=mx.int32))


# ---------------------------------------------------------------------------------------
# The step: no syncs, explicit performance state
# ---------------------------------------------------------------------------------------

def test_count_syncs_counts_what_waits_for_the_device():
    a = mx.arange(4)
    with count_syncs() as c:
        b = a + 1
        mx.async_eval(b)  # scheduling is not a sync
        assert c.syncs == 0
        mx.eval(b)
        b.item() if b.size == 1 else b.tolist()
        bool((b > 0).all())
    assert c.syncs == 3
    assert mx.eval is not None and (b > 0).all().item()  # everything given back


def test_a_streaming_step_never_syncs():
    model = _model("hibiki-1b")
    gen = LmGen(model, options=GenOptions(seed=0))
    codes = mx.zeros((1, model.cfg.user_codebooks), dtype=mx.int32)
    for _ in range(3):
        gen.step(codes)
    with count_syncs() as c:
        out = gen.step(codes)
    assert c.syncs == 0
    assert out is not None
    with count_syncs() as c:  # the checking mode reads a flag: a sync, and it is counted
        LmGen(model, options=GenOptions(seed=0), check=True).step(codes)
    assert c.syncs >= 1


def _param_ids(model: Lm) -> dict[str, int]:
    from mlx.utils import tree_flatten

    return {k: id(v) for k, v in tree_flatten(model.parameters())}


@pytest.mark.parametrize("name,greedy", [("moshi-7b", True), ("hibiki-1b", False)])
def test_matmuls_split_over_cpu_streams_give_the_same_tokens(name, greedy):
    """The split is by output rows (every dot product the same), so no token changes; the
    plans live in the generator, and building one leaves the model untouched."""
    model = _model(name)
    before = (_param_ids(model), {k: set(vars(m)) for k, m in model.named_modules()})
    plain = DensePlans(model, split=False)
    split = DensePlans(model, min_entries=1, chunk_entries=1 << 10)
    assert plain.n_split == 0
    if len(split.streams) < 2:
        pytest.skip("one CPU stream: nothing to split")
    assert split.n_split > 10
    gens = [LmGen(model, batch_size=2, options=GenOptions(greedy=greedy, seed=3), plans=p)
            for p in (plain, split)]
    assert (_param_ids(model), {k: set(vars(m)) for k, m in model.named_modules()}) == before
    rng = np.random.default_rng(0)
    for codes in rng.integers(0, model.cfg.card, size=(24, 2, model.cfg.user_codebooks)):
        a, b = (g.step(mx.array(codes)) for g in gens)
        if a is not None:
            assert (np.array(a) == np.array(b)).all()


def test_lookahead_gives_the_same_tokens():
    """`LmStepper.schedule` of step n + 1 before `collect` of step n (the session's
    lookahead) gives the same outputs as one step at a time, same seed."""
    from moshi_mac.engine import InFrame

    model = _model("hibiki-1b")
    codes = _user_codes(model, 14)[:, 0]
    frames = [InFrame("input", None, i) for i in range(len(codes))]

    plain = LmStepper(model, GenOptions(seed=5))
    one_by_one = [plain.step(c, f) for c, f in zip(codes, frames)]
    ahead = LmStepper(model, GenOptions(seed=5))
    pending, outs = None, []
    for c, f in zip(codes, frames):
        scheduled = ahead.schedule(c, f)
        if pending is not None:
            outs.append(ahead.collect(pending))
        pending = scheduled
    outs.append(ahead.collect(pending))
    assert len(outs) == len(one_by_one) and ahead.steps == plain.steps == len(codes) + 1
    for a, b in zip(one_by_one, outs):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.index == b.index and a.text == b.text and (a.audio == b.audio).all()


# ---------------------------------------------------------------------------------------
# Attention: one forward path, every branch of the ring
# ---------------------------------------------------------------------------------------

def _transformer(context: int):
    from moshi_mac.models.layers import Transformer

    cfg = copy.deepcopy(_model("moshi-7b").cfg.transformer)
    cfg.context, cfg.num_layers = context, 2
    t = Transformer(cfg, 1e-5, rope_traditional=True)
    t.update(tree_map(lambda a: mx.random.normal(a.shape, key=mx.random.key(1)) * 0.2,
                      t.parameters()))
    mx.eval(t.parameters())
    return t


def test_streaming_equals_teacher_forcing_through_the_ring_wrap():
    """One position at a time on a ring of `context` slots (wrapping twice, with the
    compiled step's array positions and every read length L) equals all positions at once
    with the sliding-window mask; T steps at a time on a ring of context + T - 1 slots,
    across the wrap, too."""
    context, n = 6, 16
    t = _transformer(context)
    d = t.cfg.d_model
    x = mx.random.normal((2, n, d), key=mx.random.key(2))
    full, _ = t(x, 0, t.make_ring(2, mx.float32, capacity=n))
    assert full.shape == (2, n, d)
    kv, rows = t.make_ring(2, mx.float32), []
    for p in range(n):
        L = min(context, p + 1 + p % 3)  # more slots than filled: masked
        y, kv = t(x[:, p:p + 1], mx.array(p, dtype=mx.int32), kv, mx.arange(L))
        rows.append(y)
    assert np.allclose(np.array(mx.concatenate(rows, axis=1)), np.array(full), atol=1e-5)
    T = 3
    kv, rows = t.make_ring(2, mx.float32, capacity=context + T - 1), []
    for p in range(0, n - n % T, T):  # writes at slots 0-2, 3-5, 6-7 + 0, ...: wraps
        y, kv = t(x[:, p:p + T], p, kv)
        rows.append(y)
    m = n - n % T
    assert np.allclose(np.array(mx.concatenate(rows, axis=1)), np.array(full[:, :m]), atol=1e-5)
    with pytest.raises(ValueError, match="at once"):  # a chunk that would lose keys
        t(x[:, :T], context, t.make_ring(2, mx.float32))


def test_ring_mask_shortcut_matches_the_computed_mask():
    """The mask-free case (an int position, every read slot visible) against the computed
    mask, and the mask's window and unfilled slots."""
    from moshi_mac.models.layers import ring_mask

    assert ring_mask(2, 1, 8, 3, 8) is None
    assert np.array(ring_mask(mx.array(2), 1, 8, 3, 8)).all()
    m = np.array(ring_mask(mx.array(9), 1, 4, 4, 4))  # wrapped: every slot is visible
    assert m.all()
    m = np.array(ring_mask(0, 4, 4, 4, 2))  # teacher forcing, window of 2: a band
    assert (m == np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)).all()
    m = np.array(ring_mask(mx.array(1), 1, 4, 4, 4))  # slots 2 and 3 not written yet
    assert (m == np.array([[1, 1, 0, 0]], bool)).all()
