"""Model registry: user-facing model names -> Hugging Face repo, files and config.

`ensure(name)` returns local paths to a model's files, looking on disk first and
downloading on first use. Search order of `local_files` (first complete set wins):

1. `$MOSHI_MAC_WEIGHTS/<name>/` (when the variable is set),
2. `weights/<name>/` under the repository root (the git-ignored user weights folder),
3. `weights/<name>/` under the current directory,
   (in each weights folder, `<repo basename>/`, e.g. `weights/hibiki-1b-mlx-bf16/`, is
   accepted too: that is what `huggingface-cli download --local-dir` produces),
4. the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
   `~/.cache/huggingface/hub`), read without any network access.

Where a folder or the cache holds the repo's `config.json`, its `moshi_name`,
`mimi_name` and `tokenizer_name` override the file names below.
"""

from __future__ import annotations

import difflib
import json
import os
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
    """The directory of the packaged model configs (`configs/*.toml`).

    `moshi_mac/configs` is a symlink to the top-level `configs/` in a checkout and a real
    directory in an installed wheel; the top-level one is the fallback if the link is lost.
    """
    here = Path(__file__).resolve().parent
    for cand in (here / "configs", here.parent / "configs"):
        if cand.is_dir() and any(cand.glob("*.toml")):
            return cand.resolve()
    raise ConfigError(f"no configs directory found beside {here} (reinstall moshi-mac)")


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


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; unknown names raise a one-line ModelNotFoundError."""
    entry = REGISTRY.get(name)
    if entry is not None:
        return entry
    close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ModelNotFoundError(
        f"unknown model {name!r}{hint} (known: {', '.join(REGISTRY)})")


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


def _names_from_hf_config(entry: ModelEntry, path: Path | None) -> dict[str, str]:
    names = {"weights": entry.weights, "mimi": entry.mimi, "tokenizer": entry.tokenizer}
    if path is None or not path.is_file():
        return names
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return names
    if isinstance(raw, dict):
        for role, key in (("weights", "moshi_name"), ("mimi", "mimi_name"),
                          ("tokenizer", "tokenizer_name")):
            value = raw.get(key)
            # Only plain file names: hf:// or absolute paths point outside the repo.
            if isinstance(value, str) and value and "/" not in value and ":" not in value:
                names[role] = value
    return names


def _unique(paths) -> Path | None:
    paths = sorted(set(paths))
    return paths[0] if len(paths) == 1 else None


def _guess(folder: Path, role: str, entry: ModelEntry) -> Path | None:
    """A file of `role` found by pattern, when the exact name is absent (hand-placed files)."""
    mimi_like = [p for pat in ("tokenizer-*.safetensors", "mimi*.safetensors")
                 for p in folder.glob(pat)]
    if role == "mimi":
        return _unique(mimi_like)
    if role == "tokenizer":
        return _unique(folder.glob("tokenizer_spm_*.model")) or _unique(folder.glob("*.model"))
    cands = [p for p in folder.glob("*.safetensors") if p not in mimi_like]
    if entry.quantization in ("q8", "q4"):
        cands = [p for p in cands if p.name.endswith(f".{entry.quantization}.safetensors")]
    else:
        cands = [p for p in cands if not p.name.endswith((".q8.safetensors", ".q4.safetensors"))]
    return _unique(cands)


def _from_folder(folder: Path, entry: ModelEntry) -> dict[str, Path] | None:
    if not folder.is_dir():
        return None
    hf_json = folder / "config.json"
    names = _names_from_hf_config(entry, hf_json)
    found: dict[str, Path] = {}
    for role in ROLES:
        exact = folder / names[role]
        path = exact if exact.is_file() else _guess(folder, role, entry)
        if path is None:
            return None
        found[role] = path
    if (folder / "config.toml").is_file():
        found["config"] = folder / "config.toml"
    elif hf_json.is_file():
        found["config"] = hf_json
    else:
        found["config"] = entry.config_path
    if hf_json.is_file():
        found["hf_config"] = hf_json
    return found


def _cached(repo: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()))
    except Exception:
        return None
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def _from_hf_cache(entry: ModelEntry) -> dict[str, Path] | None:
    hf_json = _cached(entry.repo, entry.hf_config) if entry.hf_config else None
    names = _names_from_hf_config(entry, hf_json)
    found: dict[str, Path] = {}
    for role in ROLES:
        path = _cached(entry.repo, names[role])
        if path is None:
            return None
        found[role] = path
    found["config"] = entry.config_path
    if hf_json is not None:
        found["hf_config"] = hf_json
    return found


def model_folders(entry: ModelEntry) -> list[Path]:
    """The user weights folders searched for `entry`, in order."""
    basename = entry.repo.split("/")[-1]
    return [root / sub for root in weights_roots() for sub in (entry.name, basename)]


def local_files(entry: ModelEntry | str) -> dict[str, Path] | None:
    """Local paths of a model's files, or None; never touches the network.

    Keys: "weights", "mimi", "tokenizer", "config" (the config to load: a weights folder's
    config.toml, else its config.json, else the packaged configs/<config>.toml) and, when
    present, "hf_config" (the repo's own config.json). Search order: see the module doc.
    """
    if isinstance(entry, str):
        entry = get_entry(entry)
    for folder in model_folders(entry):
        found = _from_folder(folder, entry)
        if found is not None:
            return found
    return _from_hf_cache(entry)


# ---------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------

def manual_instructions(entry: ModelEntry | str) -> str:
    """How to put a model's files in place by hand, short enough for one line."""
    if isinstance(entry, str):
        entry = get_entry(entry)
    files = " ".join(entry.files) + (f" {entry.hf_config}" if entry.hf_config else "")
    return (f"where there is network run `huggingface-cli download {entry.repo} {files}` and "
            f"copy {hf_cache_dir()} here, or put those files into weights/{entry.name}/")


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


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "LocalEntryNotFoundError":
        return "huggingface.co could not be reached and the files are not in the local cache"
    if name == "GatedRepoError" or " 401 " in f" {exc} ":
        return "the repo is gated: accept its terms on huggingface.co, then `huggingface-cli login`"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{name}: {text}" if text else name


def _fail(entry: ModelEntry, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"cannot download {entry.name} ({reason}); " + manual_instructions(entry))


def _missing_remote(exc: BaseException) -> bool:
    """True for 'the repo has no such file' (not for 'not in the local cache')."""
    try:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - very old huggingface_hub
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
    return isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError)


