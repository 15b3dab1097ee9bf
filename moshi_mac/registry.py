"""Model registry: short names for Kyutai's Hugging Face repos, and downloads.

A model is named by a registry name (`hibiki-1b-bf16`, an alias), a Hugging Face repo id
(`kyutai/hibiki-1b-mlx-bf16`, or any repo whose `config.json` follows the official
PyTorch schema and names its files), or a folder. `modeldir.resolve` turns any of them
into files; this module holds the entries, the places searched, and the network side.
Search order for a name or repo id (first complete set wins, no network):

1. `$MOSHI_MAC_WEIGHTS/<name>/` (when the variable is set),
2. `weights/<name>/` under the repository root (the git-ignored user weights folder),
3. `weights/<name>/` under the current directory,
   (in each weights folder, `<repo basename>/`, e.g. `weights/hibiki-1b-mlx-bf16/`, is
   accepted too: that is what `hf download --local-dir` produces),
4. the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
   `~/.cache/huggingface/hub`), read without any network access,

then a download into that cache. The config that ships with the weights (the repo's
`config.json`, or a folder's `config.toml`) configures the model, and its `moshi_name`,
`mimi_name` and `tokenizer_name` override the file names below; the packaged
`configs/*.toml` of an entry is only the fallback when none ships.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ModelNotFoundError

MOSHI_TOKENIZER = "tokenizer_spm_32k_3.model"
HIBIKI_TOKENIZER = "tokenizer_spm_48k_multi6_2.model"
MIMI_V1 = "tokenizer-e351c8d8-checkpoint125.safetensors"  # Moshi repos (MLX and PyTorch)
MIMI_PT = "mimi-pytorch-e351c8d8@125.safetensors"  # Hibiki PyTorch repos, Hibiki-Zero
MIMI_MLX = "mimi-dbaa9758@125.safetensors"  # Hibiki MLX repos

ROLES = ("weights", "mimi", "tokenizer")
# config.json keys that name each role's file (PyTorch `CheckpointInfo.from_hf_repo`).
CONFIG_JSON_NAMES = {"weights": "moshi_name", "mimi": "mimi_name", "tokenizer": "tokenizer_name"}


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable model: where it lives and which files make it up."""

    name: str  # user-facing name, e.g. "hibiki-1b-bf16"
    repo: str  # Hugging Face repo id
    weights: str  # LM weights file in the repo
    mimi: str  # Mimi codec weights file
    tokenizer: str  # SentencePiece text tokenizer
    config: str  # stem of configs/<config>.toml
    quantization: str  # "bf16" | "q8" | "q4"
    layout: str  # "mlx" (moshi_mlx names) | "pytorch" (moshi PyTorch names)
    family: str  # "moshi" | "hibiki" | "hibiki-zero"
    description: str = ""
    # The repo's own config.json (PyTorch/JSON schema); fetched when present, optional.
    hf_config: str | None = "config.json"
    # False where the file names above come from no first-hand listing of the repo; the
    # repo's config.json names (moshi_name, mimi_name, tokenizer_name) win on download.
    names_verified: bool = True

    @property
    def files(self) -> tuple[str, str, str]:
        """The required files: LM weights, Mimi, text tokenizer."""
        return (self.weights, self.mimi, self.tokenizer)

    @property
    def config_path(self) -> Path:
        return config_dir() / f"{self.config}.toml"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}"


def _moshi(voice: str, layout: str, quant: str, weights: str) -> ModelEntry:
    suffix = f"{layout}-{quant}"
    name = f"{voice}-{quant}" if layout == "mlx" else f"{voice}-pytorch-{quant}"
    who = "male" if voice == "moshiko" else "female"
    return ModelEntry(
        name=name, repo=f"kyutai/{voice}-{suffix}", weights=weights, mimi=MIMI_V1,
        tokenizer=MOSHI_TOKENIZER, config="moshi-7b", quantization=quant, layout=layout,
        family="moshi", description=f"Moshi 7B dialogue, {who} voice, {layout} {quant}")


