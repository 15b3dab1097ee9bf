"""The implementations compared, behind one small interface.

- "moshi-mac": our `generate.LmGen` on our `Lm` (MLX).
- "moshi_mlx": Kyutai's `moshi_mlx` 0.3.0 `LmGen` on its `Lm` (same MLX), with the same
  random weights (the MLX key layout is the same for Moshi and Hibiki 1B/2B).
- "pytorch": the official `moshi` `LMGen` on CPU, all cores.

Each `build_*` returns a `Runner`: `step(codes)` runs one 80 ms frame and returns once its
tokens are computed (MLX: evaluated with the streaming state); `split(codes)` runs one step
instrumented with a sync between its parts (temporal transformer and text sampling, then the
depformer with its sampling); `sampling_ms()` times the samplers alone on logits of the
model's shapes; `probe(codes)` runs one step counting device syncs and evaluated graph nodes.
All run the reference sampling settings (audio temp 0.8 top-k 250, text 0.7 top-k 25) unless
greedy, batch 1, no CFG.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import QUANT, mlx_random_tensors, torch_fill_random_

AUDIO = {"temp": 0.8, "top_k": 250}
TEXT = {"temp": 0.7, "top_k": 25}
IMPLS = ("moshi-mac", "moshi_mlx", "pytorch")
MLX_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class Unsupported(Exception):
    """The implementation cannot run this model or dtype (the message says why)."""


class Runner:
    name = ""
    syncs_note = ""

    def step(self, codes: np.ndarray) -> None:
        raise NotImplementedError

    def split(self, codes: np.ndarray) -> dict:
        raise NotImplementedError

    def _timed_step(self, codes: np.ndarray, marks: dict) -> dict:
        """One step, timed; hooks the caller installed put the times the temporal piece and
        the depformer ended into `marks` ("temporal", "depformer"). The split in ms, or {}
        when a hook did not fire."""
        t0 = time.perf_counter()
        self.step(codes)
        t1 = time.perf_counter()
        if not {"temporal", "depformer"} <= marks.keys():
            return {}
        temporal, dep = marks["temporal"] - t0, marks["depformer"] - marks["temporal"]
        return {"temporal_ms": 1000 * temporal, "depformer_ms": 1000 * dep,
                "rest_ms": 1000 * (t1 - t0 - temporal - dep), "total_ms": 1000 * (t1 - t0)}

    def _timed_around(self, codes: np.ndarray, owner, attr: str, before, after) -> dict:
        """`_timed_step` with `owner.attr` (the depformer) wrapped: `before(*args)` syncs the
        temporal piece, whose end is marked; `after(out)` syncs the depformer's result."""
        marks = {}
        inner, own = getattr(owner, attr), attr in vars(owner)

        def timed(*args, **kwargs):
            before(*args)
            marks["temporal"] = time.perf_counter()
            out = inner(*args, **kwargs)
            after(out)
            marks["depformer"] = time.perf_counter()
            return out

        setattr(owner, attr, timed)
        try:
            return self._timed_step(codes, marks)
        finally:
            if own:
                setattr(owner, attr, inner)
            else:
                delattr(owner, attr)

    def sampling_ms(self, repeats: int = 20) -> float:
        raise NotImplementedError

    def probe(self, codes: np.ndarray) -> dict:
        return {"syncs_in_step": None, "graph_nodes": None}


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


# ---------------------------------------------------------------------------------------
# MLX helpers: graph size and syncs
# ---------------------------------------------------------------------------------------

