"""Kyutai's files exactly as shipped, at the real shapes, at no memory cost.

- The tensor names and shapes every registry entry expects are compared with what Kyutai's
  own code builds from the official `config.json`: PyTorch `LMModel` on torch's `meta`
  device (per-step projections fused the way the files store them), and `moshi_mlx`'s
  `Lm` with lazy, never evaluated arrays, quantized with `nn.quantize` for q8/q4.
- A header-only copy of each of the 13 registry repos (sparse safetensors files whose
  headers come from that same Kyutai code, the official config.json and file names, a
  real SentencePiece tokenizer of the right size) laid out in a Hugging Face cache passes
  `moshi-mac check --model NAME --no-download` offline, and `--model kyutai/REPO`
  resolves the same files.
- Kyutai's own `s2st-1b.toml` (no `[moshi_mac]` table) and a config.json without
  `model_type` run as the right family, or are refused in one line.

Fixtures: `tests/data/kyutai/` (see its README.md).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from moshi_mac import cli, registry
from moshi_mac.config import from_json_dict, load_config
from moshi_mac.errors import ConfigError
from moshi_mac.mimi_random import mimi_key_shapes
from moshi_mac.modeldir import check_model, from_dir, resolve
from moshi_mac.models.lm import Lm
from moshi_mac.random_model import tiny_config
from moshi_mac.weights import (QUANT_PRESETS, expected_mlx_shapes, expected_pytorch_shapes,
                               quantization_plan)

from .header_only import write_header_only

DATA = Path(__file__).resolve().parent / "data" / "kyutai"
# Official config.json of each packaged config's repos: copies of Kyutai's files where one
# exists (Moshi 7B; the Hibiki 2B shape), else written from MODELS.md (see README.md).
OFFICIAL_JSON = {"moshi-7b": "moshi_7b_202409.json", "hibiki-1b": "hibiki_1b.json",
                 "hibiki-2b": "moshi_mlx_2b.json", "hibiki-zero-3b": "hibiki_zero_3b.json"}
MOSHI_MLX_SUPPORTS = ("moshi-7b", "hibiki-1b", "hibiki-2b")  # not Hibiki-Zero (GQA, rope_concat)
ENTRIES = registry.list_models()
_PROJS = re.compile(r"^(.*)\.(in|out)_projs\.(\d+)\.weight$")


def official_json(stem: str) -> dict:
    return json.loads((DATA / OFFICIAL_JSON[stem]).read_text())


def repo_config_json(entry: registry.ModelEntry) -> dict:
    """The repo's config.json: LM kwargs, the file names and, for Hibiki, model_type."""
    raw = official_json(entry.config)
    if entry.family != "moshi":
        raw["model_type"] = "hibiki"
    raw.update(moshi_name=entry.weights, mimi_name=entry.mimi, tokenizer_name=entry.tokenizer)
    return raw


# ---------------------------------------------------------------------------------------
# What Kyutai's code builds (names -> (safetensors dtype, shape)), never evaluated
# ---------------------------------------------------------------------------------------

_PT_CACHE: dict[str, dict] = {}