_ENTRIES: tuple[ModelEntry, ...] = (
    *(_moshi(v, "mlx", q, w) for v in ("moshiko", "moshika")
      for q, w in (("bf16", "model.safetensors"), ("q8", "model.q8.safetensors"),
                   ("q4", "model.q4.safetensors"))),
    _moshi("moshiko", "pytorch", "bf16", "model.safetensors"),
    _moshi("moshika", "pytorch", "bf16", "model.safetensors"),
    ModelEntry(
        name="hibiki-1b-bf16", repo="kyutai/hibiki-1b-mlx-bf16",
        weights="hibiki-mlx-dc2cf5a5@80.safetensors", mimi=MIMI_MLX, tokenizer=HIBIKI_TOKENIZER,
        config="hibiki-1b", quantization="bf16", layout="mlx", family="hibiki",
        description="Hibiki 1B fr->en speech translation, mlx bf16"),
    ModelEntry(
        name="hibiki-1b-pytorch-bf16", repo="kyutai/hibiki-1b-pytorch-bf16",
        weights="hibiki-pytorch-dc2cf5a5@80.safetensors", mimi=MIMI_PT,
        tokenizer=HIBIKI_TOKENIZER, config="hibiki-1b", quantization="bf16", layout="pytorch",
        family="hibiki", description="Hibiki 1B fr->en speech translation, pytorch bf16",
        names_verified=False),
    ModelEntry(
        name="hibiki-2b-bf16", repo="kyutai/hibiki-2b-mlx-bf16",
        weights="hibiki-mlx-220b12c0@200.safetensors", mimi=MIMI_MLX, tokenizer=HIBIKI_TOKENIZER,
        config="hibiki-2b", quantization="bf16", layout="mlx", family="hibiki",
        description="Hibiki 2B fr->en speech translation, mlx bf16", names_verified=False),
    ModelEntry(
        name="hibiki-2b-pytorch-bf16", repo="kyutai/hibiki-2b-pytorch-bf16",
        weights="hibiki-pytorch-220b12c0@200.safetensors", mimi=MIMI_PT,
        tokenizer=HIBIKI_TOKENIZER, config="hibiki-2b", quantization="bf16", layout="pytorch",
        family="hibiki", description="Hibiki 2B fr->en speech translation, pytorch bf16"),
    ModelEntry(
        name="hibiki-zero-3b-pytorch-bf16", repo="kyutai/hibiki-zero-3b-pytorch-bf16",
        weights="hibiki-pytorch-77f82164@110.safetensors", mimi=MIMI_PT,
        tokenizer=HIBIKI_TOKENIZER, config="hibiki-zero-3b", quantization="bf16",
        layout="pytorch", family="hibiki-zero",
        description="Hibiki-Zero 3B fr/es/pt/de->en speech translation, pytorch bf16 "
                    "(gated repo: accept the terms on huggingface.co and log in)"),
)

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}


# ---------------------------------------------------------------------------------------
# Names and configs
# ---------------------------------------------------------------------------------------

def config_dir() -> Path:
    """The packaged model configs, `moshi_mac/configs/*.toml` (package data: the one home
    of these files; the top-level `configs/` of a checkout is a symlink to it)."""
    path = Path(__file__).resolve().parent / "configs"
    if not any(path.glob("*.toml")):
        raise ConfigError(f"no packaged configs in {path} (reinstall moshi-mac)")
    return path


def config_path(name: str) -> Path:
    """The TOML config of a model name (or a config stem such as "hibiki-1b")."""
    stem = name if (config_dir() / f"{name}.toml").is_file() else get_entry(name).config
    path = config_dir() / f"{stem}.toml"
    if not path.is_file():
        raise ConfigError(f"config {path} for {name} is missing (reinstall moshi-mac)")
    return path


def list_models() -> list[ModelEntry]:
    """Every registered model, in registry order."""
    return list(_ENTRIES)


def model_names() -> list[str]:
    return [e.name for e in _ENTRIES]


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_repo_id(text: str) -> bool:
    """True for an `owner/name` Hugging Face repo id that is not an existing local path."""
    return bool(_REPO_ID.fullmatch(text)) and not Path(text).exists()


def lookup(model: str) -> ModelEntry | None:
    """The entry of a registry name or of its repo id (names are aliases), or None."""
    entry = REGISTRY.get(model)
    if entry is None:
        entry = next((e for e in _ENTRIES if e.repo.lower() == model.lower()), None)
    return entry