class _MlxProbe:
    """Counts, while active, the device syncs made through Python (mx.eval, bool(), item(),
    tolist()) and the graph nodes each sync or mx.async_eval evaluates (from
    `mx.export_to_dot`); async evaluations are made synchronous so nothing is counted twice."""

    def __init__(self):
        import mlx.core as mx

        self.mx = mx
        self.syncs = 0
        self.nodes = 0
        self._dot = Path(tempfile.mkdtemp(prefix="mm-probe-")) / "g.dot"

    def _count(self, arrays) -> None:
        arrays = [a for a in arrays if isinstance(a, self.mx.array)]
        if arrays:
            self._orig["export"](str(self._dot), *arrays)
            self.nodes += len(re.findall(r"\[label =", self._dot.read_text()))

    def __enter__(self):
        mx = self.mx
        arr = mx.array
        self._orig = {"eval": mx.eval, "async_eval": mx.async_eval, "bool": arr.__bool__,
                      "item": arr.item, "tolist": arr.tolist, "export": mx.export_to_dot}
        o = self._orig

        def flat(args):
            out = []
            for a in args:
                if isinstance(a, (list, tuple)):
                    out += flat(a)
                elif isinstance(a, dict):
                    out += flat(list(a.values()))
                else:
                    out.append(a)
            return out

        def ev(*args):
            self.syncs += 1
            self._count(flat(args))
            return o["eval"](*args)

        def aev(*args):
            self._count(flat(args))
            return o["eval"](*args)

        def wrap(name):
            def f(a, *rest):
                self.syncs += 1
                self._count([a])
                return o[name](a, *rest)
            return f

        mx.eval, mx.async_eval = ev, aev
        arr.__bool__, arr.item, arr.tolist = wrap("bool"), wrap("item"), wrap("tolist")
        return self

    def __exit__(self, *exc):
        mx, o = self.mx, self._orig
        mx.eval, mx.async_eval = o["eval"], o["async_eval"]
        mx.array.__bool__, mx.array.item, mx.array.tolist = o["bool"], o["item"], o["tolist"]


def _mlx_probe(inner, final) -> dict:
    """Syncs made inside one step (`inner`; the harness's final eval not counted) and the
    nodes the whole step evaluates (`inner` then `final`, the harness's eval)."""
    with _MlxProbe() as p:
        inner()
        syncs = p.syncs
        final()
    return {"syncs_in_step": syncs, "graph_nodes": p.nodes}


# ---------------------------------------------------------------------------------------
# moshi-mac
# ---------------------------------------------------------------------------------------

ABLATIONS = {
    "no_dense_plans": "linear layers called as nn.Linear (x @ W.T per call: no transposed "
                      "views, no split over CPU streams)",
    "no_split": "no split of large matmuls over CPU streams",
    "no_async": "step pieces not scheduled as they are built (mx.async_eval off)",
    "no_compile": "step pieces run eagerly (mx.compile off)",
}


def build_moshi_mac(cfg, dtype: str, *, greedy: bool = False, seed: int = 0, split_streams=None,
                    split_options: dict | None = None, ablate: tuple[str, ...] = ()):
    """`split_streams` / `split_options`: `DensePlans` arguments (default: its own).
    `ablate`: switch optimisations off, to measure what each brings (see ABLATIONS); this
    process is then only good for measuring. Works on older checkouts too (see
    common.SOURCE), where the newer machinery is missing."""
    import mlx.core as mx

    from moshi_mac import generate
    from moshi_mac.models import Lm
    from moshi_mac.weights import quantize_model

    try:
        from moshi_mac.models.layers import DensePlans, plain_linear
    except ImportError:  # an older checkout
        DensePlans = None
    unknown = set(ablate) - set(ABLATIONS)
    if unknown:
        raise ValueError(f"unknown ablations {sorted(unknown)}; known: {sorted(ABLATIONS)}")
    if "no_dense_plans" in ablate and DensePlans is not None:
        DensePlans = None
        generate.DensePlans = lambda model, *a, **k: plain_linear
    if "no_split" in ablate:
        split_streams = False
    if "no_async" in ablate:
        mx.async_eval = lambda *arrays: None
    if "no_compile" in ablate:
        mx.compile = lambda fn, *a, **k: fn

    float_dtype = mx.bfloat16 if dtype in QUANT else getattr(mx, MLX_DTYPES[dtype])
    tensors = mlx_random_tensors(cfg, float_dtype, seed)
    model = Lm(cfg)
    model.load_weights(list(tensors.items()), strict=True)
    del tensors
    if dtype in QUANT:
        quant = quantize_model(model, *QUANT[dtype])
        if not quant.modules:
            raise Unsupported(f"nothing to quantize in {dtype}")
        try:  # activations in the dtype moshi-mac runs a quantized model in (load_lm's)
            from moshi_mac.weights import cast_floats, default_dtype
        except ImportError:  # an older checkout: bf16 activations
            pass
        else:
            cast_floats(model, default_dtype(cfg, quantized=True))
    mx.eval(model.parameters())
    plans = None
    if DensePlans is not None and (split_streams is not None or split_options):
        plans = DensePlans(model, split=split_streams, **(split_options or {}))
    return MoshiMacRunner(model, greedy=greedy, seed=seed, plans=plans)


