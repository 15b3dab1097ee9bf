"""The model registry: names, configs, local lookup, download errors (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest

from moshi_mac import registry
from moshi_mac.config import load_config
from moshi_mac.errors import ModelNotFoundError
from moshi_mac.modeldir import ModelFiles, from_dir

NAMES = [e.name for e in registry.list_models()]
REAL_OFFLINE = registry._offline


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty weights folder and HF cache under tmp_path; the real ones are never seen."""
    weights = tmp_path / "weights"
    weights.mkdir()
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(registry, "weights_roots", lambda: [weights])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(registry, "_offline", lambda: False)
    monkeypatch.setattr(registry, "_unreachable", lambda: None)
    return weights, cache


def _fill(folder: Path, files) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f).write_bytes(b"x")


def test_expected_models_are_registered():
    expected = {
        "moshiko-bf16", "moshiko-q8", "moshiko-q4", "moshiko-pytorch-bf16",
        "moshika-bf16", "moshika-q8", "moshika-q4", "moshika-pytorch-bf16",
        "hibiki-1b-bf16", "hibiki-1b-pytorch-bf16", "hibiki-2b-bf16", "hibiki-2b-pytorch-bf16",
        "hibiki-zero-3b-pytorch-bf16",
    }
    assert set(NAMES) == expected
    assert registry.model_names() == NAMES


def test_names_and_repos_unique():
    assert len(NAMES) == len(set(NAMES))
    repos = [e.repo for e in registry.list_models()]
    assert len(repos) == len(set(repos))


@pytest.mark.parametrize("name", NAMES)
def test_entry_config_loads(name):
    entry = registry.get_entry(name)
    path = registry.config_path(name)
    assert path == entry.config_path and path.is_file()
    cfg = load_config(path)
    assert cfg.moshi_mac.model_type == ("moshi" if entry.family == "moshi" else "hibiki")
    tok = {"moshi": "tokenizer_spm_32k_3.model"}.get(entry.family,
                                                      "tokenizer_spm_48k_multi6_2.model")
    assert entry.tokenizer == tok
    assert cfg.text_in_vocab_size == (32001 if entry.family == "moshi" else 48001)


def test_entry_fields():
    e = registry.get_entry("moshiko-q8")
    assert (e.repo, e.weights, e.quantization, e.layout, e.config) == (
        "kyutai/moshiko-mlx-q8", "model.q8.safetensors", "q8", "mlx", "moshi-7b")
    assert e.mimi == "tokenizer-e351c8d8-checkpoint125.safetensors"
    assert registry.get_entry("moshika-q4").weights == "model.q4.safetensors"
    assert registry.get_entry("moshiko-pytorch-bf16").repo == "kyutai/moshiko-pytorch-bf16"
    h = registry.get_entry("hibiki-1b-bf16")
    assert (h.repo, h.config, h.quantization, h.layout) == (
        "kyutai/hibiki-1b-mlx-bf16", "hibiki-1b", "bf16", "mlx")
    z = registry.get_entry("hibiki-zero-3b-pytorch-bf16")
    assert (z.repo, z.config, z.layout) == (
        "kyutai/hibiki-zero-3b-pytorch-bf16", "hibiki-zero-3b", "pytorch")


def test_config_dir_has_every_config():
    d = registry.config_dir()
    assert d.is_dir()
    assert {e.config for e in registry.list_models()} <= {p.stem for p in d.glob("*.toml")}
    assert registry.config_path("hibiki-1b") == d / "hibiki-1b.toml"


@pytest.mark.parametrize("typo,closest", [
    ("moshiko-q9", "moshiko-q8"), ("hibiki1b-bf16", "hibiki-1b-bf16"),
    ("hibiki-zero-3b", "hibiki-zero-3b-pytorch-bf16")])
def test_unknown_name_names_closest(typo, closest):
    with pytest.raises(ModelNotFoundError) as ei:
        registry.get_entry(typo)
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"did you mean {closest!r}" in msg


def test_local_lookup_in_weights_folder(isolated):
    weights, _ = isolated
    e = registry.get_entry("hibiki-1b-bf16")
    assert registry.local_files(e) is None
    _fill(weights / e.name, e.files[:2])  # incomplete: no tokenizer
    assert registry.local_files(e) is None
    _fill(weights / e.name, e.files)
    found = registry.local_files(e)
    assert found is not None
    assert found.weights == weights / e.name / e.weights
    assert found.mimi == weights / e.name / e.mimi
    assert found.tokenizer == weights / e.name / e.tokenizer
    assert found.config == e.config_path  # no config in the folder: the packaged one
    assert found.packaged_config is None
    assert registry.ensure(e.name) == found  # local first: no download attempted


def test_weights_folder_config_and_guessed_names(isolated):
    weights, _ = isolated
    e = registry.get_entry("moshika-q4")
    folder = weights / e.name
    # Hand-placed files under other names: found by pattern, q4 picked over bf16.
    _fill(folder, ["model.safetensors", "moshika.q4.safetensors",
                   "tokenizer-abc-checkpoint1.safetensors", "tokenizer_spm_32k_3.model"])
    (folder / "config.toml").write_text("")
    found = registry.local_files(e.name)
    assert found.weights.name == "moshika.q4.safetensors"
    assert found.mimi.name == "tokenizer-abc-checkpoint1.safetensors"
    assert found.config == folder / "config.toml"


