"""The `moshi-mac` command line: argument parsing, dispatch, and user-facing errors.

Each subcommand is a small handler here or a `main(args)` in its own module. A
`MoshiMacError` (and an argparse usage error) becomes one line on stderr and its exit
code; SIGINT / SIGTERM / SIGHUP exit with 130 / 143 / 129 after the command has kept its
partial outputs (signals.py). The scheme is in errors.py. User text (paths, names) is
escaped before rich prints it: `[fr]` in a file name is text, not markup.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import EXIT_USAGE, Interrupted, MoshiMacError, UsageError, signal_exit_code, signal_name
from .quant import QUANT_PRESETS
from .tables import Column, fit_table

console = Console()
err_console = Console(stderr=True)


def _shows_default(action: argparse.Action) -> bool:
    """Whether --help should state this option's default (flags and unset ones have none)."""
    default = action.default
    return (default is not None and default is not False and default != argparse.SUPPRESS
            and default not in ("", [], ()) and action.nargs != 0
            and (bool(action.option_strings) or action.nargs in ("?", "*")))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every default in --help: "(default: X)" after an option's help, or as its help,
    unless the help already states it; lists shown as "a b c"."""

    def _format_action(self, action):
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = (action.help or "").strip()
        if _shows_default(action) and "default" not in text.lower():
            text = f"{text} (default: %(default)s)".strip()
        return text

    def _expand_help(self, action):
        if isinstance(action.default, (list, tuple)):
            action = copy.copy(action)
            action.default = " ".join(map(str, action.default))
        return super()._expand_help(action)


class Parser(argparse.ArgumentParser):
    """moshi-mac's parsers (subcommands included): defaults shown in --help."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):
        """A usage error as one line (`UsageError`, exit 2), not usage + error."""
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (one of)")
    g.add_argument("--model", "-m", help="registry name (see `moshi-mac models`) or Hugging Face "
                                         "repo id (e.g. kyutai/hibiki-1b-mlx-bf16)")
    g.add_argument("--weights", "-w", type=Path, help="a model folder: config, LM weights, Mimi, tokenizer")


def shipped_generation_values(name: str) -> str:
    """The value of `[moshi_mac.generation]` field `name` in the shipped model configs, for
    `--help`: "0.8", or "0.8 (hibiki-1b), 0.9 (moshi-7b)" when they differ."""
    import tomllib
    from dataclasses import fields

    from .config import GenerationConfig
    from .registry import config_dir

    default = {f.name: f.default for f in fields(GenerationConfig)}[name]
    values = {}
    for path in sorted(config_dir().glob("*.toml")):
        gen = tomllib.loads(path.read_text()).get("moshi_mac", {}).get("generation", {})
        values[path.stem] = gen.get(name, default)
    if len(set(values.values())) <= 1:
        return f"{next(iter(values.values()), default)}"
    return ", ".join(f"{v} ({k})" for k, v in values.items())