class MoshiMacRunner(Runner):
    name = "moshi-mac"

    def __init__(self, model, *, greedy: bool, seed: int, plans=None):
        import mlx.core as mx

        from moshi_mac.generate import GenOptions, LmGen

        self.mx = mx
        self.model = model
        opts = GenOptions(greedy=greedy, seed=seed)
        self.gen = LmGen(model, options=opts, **({} if plans is None else {"plans": plans}))

    def step(self, codes: np.ndarray) -> None:
        mx = self.mx
        out = self.gen.step(mx.array(codes))
        mx.eval([] if out is None else out, self.gen.state_arrays())

    def split(self, codes: np.ndarray) -> dict:
        """Sync where a step schedules its pieces: `LmGen.step` hands the temporal piece,
        then each depformer slice, then the whole state to `mx.async_eval`; a synchronous
        eval there marks the time. (Syncing inside a piece's wrapper instead would keep the
        caller's references to the old caches alive, so MLX could not update them in place
        and the split would time full cache copies that a real step never makes.)"""
        mx, gen = self.mx, self.gen
        n_dep = getattr(gen, "dep_q", None)
        if n_dep is None:  # an older checkout: other pieces
            return {}
        marks, calls, scheduled = {}, [], mx.async_eval

        def synced(*arrays):  # 1: the temporal piece, 2..n_dep+1: the slices, last: the state
            mx.eval(*arrays)
            calls.append(time.perf_counter())
            if len(calls) == 1:
                marks["temporal"] = calls[-1]
            if len(calls) == n_dep + 1:
                marks["depformer"] = calls[-1]

        mx.async_eval = synced
        try:
            split = self._timed_step(codes, marks)
        finally:
            mx.async_eval = scheduled
        return split if len(calls) == n_dep + 2 else {}

    def sampling_ms(self, repeats: int = 20) -> float:
        """The text draw and the dep_q audio draws, compiled as in a step."""
        mx, gen, cfg = self.mx, self.gen, self.model.cfg
        if not hasattr(gen.text_sampler, "pick"):  # an older checkout
            return None
        dtype = self.model.dtype
        text_logits = mx.random.normal((1, cfg.text_out_vocab_size)).astype(dtype)
        audio_logits = [mx.random.normal((1, cfg.card)).astype(dtype) for _ in range(cfg.dep_q)]
        mx.eval(text_logits, audio_logits)

        def draw(key_t, key_a, t, *a):
            tok, key_t = gen.text_sampler.sample(t, key_t)
            noise, key_a = gen.audio_sampler.noise(key_a, (len(a), 1, cfg.card))
            toks = [gen.audio_sampler.pick(x, None if noise is None else noise[i])
                    for i, x in enumerate(a)]
            return tok, key_t, key_a, *toks

        fn = mx.compile(draw)
        keys = [gen.text_sampler.key, gen.audio_sampler.key]
        return _median_ms(lambda: mx.eval(fn(*keys, text_logits, *audio_logits)), repeats)

    def probe(self, codes: np.ndarray) -> dict:
        mx, held = self.mx, {}

        def inner():
            held["out"] = self.gen.step(mx.array(codes))

        def final():
            mx.eval([] if held["out"] is None else held["out"], self.gen.state_arrays())

        return _mlx_probe(inner, final)


# ---------------------------------------------------------------------------------------
# moshi_mlx 0.3.0
# ---------------------------------------------------------------------------------------

def moshi_mlx_unsupported(cfg, dtype: str) -> str | None:
    t, mm = cfg.transformer, cfg.moshi_mac
    if t.kv_repeat != 1 or (cfg.depformer and cfg.depformer.transformer.kv_repeat != 1):
        return "no GQA (kv_repeat must be 1)"
    if mm.rope_layout != "interleaved":
        return "no concat RoPE layout"
    if mm.depformer_norm:
        return "no depformer output norm"
    if mm.depformer_weights_per_step_schedule:
        return "no depformer weight schedule in streaming"
    if dtype in QUANT and cfg.conditioners:
        return "nn.quantize fails on the LUT conditioner (no Hibiki q8/q4)"
    return None