def download(name: str, progress: bool = True) -> dict[str, Path]:
    """Download a model's files into the Hugging Face cache; return their paths.

    The repo's config.json is fetched first (if the repo has one) and its file names win.
    Any failure (offline, HF_HUB_OFFLINE=1, no route, gated repo, missing file) raises a
    one-line ModelNotFoundError saying how to place the files by hand.
    """
    entry = get_entry(name)
    if _offline():
        raise _fail(entry, "HF_HUB_OFFLINE is set")
    why = _unreachable()
    if why is not None:
        raise _fail(entry, why)
    try:
        import huggingface_hub
        from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                           enable_progress_bars)
    except ImportError as e:
        raise _fail(entry, f"huggingface_hub is not installed: {e}") from None
    cache = str(hf_cache_dir())

    def fetch(filename: str) -> Path:
        return Path(huggingface_hub.hf_hub_download(entry.repo, filename, cache_dir=cache))

    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        hf_json: Path | None = None
        if entry.hf_config:
            try:
                hf_json = fetch(entry.hf_config)
            except Exception as e:
                if not _missing_remote(e):
                    raise
        names = _names_from_hf_config(entry, hf_json)
        found = {role: fetch(names[role]) for role in ROLES}
    except Exception as e:
        raise _fail(entry, _reason(e)) from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    found["config"] = entry.config_path
    if hf_json is not None:
        found["hf_config"] = hf_json
    return found


def ensure(name: str, progress: bool = True) -> dict[str, Path]:
    """Local files first (see `local_files`), else download on first use."""
    entry = get_entry(name)
    found = local_files(entry)
    if found is not None:
        return found
    return download(entry.name, progress=progress)