def test_weights_folder_config_json_names_win(isolated):
    weights, _ = isolated
    e = registry.get_entry("hibiki-2b-bf16")
    folder = weights / "hibiki-2b-mlx-bf16"  # the repo basename is accepted too
    _fill(folder, ["a.safetensors", "b.safetensors", "mimi-x.safetensors", "tok.model"])
    (folder / "config.json").write_text(json.dumps(
        {"moshi_name": "b.safetensors", "mimi_name": "mimi-x.safetensors",
         "tokenizer_name": "tok.model"}))
    found = registry.local_files(e)
    assert found.weights == folder / "b.safetensors"
    assert found.tokenizer == folder / "tok.model"
    assert found.config == folder / "config.json"  # the shipped config wins
    assert found.packaged_config == e.config_path  # the fallback, compared at check time


def test_local_lookup_in_hf_cache(isolated):
    _, cache = isolated
    e = registry.get_entry("moshiko-q8")
    snap = cache / f"models--{e.repo.replace('/', '--')}" / "snapshots" / "abc123"
    _fill(snap, e.files)
    refs = snap.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    found = registry.local_files(e)
    assert found is not None
    assert found.weights == snap / e.weights
    assert found.config == e.config_path


def test_default_weights_roots_include_repo_weights():
    roots = [p.resolve() for p in registry.weights_roots()]
    repo_root = Path(registry.__file__).resolve().parent.parent
    assert (repo_root / "weights").resolve() in roots


def test_offline_download_error_is_one_line(isolated, monkeypatch):
    monkeypatch.setattr(registry, "_offline", REAL_OFFLINE)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    called = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: called.append(a) or "/nowhere")
    e = registry.get_entry("hibiki-zero-3b-pytorch-bf16")
    with pytest.raises(ModelNotFoundError) as ei:
        registry.ensure(e.name)
    msg = str(ei.value)
    assert "\n" not in msg
    assert not called
    assert "HF_HUB_OFFLINE" in msg
    for f in e.files:
        assert f in msg
    assert f"weights/{e.name}/" in msg
    assert f"{registry.hf_download_command(e.repo)} " in msg
    assert ei.value.__suppress_context__ or ei.value.__cause__ is None


@pytest.mark.parametrize("exc", [
    ConnectionError("[Errno 101] Network is unreachable\nsecond line"),
    TimeoutError("timed out"),
    OSError("No route to host"),
])
def test_network_failure_is_one_line(isolated, monkeypatch, exc):
    def boom(*a, **k):
        raise exc
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    e = registry.get_entry("moshiko-bf16")
    with pytest.raises(ModelNotFoundError) as ei:
        registry.download(e.name, progress=False)
    msg = str(ei.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert e.weights in msg and e.mimi in msg and e.tokenizer in msg
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_unreachable_hub_fails_fast(isolated, monkeypatch):
    monkeypatch.setattr(registry, "_unreachable", lambda: "huggingface.co is unreachable: x")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: pytest.fail("must not try to download"))
    with pytest.raises(ModelNotFoundError, match="unreachable"):
        registry.download("moshiko-q4")