def build_moshi_mlx(cfg, dtype: str, *, greedy: bool = False, seed: int = 0):
    import mlx.core as mx
    import mlx.nn as nn
    import moshi_mlx.models as mm

    from moshi_mac.config import to_json_dict

    why = moshi_mlx_unsupported(cfg, dtype)
    if why:
        raise Unsupported(why)
    raw = to_json_dict(cfg)
    mcfg = mm.LmConfig.from_config_dict(raw)
    # from_config_dict assumes the 4 * dim MLP of its own presets; give it our width.
    mcfg.transformer.dim_feedforward = int(round(raw["hidden_scale"] * raw["dim"]))
    float_dtype = mx.bfloat16 if dtype in QUANT else getattr(mx, MLX_DTYPES[dtype])
    tensors = mlx_random_tensors(cfg, float_dtype, seed)
    # Its checkpoints hold the conditioner in the model dtype too (a float32 one would
    # promote every activation to float32).
    tensors = {k: v.astype(float_dtype) for k, v in tensors.items()}
    model = mm.Lm(mcfg)
    model.load_weights(list(tensors.items()), strict=True)
    del tensors
    if dtype in QUANT:
        bits, group = QUANT[dtype]
        nn.quantize(model, bits=bits, group_size=group)  # what moshi_mlx's scripts do
    mx.eval(model.parameters())
    return MoshiMlxRunner(model, greedy=greedy, seed=seed)


class MoshiMlxRunner(Runner):
    name = "moshi_mlx"

    def __init__(self, model, *, greedy: bool, seed: int, max_steps: int = 100_000):
        import mlx.core as mx
        from moshi_mlx.models.generate import LmGen
        from moshi_mlx.utils.sampling import Sampler

        self.mx = mx
        self.model = model
        mx.random.seed(seed)
        self.text_sampler = Sampler(temp=0.0 if greedy else TEXT["temp"], top_k=TEXT["top_k"])
        self.audio_sampler = Sampler(temp=0.0 if greedy else AUDIO["temp"], top_k=AUDIO["top_k"])
        self.ct = None
        if model.condition_provider is not None:
            self.ct = model.condition_provider.condition_tensor("description", "very_good")
        for c in model.transformer_cache:
            c.reset()
        self.gen = LmGen(model, max_steps=max_steps, text_sampler=self.text_sampler,
                         audio_sampler=self.audio_sampler, cfg_coef=1.0)

    def step(self, codes: np.ndarray) -> None:
        mx = self.mx
        text = self.gen.step(mx.array(codes), self.ct)
        mx.eval(text, self.gen.gen_sequence)

    def split(self, codes: np.ndarray) -> dict:
        mx = self.mx
        # depformer.sample(main_out, sampler, text_token, cache, cfg_coef=...)
        return self._timed_around(codes, self.model.depformer, "sample",
                                  lambda main_out, _s, text_token, *_: mx.eval(main_out, text_token),
                                  mx.eval)

    def sampling_ms(self, repeats: int = 20) -> float:
        mx, cfg = self.mx, self.model.cfg
        dtype = self.model.out_norm.weight.dtype
        t = mx.random.normal((1, 1, cfg.text_out_vocab_size)).astype(dtype)
        a = [mx.random.normal((1, 1, cfg.audio_vocab_size - 1)).astype(dtype)
             for _ in range(cfg.depformer.num_slices)]
        mx.eval(t, a)

        def draw():
            toks = [self.text_sampler(t)[0]] + [self.audio_sampler(x)[0] for x in a]
            mx.eval(toks)

        return _median_ms(draw, repeats)

    def probe(self, codes: np.ndarray) -> dict:
        mx, held = self.mx, {}

        def inner():
            held["text"] = self.gen.step(mx.array(codes), self.ct)

        def final():
            mx.eval(held["text"], self.gen.gen_sequence)

        return _mlx_probe(inner, final)


# ---------------------------------------------------------------------------------------
# The official PyTorch moshi
# ---------------------------------------------------------------------------------------

