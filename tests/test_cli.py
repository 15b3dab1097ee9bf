"""CLI conventions (as mlx-lm, hf and git do) and what the installed tool writes where.

- `--version`, `python -m moshi_mac`, and the bare command printing its help (exit 0);
- one spelling for outputs, `-o/--output`, on every command that writes one;
- every default shown in --help;
- tables readable at 80 columns (`models`, the translate summary): no row folds, no file
  name is cut;
- random models: the Mimi of a seed is built once in the cache folder and linked, every
  file 0644 (as `open()` makes them under umask 022).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from moshi_mac import __version__, cli, registry
from moshi_mac.translate import summary_table

ROOT = Path(__file__).resolve().parent.parent
WRITERS = ("translate", "convert", "make-random-model", "bench", "doctor")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"moshi-mac": parser, **sub.choices}


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moshi_mac", *args], capture_output=True,
                          text=True, cwd=ROOT / "tests",
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env), timeout=120)


def test_version_bare_command_and_python_m(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"moshi-mac {__version__}"

    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: moshi-mac") and "translate" in out and "bench" in out

    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"moshi-mac {__version__}"
    proc = _run()
    assert proc.returncode == 0 and "COMMAND" in proc.stdout and not proc.stderr


def test_one_output_spelling_everywhere():
    parsers = _subparsers()
    for name in WRITERS:
        options = {s for a in parsers[name]._actions for s in a.option_strings}
        assert {"-o", "--output"} <= options, name
    for name, p in parsers.items():
        options = {s for a in p._actions for s in a.option_strings}
        assert "--out" not in options, name  # (still accepted: argparse takes the prefix)
    args = cli.build_parser().parse_args(["make-random-model", "--config", "hibiki-1b",
                                          "--out", "x"])
    assert args.output == Path("x")


def test_every_default_is_in_help():
    shown = 0
    for name, p in _subparsers().items():
        formatter = p._get_formatter()
        for action in p._actions:
            if not cli._shows_default(action):
                continue
            text = formatter._format_action(action)
            assert "default" in text.lower(), (name, action.option_strings, text)
            shown += 1
    assert shown > 20
    text = _subparsers()["make-random-model"].format_help()
    assert "(default: mlx)" in text and "(default: 0)" in text  # a 0 default is shown too
    assert "default: bandwidth lm mimi e2e" in _subparsers()["bench"].format_help()


def _lines(renderable, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text().splitlines()


def test_models_table_fits_80_columns():
    entries = registry.list_models()
    lines = _lines(cli.models_table(entries, lambda e: False, 80))
    assert max(len(line) for line in lines) <= 80
    for e in entries:  # one line per model, name and repo whole
        (row,) = [line for line in lines if f" {e.name} " in line]
        assert e.repo in row
    wide = _lines(cli.models_table(entries, lambda e: False, 160), width=160)
    assert "config" in wide[2] and "layout" in wide[2]

    proc = _run("models", COLUMNS="80")
    assert proc.returncode == 0
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    assert "hibiki-zero-3b-pytorch-bf16" in proc.stdout and "…" not in proc.stdout


def test_translate_summary_keeps_file_names_at_80_columns():
    name = "interview-with-a-very-long-file-name-2026-11-30.flac"
    row = [name, f"{Path(name).stem}.hibiki.wav (61.04 s)", "776", "104.3 s", "7.4", "1.68",
           "end of translation (EOS)"]
    lines = _lines(summary_table("moshi-mac translate (hibiki-1b, pipelined)", [row], 80))
    assert max(len(line) for line in lines) <= 80
    text = "".join(line.strip("│ ┃") for line in lines)
    assert "…" not in text
    assert "1.68" in text and "EOS" in text  # the real-time factor and the ending stay
    flat = "".join(lines).replace("│", "").replace(" ", "")
    assert name.replace(" ", "") in flat or all(part in flat for part in name.split("-"))
    wide = "\n".join(_lines(summary_table("t", [row], 200), width=200))
    assert "steps/s" in wide and "wall" in wide


def test_random_models_link_one_cached_mimi(tmp_path):
    from moshi_mac.config import load_config
    from moshi_mac.mimi_random import cached_random_mimi
    from moshi_mac.paths import cache_root, file_mode
    from moshi_mac.random_model import make_random_model

    cfg = load_config(ROOT / "configs" / "hibiki-1b.toml")
    a = make_random_model(cfg, tmp_path / "a", tiny=True, seed=0)
    b = make_random_model(cfg, tmp_path / "b", tiny=True, seed=0)
    cached = cached_random_mimi(0)
    assert cached.is_relative_to(cache_root())
    for m in (a, b):
        assert m.mimi.resolve() == cached.resolve() or m.mimi.stat().st_ino == cached.stat().st_ino
        for f in m.folder.iterdir():
            assert f.stat().st_mode & 0o777 == file_mode(), f
    assert cached.stat().st_mode & 0o777 == file_mode()