def pytorch_state(stem: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """PyTorch `LMModel` on the meta device from the official kwargs; per-step
    projections (`in_projs.{i}`) fused into the files' `in_proj_weight`."""
    if stem not in _PT_CACHE:
        pytest.importorskip("torch")
        pytest.importorskip("moshi")
        from moshi.models.loaders import get_moshi_lm

        kwargs = official_json(stem)
        kwargs.pop("model_type", None)
        out: dict[str, tuple[str, tuple[int, ...]]] = {}
        for k, v in get_moshi_lm(None, kwargs, device="meta").state_dict().items():
            shape = tuple(v.shape)
            dtype = "F32" if k.startswith("condition_provider.") else "BF16"
            m = _PROJS.match(k)
            if m:
                k = f"{m[1]}.in_proj_weight" if m[2] == "in" else f"{m[1]}.out_proj.weight"
                if k in out:
                    shape = (out[k][1][0] + shape[0],) + shape[1:]
            out[k] = (dtype, shape)
        _PT_CACHE[stem] = out
    return _PT_CACHE[stem]


def _st_dtype(v) -> str:
    """The dtype the official MLX files store: packed U32 weights, bf16 for the rest."""
    return "U32" if str(v.dtype).endswith("uint32") else "BF16"


def moshi_mlx_state(stem: str, quant: str | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """`moshi_mlx`'s `Lm` from the official config.json, lazily built; q8/q4 as
    `nn.quantize` makes them (the LUT conditioner left out, which moshi_mlx cannot do)."""
    models = pytest.importorskip("moshi_mlx.models")
    model = models.Lm(models.LmConfig.from_config_dict(official_json(stem)))
    if quant is not None:
        bits, group = QUANT_PRESETS[quant]
        nn.quantize(model, group_size=group, bits=bits, class_predicate=lambda p, m: (
            hasattr(m, "to_quantized") and not p.startswith("condition_provider.")
            and m.weight.shape[-1] % group == 0))
    out = {}
    for k, v in tree_flatten(model.parameters()):
        dtype = "F32" if k.startswith("condition_provider.") else _st_dtype(v)
        out[k] = (dtype, tuple(v.shape))
    return out


def moshi_mac_quantized(cfg, quant: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """What moshi-mac builds for a q8/q4 file of `cfg` (lazily)."""
    model = Lm(cfg)
    bits, group = QUANT_PRESETS[quant]
    quant_plan = quantization_plan(model, bits, group)
    nn.quantize(model, class_predicate=lambda p, m: (
        {"bits": bits, "group_size": group} if p in quant_plan.modules else False))
    return {k: (_st_dtype(v), tuple(v.shape)) for k, v in tree_flatten(model.parameters())}


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: shape for k, (_, shape) in state.items()}


def _diff(got: dict, want: dict) -> list:
    return [(k, got.get(k), want.get(k)) for k in sorted(set(got) | set(want))
            if got.get(k) != want.get(k)]


# ---------------------------------------------------------------------------------------
# Structure: moshi-mac's expectations vs Kyutai's code
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("stem", list(OFFICIAL_JSON))
def test_pytorch_layout_matches_lmmodel_on_meta(stem):
    """Expected PyTorch names and shapes, from the official config.json and from the
    packaged fallback TOML, equal LMModel's state dict (Hibiki-Zero's depformer included:
    no GQA, gated width 4096, in_proj 27648x1024)."""
    want = _shapes(pytorch_state(stem))
    for cfg in (from_json_dict(official_json(stem)), load_config(registry.config_path(stem))):
        assert _diff(expected_pytorch_shapes(cfg), want) == []
    if stem == "hibiki-zero-3b":
        assert want["depformer.layers.0.gating.0.linear_in.weight"] == (8192, 1024)
        assert want["depformer.layers.0.gating.0.linear_out.weight"] == (1024, 4096)
        assert want["depformer.layers.0.self_attn.in_proj_weight"] == (27648, 1024)


@pytest.mark.parametrize("stem", MOSHI_MLX_SUPPORTS)
def test_mlx_layout_matches_moshi_mlx(stem):
    want = _shapes(moshi_mlx_state(stem))
    for cfg in (from_json_dict(official_json(stem)), load_config(registry.config_path(stem))):
        assert _diff(expected_mlx_shapes(cfg), want) == []


@pytest.mark.parametrize("quant", ["q8", "q4"])
@pytest.mark.parametrize("stem", MOSHI_MLX_SUPPORTS)
def test_quantized_mlx_layout_matches_nn_quantize(stem, quant):
    """The set of quantized modules and the shapes of weight/scales/biases of a q8 (group
    64) or q4 (group 32) file equal `nn.quantize`'s at the real widths; Hibiki's LUT
    conditioner stays float."""
    want = moshi_mlx_state(stem, quant)
    got = moshi_mac_quantized(load_config(registry.config_path(stem)), quant)
    assert _diff(_shapes(got), _shapes(want)) == []
    assert {k for k, (d, _) in got.items() if d == "U32"} == \
        {k for k, (d, _) in want.items() if d == "U32"}
    assert not any(k.startswith("condition_provider.") and k.endswith(".scales") for k in got)


def _module_kinds(modules) -> set[str]:
    return {re.sub(r"\.\d+", ".*", m) for m in modules}


@pytest.mark.parametrize("quant", ["q8", "q4"])
@pytest.mark.parametrize("stem", list(OFFICIAL_JSON))
def test_tiny_fixtures_quantize_the_official_module_set(stem, quant):
    """Tiny random models quantize every kind of module the real-width files quantize,
    the depformer included, and nothing else."""
    bits, group = QUANT_PRESETS[quant]
    real = load_config(registry.config_path(stem))
    real_kinds = _module_kinds(quantization_plan(Lm(real), bits, group).modules)
    tiny_kinds = _module_kinds(quantization_plan(Lm(tiny_config(real)), bits, group).modules)
    assert tiny_kinds == real_kinds
    assert any(k.startswith("depformer.") for k in tiny_kinds)
    assert not any(k.startswith("condition_provider.") for k in tiny_kinds)


def test_json_depformer_inherits_like_lmmodel():
    """A key without the `depformer_` prefix configures the depformer too (kv_repeat,
    gating, max_period ...); `depformer_dim_feedforward: null` is hidden_scale x dim."""
    pytest.importorskip("moshi")
    from moshi.models.loaders import get_moshi_lm

    raw = {"dim": 128, "num_heads": 4, "num_layers": 2, "kv_repeat": 2, "hidden_scale": 3,
           "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
           "n_q": 4, "dep_q": 2, "card": 64, "text_card": 100, "delays": [0, 0, 1, 0, 1],
           "depformer_dim": 64, "depformer_num_heads": 2, "depformer_num_layers": 1,
           "depformer_dim_feedforward": None, "depformer_multi_linear": True,
           "depformer_weights_per_step": True, "depformer_pos_emb": "none"}
    cfg = from_json_dict({**raw, "model_type": "moshi"})
    assert cfg.depformer.transformer.kv_repeat == 2 and cfg.depformer.transformer.gating == "silu"
    assert cfg.depformer.transformer.mlp_hidden == 2 * 3 * 64 // 3
    state = {k: tuple(v.shape) for k, v in get_moshi_lm(None, dict(raw), device="meta")
             .state_dict().items()}
    fused = {}
    for k, shape in state.items():
        m = _PROJS.match(k)
        if m:
            k = f"{m[1]}.in_proj_weight" if m[2] == "in" else f"{m[1]}.out_proj.weight"
            shape = (fused[k][0] + shape[0],) + shape[1:] if k in fused else shape
        fused[k] = shape
    assert _diff(expected_pytorch_shapes(cfg), fused) == []


# ---------------------------------------------------------------------------------------
# Header-only repos in a Hugging Face cache
# ---------------------------------------------------------------------------------------

def lm_tensors(entry: registry.ModelEntry) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The official file's header, as Kyutai's code builds it."""
    if entry.layout == "pytorch":
        return pytorch_state(entry.config)
    if entry.config in MOSHI_MLX_SUPPORTS:
        quant = None if entry.quantization == "bf16" else entry.quantization
        return moshi_mlx_state(entry.config, quant)
    raise AssertionError(f"no MLX reference for {entry.name}")  # pragma: no cover


def _put(snapshot: Path, blobs: Path, name: str, write) -> None:
    """A file the way huggingface_hub stores it: a blob, linked from the snapshot."""
    blob = blobs / f"{abs(hash((str(snapshot), name))):x}"
    write(blob)
    (snapshot / name).symlink_to(blob)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[int, Path]:
    from moshi_mac.tokenizer import train_random_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    return {n: train_random_tokenizer(folder / f"spm{n}", n) for n in (32000, 48000)}


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory, tokenizers) -> Path:
    """Every registry repo, header-only, in a Hugging Face cache layout."""
    cache = tmp_path_factory.mktemp("hf-hub")
    for entry in ENTRIES:
        repo = cache / f"models--{entry.repo.replace('/', '--')}"
        snapshot, blobs = repo / "snapshots" / "0123abcd", repo / "blobs"
        snapshot.mkdir(parents=True)
        blobs.mkdir()
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0123abcd")
        cfg_json = repo_config_json(entry)
        _put(snapshot, blobs, "config.json", lambda p: p.write_text(json.dumps(cfg_json)))
        _put(snapshot, blobs, entry.weights, lambda p: write_header_only(p, lm_tensors(entry)))
        mimi = {k: ("F32", s) for k, s in mimi_key_shapes(32).items()}
        _put(snapshot, blobs, entry.mimi, lambda p: write_header_only(p, mimi))
        vocab = cfg_json["text_card"]
        _put(snapshot, blobs, entry.tokenizer, lambda p: shutil.copy(tokenizers[vocab], p))
    return cache


@pytest.fixture
def offline_cache(hf_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(registry, "weights_roots", lambda: [tmp_path / "no-weights"])
    monkeypatch.setattr(registry, "download", lambda *a, **k: pytest.fail("no download"))
    return hf_cache


@pytest.mark.parametrize("name", [e.name for e in ENTRIES])
def test_header_only_repo_passes_check_offline(offline_cache, name, capsys, caplog):
    entry = registry.get_entry(name)
    with caplog.at_level(logging.WARNING, logger="moshi_mac"):
        rc = cli.main(["check", "--model", name, "--no-download"])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "every tensor matches the config" in out
    # the shipped config.json and the packaged fallback agree on every structural field
    assert not [r for r in caplog.records if "disagree" in r.getMessage()]
    files = resolve(name, download=False)
    assert files.config.name == "config.json"  # the shipped config, not the packaged one
    assert files.packaged_config == entry.config_path
    assert files.weights.name == entry.weights and files.expect_quant == entry.quantization
    res = check_model(files)
    assert res.weights.layout == entry.layout
    assert res.weights.quantization.short == entry.quantization
    assert res.config.moshi_mac.model_type == ("moshi" if entry.family == "moshi" else "hibiki")
    # the same files under the repo id, through the CLI too
    assert resolve(entry.repo, download=False) == files
    assert cli.main(["check", "--model", entry.repo, "--no-download"]) == 0


def test_shipped_config_wins_and_disagreement_is_one_line(offline_cache, monkeypatch,
                                                          tmp_path, caplog):
    """The packaged TOML as it was (depformer kv_repeat 2, ff 4224) against the real
    Hibiki-Zero config.json: the shipped one is used, and one line names the fields."""
    packaged = tmp_path / "configs"
    shutil.copytree(registry.config_dir(), packaged)
    old = (packaged / "hibiki-zero-3b.toml").read_text()
    dep = old.index("[depformer.transformer]")
    old = old[:dep] + old[dep:].replace("kv_repeat = 1", "kv_repeat = 2").replace(
        "dim_feedforward = 6144", "dim_feedforward = 4224")
    (packaged / "hibiki-zero-3b.toml").write_text(old)
    monkeypatch.setattr(registry, "config_dir", lambda: packaged)
    files = resolve("hibiki-zero-3b-pytorch-bf16", download=False)
    with caplog.at_level(logging.WARNING, logger="moshi_mac"):
        res = check_model(files)
    assert res.config.depformer.transformer.kv_repeat == 1
    notes = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "depformer.transformer.kv_repeat 1 (shipped) vs 2 (packaged)" in notes[0]
    assert "depformer.transformer.mlp_hidden 4096 (shipped) vs 2816 (packaged)" in notes[0]
    # with the packaged config alone, the old values fail as the issue reported
    files.config, files.packaged_config = packaged / "hibiki-zero-3b.toml", None
    with pytest.raises(Exception, match="linear_in.weight is 8192x1024, expected 5632x1024"):
        check_model(files)


def test_packaged_fallback_when_no_config_ships(offline_cache, tmp_path):
    """A folder holding only the three files runs on the (fixed) packaged config."""
    entry = registry.get_entry("hibiki-zero-3b-pytorch-bf16")
    folder = tmp_path / "weights" / entry.name
    folder.mkdir(parents=True)
    snap = resolve(entry.name, download=False)
    for role in registry.ROLES:
        (folder / getattr(snap, role).name).symlink_to(getattr(snap, role).resolve())
    files = from_dir(folder, entry=entry)
    assert files.config == entry.config_path and files.packaged_config is None
    assert check_model(files).weights.n_params > 2.5e9


def test_unknown_repo_id_offline_is_one_line(offline_cache, capsys):
    assert cli.main(["check", "--model", "someone/not-cached", "--no-download"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "someone/not-cached is not on disk" in err and "download someone/not-cached" in err


# ---------------------------------------------------------------------------------------
# Kyutai's TOML and JSON without a family
# ---------------------------------------------------------------------------------------

def test_kyutai_s2st_toml_with_hibiki_weights_runs_as_hibiki(offline_cache, tmp_path, caplog):
    entry = registry.get_entry("hibiki-1b-bf16")
    snap = resolve(entry.name, download=False)
    folder = tmp_path / "hibiki"
    folder.mkdir()
    for role in registry.ROLES:
        (folder / getattr(snap, role).name).symlink_to(getattr(snap, role).resolve())
    shutil.copy(DATA / "s2st-1b.toml", folder / "config.toml")
    with caplog.at_level(logging.WARNING, logger="moshi_mac"):
        res = check_model(from_dir(folder))
    mm = res.config.moshi_mac
    assert mm.model_type == "hibiki" and mm.text_eos_alias_pad
    assert res.config.delays == [0, 0] + [2] * 7 + [0] + [2] * 7
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1
    assert "running it as hibiki with delays of 2" in notes[0]
    assert "`description` LUT conditioner and 48001-entry text vocabulary" in notes[0]


def test_json_without_model_type_is_inferred(caplog):
    with caplog.at_level(logging.WARNING, logger="moshi_mac"):
        cfg = load_config(DATA / "moshi_mlx_2b.json")
    assert cfg.moshi_mac.model_type == "hibiki" and cfg.moshi_mac.text_eos_alias_pad
    assert cfg.delays[2] == 2
    with caplog.at_level(logging.WARNING, logger="moshi_mac"):
        assert load_config(DATA / "moshi_7b_202409.json").moshi_mac.model_type == "moshi"
    assert "inferred from its 32001-entry text vocabulary" in caplog.records[-1].getMessage()


def test_family_without_evidence_is_refused_in_one_line(tmp_path):
    toml = (DATA / "s2st-1b.toml").read_text()
    toml = toml[:toml.index("[conditioners.description]")]  # 48001 vocab, no LUT
    (tmp_path / "c.toml").write_text(toml)
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "c.toml")
    msg = str(ei.value)
    assert "\n" not in msg and "does not say which model family" in msg
    assert 'add model_type = "hibiki" to a [moshi_mac] table' in msg
    raw = official_json("hibiki-zero-3b")
    del raw["model_type"]
    with pytest.raises(ConfigError, match='add "model_type": "hibiki"'):
        from_json_dict(raw, "config.json")
    with pytest.raises(ConfigError, match="model_type 'tts' is not supported"):
        from_json_dict({**raw, "model_type": "tts"}, "config.json")
