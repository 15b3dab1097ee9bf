"""`moshi-mac convert`: an official checkpoint (PyTorch or MLX layout) -> an MLX model folder.

`convert(SRC, OUT, quantize=None)` takes a registry name (e.g. hibiki-zero-3b-pytorch-bf16,
found locally or downloaded) or a folder holding a config (the repo's config.json in the
PyTorch schema, or our config.toml), the LM weights, a Mimi checkpoint and a text
tokenizer. It writes OUT/config.toml (our TOML schema with its [moshi_mac] table),
OUT/model.safetensors (or model.q8 / model.q4.safetensors) in the MLX layout, and links
(or copies) Mimi and the tokenizer beside them. The source is checked first and the
result is checked again before it is moved into place, atomically (temp folder + rename).

Memory: tensors are never all in memory at once. The source is loaded lazily (`mx.load`
reads only what is evaluated), mapped PyTorch -> MLX and optionally quantized, all lazily;
`save_safetensors_streamed` then evaluates, writes and drops one entry at a time. Shared
weights (Hibiki-Zero's depformer schedule maps one PyTorch tensor to several slices) are
written once per slice, as the MLX layout wants, from one evaluation. Peak memory is about
the largest tensor, not the model (see benchmarks/convert_memory.py). Float dtypes are
kept as stored (bf16 stays bf16).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import MoshiMacError
from .quant import QUANT_PRESETS



@dataclass
class ConvertResult:
    folder: Path
    weights: Path
    source_layout: str
    quantization: str
    n_tensors: int
    bytes_written: int


def _mlx_tensors(path: Path, cfg, layout: str, quant) -> dict:
    """Output name -> lazy array. Nothing is read until `save_safetensors_streamed`
    evaluates an entry, and each entry is dropped once written (the dict holds the only
    references to the memory-mapped source), so memory stays at about one tensor."""
    import mlx.core as mx

    from .weights import pytorch_to_mlx, quantize_tensors

    tensors = mx.load(str(path))
    if layout == "pytorch":
        tensors = pytorch_to_mlx(cfg, tensors)
    return quantize_tensors(tensors, quant) if quant else tensors


def source_files(src: str | Path, config: str | Path | None = None):
    """A model folder, registry name or repo id -> `ModelFiles` (`modeldir.resolve`, the
    resolver every command uses), with the config optionally overridden."""
    from . import registry
    from .modeldir import resolve

    if Path(src).exists() and not Path(src).is_dir():
        raise MoshiMacError(f"{src} is a file; pass the folder that holds the checkpoint, its "
                            f"config, Mimi and tokenizer, or a registry name")
    files = resolve(str(src))
    if config is not None:
        path = Path(config)
        files.config = path if path.is_file() else registry.config_path(str(config))
        files.packaged_config = None
    return files


def _mimi_name(path: Path) -> str:
    from .codec import MIMI_FILE
    from .modeldir import MIMI_PATTERNS

    return path.name if any(path.match(p) for p in MIMI_PATTERNS) else MIMI_FILE


def convert(src: str | Path, out: str | Path, quantize: str | None = None, *, force: bool = False,
            config: str | Path | None = None, progress=None) -> ConvertResult:
    """Convert `src` into the MLX model folder `out` (see the module docstring)."""
    import mlx.core as mx

    from .modeldir import check_model, from_dir, link_or_copy
    from .models.lm import Lm
    from .quant import LM_FILE
    from .safetensors_io import save_safetensors_streamed
    from .weights import quantization_plan, read_header

    if quantize is not None and quantize not in QUANT_PRESETS:
        raise MoshiMacError(f"--quantize must be one of {', '.join(QUANT_PRESETS)}, got {quantize!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise MoshiMacError(f"{out} exists and is not empty; pass --force to replace it")
    files = source_files(src, config)
    if out.exists() and out.resolve() in {Path(p).resolve().parent for p in
                                          (files.weights, files.mimi, files.tokenizer)}:
        raise MoshiMacError(f"{out} holds the source files; choose another output folder")
    src_check = check_model(files)
    cfg, report = src_check.config, src_check.weights
    if report.quantization.modules and quantize:
        raise MoshiMacError(f"{files.weights.name} is already {report.quantization.label}; "
                            f"convert from the bf16 weights to quantize")
    quant = None
    if quantize:
        quant = quantization_plan(Lm(cfg), *QUANT_PRESETS[quantize])
    label = quantize or report.quantization.short
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work.chmod(0o755)
    old_cache = mx.set_cache_limit(0)  # freed tensor buffers go back to the OS at once
    try:
        (work / "config.toml").write_text(
            f"# Converted by `moshi-mac convert` from {src} ({files.weights.name}, "
            f"{report.layout} layout, {report.quantization.label})"
            + (f", quantized to {quantize}" if quantize else "") + ".\n" + cfg.to_toml())
        weights = work / LM_FILE.get(label, LM_FILE["bf16"])
        if progress:
            progress(f"writing {weights.name}")
        save_safetensors_streamed(weights, _mlx_tensors(files.weights, cfg, report.layout, quant),
                                  {"format": "mlx", "source": files.weights.name})
        link_or_copy(files.mimi, work / _mimi_name(files.mimi))
        link_or_copy(files.tokenizer, work / files.tokenizer.name)
        if progress:
            progress("checking the result")
        out_files = from_dir(work)
        out_files.expect_quant = label
        check_model(out_files)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(work, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(work, out)
    finally:
        mx.set_cache_limit(old_cache)
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    final = out / weights.name
    return ConvertResult(out, final, report.layout, label, len(read_header(final)), final.stat().st_size)


def verify(src_files, out: Path, steps: int = 16):
    """Teacher-forced logits of the converted model vs the source (see doctor.Agreement)."""
    from .config import load_config
    from .doctor.numerics import logit_agreement, probe_codes, score_probe
    from .modeldir import from_dir
    from .weights import load_lm

    cfg = load_config(src_files.config)
    codes = probe_codes(cfg, steps=steps)
    src_model, _ = load_lm(src_files.weights, cfg, "source")
    ref = score_probe(src_model, codes)
    del src_model
    out_model, _ = load_lm(from_dir(out).weights, cfg, "converted")
    return logit_agreement(ref, score_probe(out_model, codes))


def main(args) -> int:
    import time

    from .cli import console

    t0 = time.perf_counter()
    with console.status(f"converting {args.src}") as status:
        res = convert(args.src, args.output, args.quantize, force=args.force, config=args.config,
                      progress=lambda m: status.update(f"converting {args.src}: {m}"))
    console.print(f"[green]wrote[/] {res.folder}: {res.weights.name} ({res.n_tensors} tensors, "
                  f"{res.bytes_written / 2**30:.2f} GiB, {res.quantization}, from the "
                  f"{res.source_layout} layout) in {time.perf_counter() - t0:.0f} s; "
                  f"check: OK")
    if args.verify:
        with console.status("comparing teacher-forced logits with the source"):
            a = verify(source_files(args.src, args.config), res.folder)
        console.print(f"converted vs source: {a.describe()}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="an official PyTorch (or MLX) checkpoint -> an MLX model folder, "
                        "optionally quantized")
    p.add_argument("src", help="a registry name (see `moshi-mac models`) or a model folder "
                               "(config.json or config.toml, weights, Mimi, tokenizer)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the folder to write")
    p.add_argument("--quantize", choices=list(QUANT_PRESETS), help="quantize while converting")
    p.add_argument("--config", help="use this config (a file, or a name from configs/) "
                                    "instead of the source's")
    p.add_argument("--force", action="store_true", help="replace the output folder")
    p.add_argument("--verify", action="store_true",
                   help="then compare teacher-forced logits with the source (loads both)")
    p.set_defaults(func=main)


if __name__ == "__main__":  # pragma: no cover
    from .cli import main as cli_main

    sys.exit(cli_main(["convert", *sys.argv[1:]]))
