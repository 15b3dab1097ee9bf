"""Model directories: the four files that make a model, found, checked and loaded together.

A model is a config (config.toml, or an official config.json), the LM weights
(model*.safetensors), a Mimi checkpoint (tokenizer-*.safetensors or mimi*.safetensors)
and a SentencePiece text tokenizer (*.model). `--weights DIR` accepts such a folder;
`--model NAME` resolves a registry entry (local files first, download on first use).
`check_model` runs every consistency check in seconds, without loading tensor data.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import registry
from .config import LmConfig, load_config
from .errors import ModelNotFoundError, MoshiMacError, UsageError
from .weights import CheckReport, check_weights


@dataclass
class ModelFiles:
    name: str
    config: Path
    weights: Path
    mimi: Path
    tokenizer: Path
    expect_quant: str | None = None  # from a registry entry; None when unknown


def _one(folder: Path, patterns: list[str], role: str, exclude=()) -> Path:
    found = sorted({p for pat in patterns for p in folder.glob(pat)} - set(exclude))
    if len(found) == 1:
        return found[0]
    what = ", ".join(patterns)
    if not found:
        raise ModelNotFoundError(f"{folder}: no {role} file ({what}); a model folder holds a "
                                 f"config, the LM weights, a Mimi checkpoint and a tokenizer")
    raise ModelNotFoundError(f"{folder}: several {role} files ({', '.join(p.name for p in found)}); "
                             f"keep one")


MIMI_PATTERNS = ["tokenizer-*.safetensors", "mimi*.safetensors"]


def lm_weight_files(folder: str | Path) -> list[Path]:
    """Every LM weights file of a folder (its safetensors files but Mimi's)."""
    folder = Path(folder)
    mimi = {p for pat in MIMI_PATTERNS for p in folder.glob(pat)}
    return sorted(set(folder.glob("*.safetensors")) - mimi)


def from_dir(folder: str | Path, weights: Path | None = None) -> ModelFiles:
    """The files of a model folder; `weights` picks one LM file where there are several."""
    folder = Path(folder)
    if folder.is_file():
        raise UsageError(f"--weights {folder} is a file; a model folder holds a config, the LM "
                         f"weights, a Mimi checkpoint and a tokenizer: pass the folder "
                         f"{folder.parent}")
    if not folder.is_dir():
        raise ModelNotFoundError(f"--weights {folder}: no such directory")
    config = folder / "config.toml"
    if not config.is_file():
        config = _one(folder, ["config.json", "*.toml"], "config")
    mimi = _one(folder, MIMI_PATTERNS, "Mimi")
    if weights is None:
        weights = _one(folder, ["*.safetensors"], "LM weights", exclude=[mimi])
    tokenizer = _one(folder, ["*.model"], "text tokenizer")
    return ModelFiles(folder.name, config, Path(weights), mimi, tokenizer)


def resolve(model: str | None = None, weights: str | Path | None = None,
            download: bool = True) -> ModelFiles:
    """`--weights DIR` or `--model NAME` (a registry name) to the model's files."""
    if weights is not None and model is not None:
        raise UsageError("give either --model or --weights, not both")
    if weights is not None:
        return from_dir(weights)
    if model is None:
        raise UsageError("no model given: pass --model NAME (see `moshi-mac models`) or --weights DIR")
    if Path(model).is_dir():
        return from_dir(model)
    entry = registry.get_entry(model)
    files = registry.ensure(model) if download else registry.local_files(entry)
    if files is None:
        raise ModelNotFoundError(registry.manual_instructions(entry))
    return ModelFiles(entry.name, Path(files["config"]), Path(files["weights"]),
                      Path(files["mimi"]), Path(files["tokenizer"]), entry.quantization)


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
    name = config_label(files.config, cfg)
    report = check_weights(files.weights, cfg, name, files.expect_quant)
    vocab = check_tokenizer(files.tokenizer, cfg.text_out_vocab_size).vocab_size()
    codebooks = check_mimi(files.mimi, cfg.mimi_codebooks)
    return ModelCheck(files, cfg, report, vocab, codebooks)
