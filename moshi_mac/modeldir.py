"""Model resolution: the one place that turns `--model` / `--weights` / a folder into the
files that make a model, and checks them together.

A model is a config, the LM weights, a Mimi checkpoint and a SentencePiece text tokenizer.
`resolve` accepts a registry name (an alias), a Hugging Face repo id, or a folder; every
path (registry, `--weights`, doctor, convert) ends in `from_dir`, so a folder resolves the
same way whichever flag named it:

- file names: the exact names of the repo's `config.json` (`moshi_name`, `mimi_name`,
  `tokenizer_name`) or of the registry entry, else found by pattern (model*.safetensors,
  tokenizer-*/mimi*.safetensors, *.model), the entry's quantization picking among several;
- the config that ships with the weights wins: the folder's `config.toml`, else its
  `config.json` (the PyTorch `LMModel` schema), else a single `*.toml`; an entry's packaged
  `configs/*.toml` is only the fallback. When both exist and disagree on a structural
  field, `check_model` prints one line naming the fields and both values.

`check_model` runs every consistency check in seconds, without loading tensor data.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import registry
from .config import LmConfig, load_config
from .config.family import notice, structural_differences
from .errors import ModelNotFoundError, MoshiMacError, UsageError
from .weights import CheckReport, check_weights


@dataclass
class ModelFiles:
    name: str
    config: Path  # the config to load: the shipped one, else the packaged fallback
    weights: Path
    mimi: Path
    tokenizer: Path
    expect_quant: str | None = None  # from a registry entry; None when unknown
    packaged_config: Path | None = None  # an entry's configs/*.toml, when `config` is not it

    def paths(self) -> dict[str, Path]:
        return {"config": self.config, "weights": self.weights, "mimi": self.mimi,
                "tokenizer": self.tokenizer}


MIMI_PATTERNS = ["tokenizer-*.safetensors", "mimi*.safetensors"]
_QUANT_SUFFIXES = (".q8.safetensors", ".q4.safetensors")


def _one(folder: Path, patterns: list[str], role: str, exclude=(), keep=None) -> Path:
    found = sorted({p for pat in patterns for p in folder.glob(pat)} - set(exclude))
    if keep is not None:
        found = [p for p in found if keep(p)]
    if len(found) == 1:
        return found[0]
    what = ", ".join(patterns)
    if not found:
        raise ModelNotFoundError(f"{folder}: no {role} file ({what}); a model folder holds a "
                                 f"config, the LM weights, a Mimi checkpoint and a tokenizer")
    raise ModelNotFoundError(f"{folder}: several {role} files ({', '.join(p.name for p in found)}); "
                             f"keep one")


def lm_weight_files(folder: str | Path) -> list[Path]:
    """Every LM weights file of a folder (its safetensors files but Mimi's)."""
    folder = Path(folder)
    mimi = {p for pat in MIMI_PATTERNS for p in folder.glob(pat)}
    return sorted(set(folder.glob("*.safetensors")) - mimi)


def _quant_filter(quant: str | None):
    """Which LM file names fit an expected quantization (None: any)."""
    if quant in ("q8", "q4"):
        return lambda p: p.name.endswith(f".{quant}.safetensors")
    if quant is not None:
        return lambda p: not p.name.endswith(_QUANT_SUFFIXES)
    return None


def _shipped_config(folder: Path) -> Path | None:
    for name in ("config.toml", "config.json"):
        if (folder / name).is_file():
            return folder / name
    tomls = sorted(folder.glob("*.toml"))
    return tomls[0] if len(tomls) == 1 else None


def from_dir(folder: str | Path, weights: Path | None = None, *,
             entry: registry.ModelEntry | None = None, name: str | None = None) -> ModelFiles:
    """The files of a model folder (see the module doc). `weights` picks one LM file where
    there are several; `entry` gives the expected names, quantization and fallback config."""
    folder = Path(folder)
    if folder.is_file():
        raise UsageError(f"--weights {folder} is a file; a model folder holds a config, the LM "
                         f"weights, a Mimi checkpoint and a tokenizer: pass the folder "
                         f"{folder.parent}")
    if not folder.is_dir():
        raise ModelNotFoundError(f"--weights {folder}: no such directory")
    names = dict(zip(registry.ROLES, entry.files)) if entry is not None else {}
    names.update(registry.names_from_config_json(folder / "config.json"))

    def exact(role: str) -> Path | None:
        path = folder / names[role] if role in names else None
        return path if path is not None and path.is_file() else None

    config = _shipped_config(folder)
    packaged = entry.config_path if entry is not None else None
    if config is None:
        if packaged is None:
            raise ModelNotFoundError(
                f"{folder}: no config (config.toml or config.json); a model folder holds a "
                f"config, the LM weights, a Mimi checkpoint and a tokenizer")
        config, packaged = packaged, None
    mimi = exact("mimi") or _one(folder, MIMI_PATTERNS, "Mimi")
    tokenizer = exact("tokenizer") or _one(folder, ["*.model"], "text tokenizer")
    quant = entry.quantization if entry is not None else None
    if weights is None:
        weights = exact("weights") or _one(folder, ["*.safetensors"], "LM weights",
                                           exclude=[mimi], keep=_quant_filter(quant))
    return ModelFiles(name or (entry.name if entry else folder.name), config, Path(weights),
                      mimi, tokenizer, quant, packaged)


def local_files(target: registry.ModelEntry | str) -> ModelFiles | None:
    """The files of a registry entry, name or repo id found on disk (weights folders, then
    the Hugging Face cache; see `registry`), or None. Never touches the network."""
    if isinstance(target, str):
        entry = registry.lookup(target)
        repo = entry.repo if entry is not None else target
    else:
        entry, repo = target, target.repo
    label = entry.name if entry is not None else repo
    folders = registry.model_folders(entry or repo)
    snapshot = registry.cached_snapshot(repo, entry)
    if snapshot is not None:
        folders.append(snapshot)
    for folder in folders:
        if folder.is_dir():
            try:
                return from_dir(folder, entry=entry, name=label)
            except ModelNotFoundError:
                continue
    return None


def resolve(model: str | None = None, weights: str | Path | None = None,
            download: bool = True, progress: bool = True) -> ModelFiles:
    """`--weights DIR` or `--model NAME|REPO|DIR` to the model's files: local first, then
    (unless `download` is False) a download into the Hugging Face cache."""
    if weights is not None and model is not None:
        raise UsageError("give either --model or --weights, not both")
    if weights is not None:
        return from_dir(weights)
    if model is None:
        raise UsageError("no model given: pass --model NAME (see `moshi-mac models`), a "
                         "Hugging Face repo id, or --weights DIR")
    if Path(model).is_dir():
        return from_dir(model)
    entry = registry.lookup(model)
    if entry is None and not registry.is_repo_id(model):
        registry.get_entry(model)  # raises: unknown name, with the closest one
    target = entry or model
    found = local_files(target)
    if found is not None:
        return found
    if not download:
        raise ModelNotFoundError(f"{model} is not on disk; " + registry.manual_instructions(target))
    folder = registry.download(target, progress=progress)
    return from_dir(folder, entry=entry, name=entry.name if entry else model)


def config_label(path: Path, cfg: LmConfig) -> str:
    """A name for messages: the shipped config this one has the shape of, else the file."""
    for shipped in sorted(registry.config_dir().glob("*.toml")):
        ref = load_config(shipped)
        t, r = cfg.transformer, ref.transformer
        if (t.d_model, t.num_layers, cfg.text_in_vocab_size, cfg.audio_codebooks) == \
                (r.d_model, r.num_layers, ref.text_in_vocab_size, ref.audio_codebooks):
            return shipped.stem if path.stem == shipped.stem else f"{path.name} ({shipped.stem})"
    return path.name


def link_or_copy(src: str | Path, dst: Path) -> None:
    """Put a model file into a folder: a hard link when possible (no extra disk), else a
    copy. Symlinks are followed (the Hugging Face cache links to blobs)."""
    src = Path(src).resolve()
    if not src.is_file():
        raise MoshiMacError(f"{src}: no such file")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@dataclass
class ModelCheck:
    files: ModelFiles
    config: LmConfig
    weights: CheckReport
    tokenizer_vocab: int
    mimi_codebooks: int


def check_model(files: ModelFiles) -> ModelCheck:
    """Config vs LM weights vs tokenizer vs Mimi; raises a one-line error on the first
    mismatch."""
    from .codec import check_mimi
    from .tokenizer import check_tokenizer

    cfg = load_config(files.config)
    if files.packaged_config is not None:
        _note_disagreement(files, cfg)
    name = config_label(files.config, cfg)
    report = check_weights(files.weights, cfg, name, files.expect_quant)
    vocab = check_tokenizer(files.tokenizer, cfg.text_out_vocab_size).vocab_size()
    codebooks = check_mimi(files.mimi, cfg.mimi_codebooks)
    return ModelCheck(files, cfg, report, vocab, codebooks)


def _note_disagreement(files: ModelFiles, shipped: LmConfig) -> None:
    """One line when the shipped config and the packaged fallback differ structurally."""
    packaged = load_config(files.packaged_config)
    diffs = structural_differences(shipped, packaged)
    if diffs:
        fields = "; ".join(f"{k} {a!r} (shipped) vs {b!r} (packaged)" for k, a, b in diffs[:6])
        more = f"; +{len(diffs) - 6} more" if len(diffs) > 6 else ""
        notice(f"{files.config.name} beside the weights and the packaged "
               f"{files.packaged_config.name} disagree: {fields}{more}; using {files.config.name}")