def get_entry(name: str) -> ModelEntry:
    """The registry entry of a name (or repo id); unknown ones raise a one-line
    ModelNotFoundError."""
    entry = lookup(name)
    if entry is not None:
        return entry
    close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ModelNotFoundError(
        f"unknown model {name!r}{hint} (known: {', '.join(REGISTRY)}; or a Hugging Face repo "
        f"id such as kyutai/hibiki-1b-mlx-bf16, or a model folder)")


# ---------------------------------------------------------------------------------------
# Local lookup (no network)
# ---------------------------------------------------------------------------------------

def weights_roots() -> list[Path]:
    """Folders searched for `<name>/` before the Hugging Face cache, in order."""
    roots: list[Path] = []
    env = os.environ.get("MOSHI_MAC_WEIGHTS")
    if env:
        roots.append(Path(env).expanduser())
    repo_root = Path(__file__).resolve().parent.parent
    if (repo_root / "pyproject.toml").is_file():
        roots.append(repo_root / "weights")
    roots.append(Path.cwd() / "weights")
    seen, out = set(), []
    for r in roots:
        key = str(r.resolve()) if r.exists() else str(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    try:
        from huggingface_hub import constants
        return Path(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency
        return Path.home() / ".cache" / "huggingface" / "hub"


def names_from_config_json(path: Path | None) -> dict[str, str]:
    """The file names a repo's config.json gives (`moshi_name`, `mimi_name`,
    `tokenizer_name`), by role; only plain file names (hf:// or paths point elsewhere)."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    names = {}
    if isinstance(raw, dict):
        for role, key in CONFIG_JSON_NAMES.items():
            value = raw.get(key)
            if isinstance(value, str) and value and "/" not in value and ":" not in value:
                names[role] = value
    return names


def cached_file(repo: str, filename: str) -> Path | None:
    """A file of `repo` in the Hugging Face cache (its `refs/main` snapshot), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()))
    except Exception:
        return None
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def cached_snapshot(repo: str, entry: ModelEntry | None = None) -> Path | None:
    """The folder of `repo`'s cached snapshot (found through its config.json, else the
    entry's weights file), or None when nothing of it is cached. Never uses the network."""
    for filename in ("config.json", *(entry.files if entry else ())):
        hit = cached_file(repo, filename)
        if hit is not None:
            return hit.parent
    return None


def model_folders(target: ModelEntry | str) -> list[Path]:
    """The user weights folders searched for a registry entry or a repo id, in order."""
    if isinstance(target, ModelEntry):
        subs = (target.name, target.repo.split("/")[-1])
    else:
        subs = (target.split("/")[-1],)
    return [root / sub for root in weights_roots() for sub in subs]


def local_files(target: ModelEntry | str):
    """The `modeldir.ModelFiles` of a registry name, entry or repo id found on disk, or
    None; never touches the network (see `modeldir.local_files`)."""
    from .modeldir import local_files as find

    return find(target)


# ---------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------

def _target(target: ModelEntry | str) -> tuple[ModelEntry | None, str]:
    """(registry entry or None, repo id) of a registry name, repo id or entry."""
    if isinstance(target, ModelEntry):
        return target, target.repo
    entry = lookup(target)
    return (entry, entry.repo) if entry is not None else (None, target)


def hf_download_command(repo: str, files: list[str] | tuple[str, ...] = ()) -> str:
    """The command that downloads `files` of `repo`: `hf download` (huggingface_hub >= 1),
    `huggingface-cli download` before it."""
    try:
        import huggingface_hub
        major = int(huggingface_hub.__version__.split(".")[0])
    except (ImportError, ValueError):  # pragma: no cover - huggingface_hub is a dependency
        major = 1
    tool = "hf download" if major >= 1 else "huggingface-cli download"
    return " ".join([tool, repo, *files])


def gated_hint(repo: str) -> str:
    """The one fix for a gated repo (Hibiki-Zero)."""
    return (f"the repo is gated: accept its terms on https://huggingface.co/{repo}, "
            f"then run `hf auth login`")