def _fake_hub(tmp_path, repo_files: dict[str, bytes]):
    calls = []

    def fake(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        if filename not in repo_files:
            from huggingface_hub.errors import EntryNotFoundError
            try:
                raise EntryNotFoundError(f"404 {filename}")
            except TypeError:  # pragma: no cover - constructor differs across versions
                raise EntryNotFoundError(f"404 {filename}", response=None)
        path = tmp_path / "dl" / repo_id / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(repo_files[filename])
        return str(path)
    return fake, calls


def test_simulated_download_returns_paths(isolated, monkeypatch, tmp_path):
    e = registry.get_entry("moshiko-q8")  # repo without config.json: that 404 is tolerated
    fake, calls = _fake_hub(tmp_path, {f: b"x" for f in e.files})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    found = registry.ensure(e.name, progress=False)
    assert [f for _, f in calls] == ["config.json", *e.files]
    assert isinstance(found, ModelFiles) and found.expect_quant == "q8"
    assert all(r == e.repo for r, _ in calls)
    for role, fname in zip(registry.ROLES, e.files):
        assert getattr(found, role) == tmp_path / "dl" / e.repo / fname
        assert getattr(found, role).is_file()
    assert found.config == e.config_path


def test_simulated_download_uses_repo_config_names(isolated, monkeypatch, tmp_path):
    e = registry.get_entry("hibiki-1b-pytorch-bf16")
    names = {"moshi_name": "hibiki-real@1.safetensors", "mimi_name": "mimi-real.safetensors",
             "tokenizer_name": "tok-real.model"}
    files = {"config.json": json.dumps(names).encode(), **{n: b"x" for n in names.values()}}
    fake, calls = _fake_hub(tmp_path, files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    found = from_dir(registry.download(e.name), entry=e)
    assert found.weights.name == "hibiki-real@1.safetensors"
    assert found.tokenizer.name == "tok-real.model"
    assert found.config.name == "config.json" and found.packaged_config == e.config_path
    assert [f for _, f in calls] == ["config.json", *names.values()]


def test_missing_file_in_repo_is_one_line(isolated, monkeypatch, tmp_path):
    e = registry.get_entry("hibiki-2b-pytorch-bf16")
    fake, _ = _fake_hub(tmp_path, {e.weights: b"x"})  # mimi and tokenizer absent
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(ModelNotFoundError) as ei:
        registry.download(e.name)
    assert "\n" not in str(ei.value) and e.mimi in str(ei.value)


def test_progress_flag_restores_progress_bars(isolated, monkeypatch, tmp_path):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    e = registry.get_entry("moshiko-bf16")
    enable_progress_bars()  # an earlier test may have left them off
    if are_progress_bars_disabled():
        pytest.skip("HF_HUB_DISABLE_PROGRESS_BARS is set in the environment")
    seen = []

    def fake(repo_id, filename, **kwargs):
        seen.append(are_progress_bars_disabled())
        p = tmp_path / filename
        p.write_bytes(b"x")
        return str(p)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    registry.download(e.name, progress=False)
    assert seen and all(seen)
    assert not are_progress_bars_disabled()


def test_gated_repo_is_one_line(isolated, monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    def gated(*a, **k):
        raise GatedRepoError("401 Client Error.\nCannot access gated repo for url ...",
                             response=None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    e = registry.get_entry("hibiki-zero-3b-pytorch-bf16")
    with pytest.raises(ModelNotFoundError) as ei:
        registry.ensure(e.name)
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"accept its terms on https://huggingface.co/{e.repo}" in msg
    assert msg.endswith("then run `hf auth login`")


def test_download_hint_follows_huggingface_hub_version(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "__version__", "1.2.0")
    assert registry.hf_download_command("kyutai/x", ["a"]) == "hf download kyutai/x a"
    monkeypatch.setattr(huggingface_hub, "__version__", "0.36.2")
    assert registry.hf_download_command("kyutai/x") == "huggingface-cli download kyutai/x"


def test_repo_id_is_an_alias_and_any_repo_with_config_json_resolves(isolated, monkeypatch,
                                                                    tmp_path):
    from moshi_mac.modeldir import resolve

    assert registry.lookup("kyutai/hibiki-1b-mlx-bf16").name == "hibiki-1b-bf16"
    names = {"moshi_name": "lm.safetensors", "mimi_name": "mimi-x.safetensors",
             "tokenizer_name": "tok.model"}
    files = {"config.json": json.dumps(names).encode(), **{n: b"x" for n in names.values()}}
    fake, calls = _fake_hub(tmp_path, files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    found = resolve("someone/my-finetune", progress=False)
    assert found.name == "someone/my-finetune" and found.weights.name == "lm.safetensors"
    assert found.config.name == "config.json" and found.packaged_config is None
    assert found.expect_quant is None
    assert [f for _, f in calls] == ["config.json", *names.values()]
    # a repo whose config.json names no files is refused in one line
    fake, _ = _fake_hub(tmp_path, {"config.json": b"{}"})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(ModelNotFoundError) as ei:
        resolve("someone/other", progress=False)
    assert "\n" not in str(ei.value) and "names no moshi_name" in str(ei.value)
    # a typo that is no repo id still names the closest registry name
    with pytest.raises(ModelNotFoundError, match="did you mean 'hibiki-1b-bf16'"):
        resolve("hibiki-1b-bf61", download=False)


def test_one_resolver_for_every_path(isolated):
    """A folder resolves to the same files under --model DIR, --weights DIR, a registry
    weights folder, doctor and convert (one resolver: modeldir.from_dir)."""
    from moshi_mac.convert import source_files
    from moshi_mac.doctor import resolve_for_doctor
    from moshi_mac.modeldir import resolve

    weights, _ = isolated
    e = registry.get_entry("hibiki-1b-bf16")
    folder = weights / e.name
    _fill(folder, e.files)
    (folder / "config.json").write_text(json.dumps({"moshi_name": e.weights}))
    want = (folder / "config.json", folder / e.weights, folder / e.mimi, folder / e.tokenizer)
    for files in (resolve(str(folder)), resolve(weights=folder), source_files(folder),
                  resolve_for_doctor(None, folder, None)[0], resolve(e.name, download=False),
                  resolve(e.repo, download=False)):
        assert (files.config, files.weights, files.mimi, files.tokenizer) == want


def test_packaged_configs_have_one_home():
    """The configs are package data; the checkout's top-level configs/ is a link to them."""
    root = Path(registry.__file__).resolve().parent.parent
    assert registry.config_dir() == Path(registry.__file__).resolve().parent / "configs"
    if (root / "configs").exists():
        assert (root / "configs").resolve() == registry.config_dir()
