"""Where moshi-mac writes what the user did not name: the user's cache folder.

`~/Library/Caches/moshi-mac` on macOS, `$XDG_CACHE_HOME/moshi-mac` (`~/.cache/moshi-mac`)
on Linux (platformdirs' conventions), or `$MOSHI_MAC_CACHE` when set. Benchmark results and
the random Mimi checkpoints of `make-random-model` live here; never in the source tree or
in site-packages. Downloaded models stay in the Hugging Face cache.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MOSHI_MAC_CACHE"


def cache_root() -> Path:
    """The cache folder (not created)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("moshi-mac", appauthor=False))


def cache_dir(*parts: str) -> Path:
    """A folder under the cache folder, created if needed."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_mode() -> int:
    """The mode a plain `open()` would give a new file (0644 under the usual umask 022):
    for files written through tools that create them 0600 (safetensors, mkstemp)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