def manual_instructions(target: ModelEntry | str) -> str:
    """One line telling how to put a model's files in place by hand."""
    entry, repo = _target(target)
    if entry is None:
        return (f"on a machine with network run `{hf_download_command(repo)}` and copy its "
                f"Hugging Face cache ({hf_cache_dir()}) here, or pass --weights DIR with the "
                f"repo's files")
    files = [*entry.files, *([entry.hf_config] if entry.hf_config else [])]
    return (f"where there is network run `{hf_download_command(repo, files)}` and copy "
            f"{hf_cache_dir()} here, or put those files into weights/{entry.name}/")


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _endpoint() -> str:
    try:
        from huggingface_hub import constants
        return constants.ENDPOINT
    except Exception:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _unreachable() -> str | None:
    """Why the hub cannot be reached (DNS, no route), found in seconds; None if reachable.

    Without it huggingface_hub retries for ~25 s before failing. Skipped behind a proxy,
    where a direct connection proves nothing.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urllib.parse.urlsplit(_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        return f"{host} is unreachable: {e.strerror or e}"
    return None


def _reason(exc: BaseException, repo: str) -> str:
    name = type(exc).__name__
    if name == "LocalEntryNotFoundError":
        return "huggingface.co could not be reached and the files are not in the local cache"
    if name == "GatedRepoError" or " 401 " in f" {exc} " or " 403 " in f" {exc} ":
        return gated_hint(repo)
    if name == "RepositoryNotFoundError":
        return f"no repo {repo} on huggingface.co (or it is private: run `hf auth login`)"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{name}: {text}" if text else name


def _fail(target: ModelEntry | str, reason: str) -> ModelNotFoundError:
    entry, repo = _target(target)
    label = entry.name if entry is not None else repo
    if reason.startswith("the repo is gated"):  # the whole fix; nothing else to say
        return ModelNotFoundError(f"cannot download {label}: {reason}")
    return ModelNotFoundError(
        f"cannot download {label} ({reason}); " + manual_instructions(target))


def _missing_remote(exc: BaseException) -> bool:
    """True for 'the repo has no such file' (not for 'not in the local cache')."""
    try:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - very old huggingface_hub
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
    return isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError)


def download(target: ModelEntry | str, progress: bool = True) -> Path:
    """Download a model (registry name or entry, or a repo id) into the Hugging Face cache;
    return the snapshot folder that holds its files.

    The repo's config.json is fetched first and its file names (`moshi_name`, `mimi_name`,
    `tokenizer_name`) win over the entry's; a repo outside the registry must have one.
    Any failure (offline, HF_HUB_OFFLINE=1, no route, gated repo, missing file) raises a
    one-line ModelNotFoundError saying what to do.
    """
    entry, repo = _target(target)
    if _offline():
        raise _fail(target, "HF_HUB_OFFLINE is set")
    why = _unreachable()
    if why is not None:
        raise _fail(target, why)
    try:
        import huggingface_hub
        from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                           enable_progress_bars)
    except ImportError as e:
        raise _fail(target, f"huggingface_hub is not installed: {e}") from None
    cache = str(hf_cache_dir())

    def fetch(filename: str) -> Path:
        return Path(huggingface_hub.hf_hub_download(repo, filename, cache_dir=cache))

    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        hf_json: Path | None = None
        if entry is None or entry.hf_config:
            try:
                hf_json = fetch("config.json")
            except Exception as e:
                if entry is None or not _missing_remote(e):
                    raise
        names = dict(zip(ROLES, entry.files)) if entry is not None else {}
        names.update(names_from_config_json(hf_json))
        missing = [CONFIG_JSON_NAMES[r] for r in ROLES if r not in names]
        if missing:
            raise ModelNotFoundError(
                f"{repo}'s config.json names no {', '.join(missing)}: it is not a Kyutai model "
                f"repo; pass --weights DIR with its files")
        found = [fetch(names[role]) for role in ROLES]
    except ModelNotFoundError:
        raise
    except Exception as e:
        raise _fail(target, _reason(e, repo)) from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    return found[0].parent


def ensure(target: str, progress: bool = True):
    """`modeldir.ModelFiles` of a registry name or repo id: local files first (see
    `local_files`), else downloaded on first use."""
    from .modeldir import resolve

    return resolve(target, progress=progress)
