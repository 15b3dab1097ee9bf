"""The engine's lookahead: a `Session` that schedules the LM step of frame n + 1 before
reading frame n's tokens gives exactly the outputs of one that does not (same seed), in
sequential and pipelined mode, including where the model stops on the text EOS (the step
scheduled ahead is dropped, and the EOS counts only once the input has ended)."""

from __future__ import annotations

import numpy as np
import pytest

from moshi_mac.codec import FRAME_SIZE
from moshi_mac.api import load
from moshi_mac.engine import FileSource, LoadedModel, Session
from moshi_mac.generate import GenOptions
from moshi_mac.tokenizer import EOS_ID

from .crafted import always_emit


@pytest.fixture(scope="module")
def hibiki(make_model) -> LoadedModel:
    return load(weights=make_model("hibiki-1b")).loaded


def _always_eos(model: LoadedModel) -> LoadedModel:
    """The same model crafted to always emit the text EOS."""
    lm = always_emit(load(weights=model.files.weights.parent).loaded.lm, EOS_ID)
    return LoadedModel(model.files, model.cfg, lm, model.tokenizer)


def _run(model: LoadedModel, pcm, *, lookahead: bool, pipelined: bool):
    session = Session(model, GenOptions(seed=11), stop_on_eos=True, lookahead=lookahead)
    result = session.run(FileSource(pcm, flush=True, max_tail_frames=4), pipelined=pipelined)
    return result, [(t.id, t.time) for t in session.text.tokens]


@pytest.mark.parametrize("pipelined", [False, True])
def test_lookahead_gives_identical_outputs(hibiki, pipelined):
    pcm = np.random.default_rng(0).standard_normal(9 * FRAME_SIZE + 100).astype(np.float32) * 0.1
    a, text_a = _run(hibiki, pcm, lookahead=False, pipelined=pipelined)
    b, text_b = _run(hibiki, pcm, lookahead=True, pipelined=pipelined)
    assert a.outputs > 0 and a.pcm.size == a.outputs * FRAME_SIZE
    assert np.array_equal(a.pcm, b.pcm) and text_a == text_b
    assert (a.steps, a.outputs, a.input_frames, a.eos_reached, a.early_eos) == \
           (b.steps, b.outputs, b.input_frames, b.eos_reached, b.early_eos)


@pytest.mark.parametrize("pipelined", [False, True])
def test_lookahead_stops_on_eos_like_a_step_at_a_time(hibiki, pipelined):
    model = _always_eos(hibiki)
    pcm = np.zeros(6 * FRAME_SIZE, np.float32)
    a, _ = _run(model, pcm, lookahead=False, pipelined=pipelined)
    b, _ = _run(model, pcm, lookahead=True, pipelined=pipelined)
    # EOS at every output: those before the input ended are counted, the first after it
    # stops the run before the tail is used up.
    assert a.eos_reached and a.early_eos > 0 and a.steps < 1 + 6 + 1 + 4
    assert (a.steps, a.outputs, a.input_frames, a.early_eos) == \
           (b.steps, b.outputs, b.input_frames, b.early_eos)
    assert np.array_equal(a.pcm, b.pcm)