def torch_device_missing(device: str) -> str | None:
    """Why PyTorch cannot run on `device` here (None: it can)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return "this torch has no CUDA device"
    if device == "mps" and not torch.backends.mps.is_available():
        return "this torch has no MPS device"
    return None


def build_pytorch(cfg, dtype: str, *, greedy: bool = False, seed: int = 0, threads: int | None = None,
                  device: str = "cpu"):
    import os

    import torch
    from moshi.models import loaders

    from moshi_mac.config import to_json_dict

    if dtype not in ("fp32", "bf16"):
        raise Unsupported("the PyTorch moshi LM runs fp32 or bf16 (no q8/q4)")
    why = torch_device_missing(device)
    if why:
        raise Unsupported(why)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    kwargs = to_json_dict(cfg)
    kwargs.pop("model_type", None)
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="meta", dtype=tdtype)
    lm = lm.to_empty(device="cpu")
    torch_fill_random_(lm, seed)
    if lm.condition_provider is not None:  # the conditioner stays float32, as when loading
        lm.condition_provider.float()
    lm = lm.to(device).eval()
    return PytorchRunner(lm, cfg, greedy=greedy, seed=seed)


class PytorchRunner(Runner):
    name = "pytorch"
    syncs_note = "eager, synchronous"

    def __init__(self, lm, cfg, *, greedy: bool, seed: int):
        import torch
        from moshi.models.lm import LMGen

        self.torch = torch
        self.lm = lm
        self.cfg = cfg
        self.device = next(lm.parameters()).device
        sync = {"cuda": torch.cuda.synchronize, "mps": getattr(torch, "mps", None) and torch.mps.synchronize}
        self.sync = sync.get(self.device.type) or (lambda: None)
        torch.manual_seed(seed)
        ct = None
        if cfg.conditioners:
            from moshi.conditioners import ConditionAttributes

            attrs = [ConditionAttributes(text=dict(cfg.moshi_mac.generation.conditions), tensor={})]
            ct = lm.condition_provider.prepare_and_provide(attrs)
        self.gen = LMGen(lm, use_sampling=not greedy, temp=AUDIO["temp"], temp_text=TEXT["temp"],
                         top_k=AUDIO["top_k"], top_k_text=TEXT["top_k"], cfg_coef=1.0,
                         condition_tensors=ct)
        self.gen.streaming_forever(1)

    def step(self, codes: np.ndarray) -> None:
        torch = self.torch
        with torch.no_grad():
            self.gen.step(torch.from_numpy(np.asarray(codes, np.int64)[:, :, None]).to(self.device))
        self.sync()  # a GPU step is timed to its end, as MLX's are by mx.eval

    def split(self, codes: np.ndarray) -> dict:
        return self._timed_around(codes, self.gen._streaming_state, "graphed_depth",
                                  lambda *_: self.sync(), lambda _out: self.sync())

    def sampling_ms(self, repeats: int = 20) -> float:
        torch = self.torch
        from moshi.utils.sampling import sample_token

        dtype = next(self.lm.parameters()).dtype
        t = torch.randn(1, 1, 1, self.cfg.text_out_vocab_size).to(self.device, dtype)
        a = [torch.randn(1, 1, 1, self.cfg.card).to(self.device, dtype) for _ in range(self.cfg.dep_q)]

        def draw():
            sample_token(t.float(), True, TEXT["temp"], TEXT["top_k"])
            for x in a:
                sample_token(x.float(), True, AUDIO["temp"], AUDIO["top_k"])
            self.sync()

        with torch.no_grad():
            return _median_ms(draw, repeats)


def build(impl: str, cfg, dtype: str, *, torch_device: str = "cpu", **kw) -> Runner:
    if impl == "moshi-mac":
        return build_moshi_mac(cfg, dtype, **kw)
    for key in ("split_streams", "split_options", "ablate"):
        kw.pop(key, None)
    if impl == "pytorch":
        kw["device"] = torch_device
    builders = {"moshi_mlx": (build_moshi_mlx, "moshi_mlx"), "pytorch": (build_pytorch, "moshi")}
    if impl not in builders:
        raise ValueError(f"unknown implementation {impl!r}")
    fn, package = builders[impl]
    try:
        __import__(package)
    except ImportError as e:
        raise Unsupported(f"{package} is not installed ({e})") from None
    return fn(cfg, dtype, **kw)