def add_generation_args(p: argparse.ArgumentParser) -> None:
    def default(name: str) -> str:
        return f"default: from the model config: {shipped_generation_values(name)}"

    g = p.add_argument_group("sampling (defaults: the model config's [moshi_mac.generation])")
    g.add_argument("--temp", type=float, help=f"audio temperature ({default('temp')})")
    g.add_argument("--temp-text", type=float, help=f"text temperature ({default('temp_text')})")
    g.add_argument("--top-k", type=int, help=f"audio top-k ({default('top_k')})")
    g.add_argument("--top-k-text", type=int, help=f"text top-k ({default('top_k_text')})")
    g.add_argument("--cfg", type=float, dest="cfg_coef", metavar="COEF",
                   help="classifier-free guidance coefficient (Hibiki 1B/2B; e.g. 3; 1 = off; "
                        f"{default('cfg_coef')})")
    g.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    g.add_argument("--seed", type=int,
                   help=f"random seed: the same seed gives the same output ({default('seed')})")
    e = p.add_argument_group("engine")
    e.add_argument("--sequential", action="store_true",
                   help="run Mimi and the LM in turn on one thread (default: Mimi encode and "
                        "decode on their own threads, overlapped with the LM)")
    e.add_argument("--debug-step-delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)


def gen_options(args):
    from .generate import GenOptions

    return GenOptions(temp=args.temp, temp_text=args.temp_text, top_k=args.top_k,
                      top_k_text=args.top_k_text, cfg_coef=args.cfg_coef, greedy=args.greedy,
                      seed=args.seed)


def cmd_models(args) -> int:
    from . import registry

    console.print(models_table(registry.list_models(), registry.local_files, console.width))
    console.print("Download with `moshi-mac download NAME` (also done on first use).")
    return 0


MODEL_COLUMNS = [Column("name"), Column("repo", fold=True), Column("config", drop=3),
                 Column("quant", drop=2), Column("layout", drop=1), Column("local")]


def models_table(entries, is_local, width: int) -> Table:
    """The `models` table. In a narrow terminal config, quant and layout go first (the
    name carries the quantization, the repo the layout), so rows stay on one line."""
    rows = [[e.name, e.repo, e.config, e.quantization, e.layout,
             "[green]yes[/]" if is_local(e) else "no"] for e in entries]
    return fit_table("moshi-mac models", MODEL_COLUMNS, rows, width)


def cmd_download(args) -> int:
    from . import registry

    for name in args.names:
        files = registry.ensure(name)
        console.print(f"[green]{name}[/]: " + ", ".join(f"{k}={v}" for k, v in files.paths().items()))
    return 0


def cmd_check(args) -> int:
    from .api import check

    res = check(args.model, weights=args.weights, download=not args.no_download)
    files = res.files
    w = res.weights
    table = Table(title=f"check: {escape(files.name)}", show_header=False)
    table.add_column("what")
    table.add_column("result")
    table.add_row("config", f"{escape(str(files.config))}  ({res.config.summary()})")
    table.add_row("LM weights", f"{escape(files.weights.name)}: {w.layout} layout, {w.quantization.label}, "
                                f"{w.n_tensors} tensors, {w.n_params / 1e9:.2f}B params, "
                                f"{w.file_bytes / 2**30:.2f} GiB")
    table.add_row("text tokenizer", f"{escape(files.tokenizer.name)}: {res.tokenizer_vocab} pieces")
    table.add_row("Mimi", f"{escape(files.mimi.name)}: {res.mimi_codebooks} codebooks "
                          f"({res.config.mimi_codebooks} needed)")
    table.add_row("verdict", "[green]OK: every tensor matches the config[/]")
    console.print(table)
    return 0


def cmd_make_random(args) -> int:
    from . import registry
    from .config import load_config
    from .random_model import make_random_model

    path = Path(args.config)
    if not path.is_file():
        path = registry.config_path(args.config)
    cfg = load_config(path)
    with console.status(f"writing a random {'tiny ' if args.tiny else ''}{escape(path.stem)} model "
                        f"to {escape(str(args.output))}"):
        rm = make_random_model(cfg, args.output, tiny=args.tiny, quantize=args.quantize,
                               layout=args.layout, seed=args.seed, force=args.force,
                               mimi=args.mimi)
    size = rm.weights.stat().st_size / 2**20
    console.print(f"[green]wrote[/] {escape(str(rm.folder))}: {escape(rm.weights.name)} "
                  f"({size:.1f} MiB, {args.layout} "
                  f"layout{', ' + args.quantize if args.quantize else ''}), "
                  f"{escape(rm.mimi.name)}, {escape(rm.tokenizer.name)}, config.toml")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="moshi-mac",
        description="Kyutai's Moshi, Hibiki and Hibiki-Zero speech models on MLX.",
        epilog="`moshi-mac COMMAND --help` for a command's options; "
               "`python -m moshi_mac` works the same.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("models", help="list known models and whether they are on disk")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("download", help="download models into the Hugging Face cache")
    s.add_argument("names", nargs="+", metavar="NAME", help="registry names")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("check", help="check config vs weights vs tokenizer vs Mimi")
    add_model_args(s)
    s.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("make-random-model", help="write a random model in the official layouts")
    s.add_argument("--config", required=True, help="a config file, or a name from configs/")
    s.add_argument("-o", "--output", required=True, type=Path, help="the model folder to write")
    s.add_argument("--tiny", action="store_true", help="shrink the LM (not Mimi) for fast tests")
    s.add_argument("--quantize", choices=list(QUANT_PRESETS), help="quantize the LM (default: bf16)")
    s.add_argument("--layout", choices=["mlx", "pytorch"], default="mlx", help="key layout")
    s.add_argument("--seed", type=int, default=0, help="random seed (LM, Mimi, tokenizer)")
    s.add_argument("--force", action="store_true", help="replace --output if it exists")
    s.add_argument("--mimi", type=Path, help="use this Mimi checkpoint instead of the random "
                   "one of the seed (built once in the cache folder and linked in)")
    s.set_defaults(func=cmd_make_random)

    from . import bench, convert, doctor, live, serve, translate

    # Modules that add their own subcommands with `register(subparsers)`; each handler is
    # `main(args) -> int`. Heavy imports stay inside the handlers so `--help` is fast.
    for module in (translate, live, doctor, convert, bench, serve):
        module.register(sub)
    return p


def print_error(message: str) -> None:
    """One line on stderr, user text escaped."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_stopped(signum: int, what: str) -> int:
    """The one stderr line of a run stopped by a signal; returns its exit code."""
    err_console.print(f"[bold yellow]stopped[/] by {signal_name(signum)}: {escape(what)}",
                      highlight=False, soft_wrap=True)
    return signal_exit_code(signum)


def print_warning(message: str) -> None:
    """One line on stderr, user text escaped."""
    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False,
                      soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    from . import signals
    from .flags import check_flags

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check_flags(args)
    except MoshiMacError as e:
        print_error(str(e))
        return EXIT_USAGE
    if args.command is None:  # bare `moshi-mac`: the help, as git and hf do
        parser.print_help()
        return 0
    with signals.installed() as guard:
        try:
            rc = args.func(args) or 0
        except MoshiMacError as e:
            guard.finished = True
            print_error(str(e))
            return e.exit_code
        except KeyboardInterrupt as e:
            guard.finished = True
            signum = e.signum if isinstance(e, Interrupted) else 2
            return print_stopped(signum, "the command ended before it finished")
        guard.finished = True
        return rc


if __name__ == "__main__":
    sys.exit(main())
