"""Shared fixtures and the rules every test run follows.

- Isolation: the session's cache folder ($MOSHI_MAC_CACHE: random Mimi checkpoints,
  benchmark outputs) is a temporary folder, never the user's; test data comes from
  tests/data/, never from outside the repository.
- Reference tests (marker `reference`: they compare with the official PyTorch `moshi`) skip
  with a reason when torch or moshi is absent, and FAIL instead when
  MOSHI_MAC_REQUIRE_REFERENCE=1 (set by scripts/test and .ci/run once they installed the
  references), so that a broken reference install cannot pass silently.
- Live-mode tests get an audio device from the `device` fixture: on Linux the PulseAudio
  server the environment names ($PULSE_SERVER: scripts/test starts a private one), on
  macOS a loopback device (BlackHole, Loopback, Soundflower) when one is installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"  # test data, inside the repository
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
# Kyutai's own config files (copies; see tests/data/kyutai/README.md)
REFERENCE_CONFIGS = sorted(p for p in (DATA / "kyutai").iterdir()
                           if p.suffix in (".json", ".toml"))
CONFIG_NAMES = [p.stem for p in CONFIGS]

REQUIRE_REFERENCE_ENV = "MOSHI_MAC_REQUIRE_REFERENCE"
REQUIRE_AUDIO_ENV = "MOSHI_MAC_REQUIRE_AUDIO"
REFERENCE_MODULES = ("torch", "moshi")
LOOPBACK_NAMES = ("blackhole", "loopback", "soundflower")


def _required(env: str) -> bool:
    return os.environ.get(env, "") not in ("", "0")


def require_reference(*modules: str) -> None:
    """Skip the calling test (or module) when a reference module is absent; fail instead
    under MOSHI_MAC_REQUIRE_REFERENCE=1."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    why = (f"reference test: {', '.join(missing)} not installed (the optional references; "
           f"scripts/test installs them, --no-reference skips them)")
    if _required(REQUIRE_REFERENCE_ENV):
        pytest.fail(f"{why}, and {REQUIRE_REFERENCE_ENV}=1 requires them", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def pytest_runtest_setup(item):
    if item.get_closest_marker("reference"):
        require_reference(*REFERENCE_MODULES)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under MOSHI_MAC_REQUIRE_REFERENCE=1 a skipped reference test is a failure, whatever
    skipped it."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("reference") and _required(REQUIRE_REFERENCE_ENV):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"reference test skipped under {REQUIRE_REFERENCE_ENV}=1: {reason}"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """The session's own cache folder (see the module docstring)."""
    from moshi_mac.paths import CACHE_ENV

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(scope="session")
def shared_mimi(_private_cache) -> Path:
    """The random Mimi checkpoint of seed 0 (385 MB), built once in the session's cache and
    linked into every random model."""
    from moshi_mac.mimi_random import cached_random_mimi

    return cached_random_mimi(0)


@pytest.fixture(scope="session")
def make_model(tmp_path_factory, shared_mimi):
    """make_model(config_name, tiny=True, quantize=None, layout="mlx") -> model folder,
    cached per argument set for the whole session."""
    from moshi_mac.config import load_config
    from moshi_mac.random_model import make_random_model

    cache: dict[tuple, Path] = {}

    def make(name: str, tiny: bool = True, quantize: str | None = None, layout: str = "mlx",
             seed: int = 0) -> Path:
        key = (name, tiny, quantize, layout, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp("models") / "-".join(str(k) for k in key)
            cfg = load_config(ROOT / "configs" / f"{name}.toml")
            make_random_model(cfg, out, tiny=tiny, quantize=quantize, layout=layout, seed=seed)
            cache[key] = out
        return cache[key]

    return make


# ---------------------------------------------------------------------------------------
# Audio devices for the live-mode tests
# ---------------------------------------------------------------------------------------

NO_DEVICE = ("no usable audio device for the live-mode tests: on Linux run them through "
             "scripts/test (it starts a private PulseAudio server with a null sink); on "
             "macOS install a loopback device (`brew install blackhole-2ch`)")


def _open_both(device) -> None:
    import sounddevice as sd

    for cls in (sd.InputStream, sd.OutputStream):
        with cls(device=device, channels=1, samplerate=24000, dtype="float32"):
            time.sleep(0.05)


def probe_audio_device() -> tuple[str | None, str]:
    """(the device to pass to --input-device/--output-device, "" ) or (None, why not)."""
    try:
        import sounddevice as sd

        names = [d["name"] for d in sd.query_devices()]
        if sys.platform == "darwin":
            loop = [n for n in names if any(k in n.lower() for k in LOOPBACK_NAMES)]
            if not loop:
                return None, "no loopback device (BlackHole, Loopback or Soundflower) is installed"
            device = loop[0]
        else:
            device = "pulse" if "pulse" in names else "default"
        _open_both(None if device == "default" else device)
        return device, ""
    except Exception as e:  # noqa: BLE001  (any failure means: no usable device)
        return None, f"{type(e).__name__}: {e}"


@pytest.fixture(scope="session")
def device() -> str:
    dev, reason = probe_audio_device()
    if dev is None:
        message = f"{NO_DEVICE} ({reason})"
        if _required(REQUIRE_AUDIO_ENV) or os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return dev


def pytest_configure(config):
    sys.path.insert(0, str(ROOT))
