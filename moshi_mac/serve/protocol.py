"""Kyutai's websocket protocol at `/api/chat`, as spoken by `moshi.server` and
`moshi_mlx.local_web`, plus moshi-mac's opt-in extension for browsers.

Every message is one binary websocket frame: a kind byte, then the payload.

Kyutai's kinds (both directions unless noted):
  0x00  handshake, server -> client, no payload: the model is warmed up and listening
  0x01  audio: Ogg/Opus pages, 24 kHz mono
  0x02  text: UTF-8 (a piece of the model's text stream)
  0x03  control: one byte; moshi-mac reads 0x01 ("endTurn") as the end of the input
  0x04  metadata: JSON
  0x05  error: UTF-8, server -> client (moshi-mac: "busy", "idle timeout")
  0x06  ping

The extension, used only by a client that connects with `?codec=pcm16` (our page):
  0x81  audio as raw PCM: int16 little-endian, 24 kHz mono, any whole number of samples,
        both directions, in place of 0x01 (0x01 is still accepted from the client)
  0x04  metadata, server -> client: {"event": "hello", ...settings} once, right after
        the handshake, then {"event": "stats", ...} about twice a second
A client that does not ask gets exactly what Kyutai's servers send: 0x00, 0x01, 0x02
(and 0x05 when the server is busy).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace

import numpy as np

HANDSHAKE = 0x00
AUDIO = 0x01
TEXT = 0x02
CONTROL = 0x03
METADATA = 0x04
ERROR = 0x05
PING = 0x06
PCM16 = 0x81  # moshi-mac extension
KINDS_IN = (AUDIO, CONTROL, METADATA, PING, PCM16)
CONTROL_END_TURN = 0x01
PCM_CODEC = "pcm16"  # ?codec=pcm16 turns the extension on

# Query parameters of Kyutai's web client -> GenOptions fields. One seed drives both of
# moshi-mac's samplers (text and audio get independent streams from it): text_seed.
QUERY_OPTIONS = {
    "text_temperature": ("temp_text", float),
    "audio_temperature": ("temp", float),
    "text_topk": ("top_k_text", int),
    "audio_topk": ("top_k", int),
    "text_seed": ("seed", int),
}
QUERY_OWN = ("codec",)  # ours, not sampling

log = logging.getLogger("moshi_mac.serve")


def frame(kind: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + payload


def text_message(text: str) -> bytes:
    return frame(TEXT, text.encode("utf-8"))


def error_message(text: str) -> bytes:
    return frame(ERROR, text.encode("utf-8"))


def metadata_message(data: dict) -> bytes:
    return frame(METADATA, json.dumps(data, separators=(",", ":")).encode("utf-8"))


def pcm16_message(pcm: np.ndarray) -> bytes:
    return frame(PCM16, (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def decode_pcm16(payload: bytes) -> np.ndarray:
    if len(payload) % 2:
        raise ValueError(f"odd PCM16 payload length {len(payload)}")
    return np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0


class OnceLog:
    """Logs each distinct problem once (per instance), counting the repeats."""

    def __init__(self, logger: logging.Logger = log):
        self.logger = logger
        self.counts: dict[str, int] = {}

    def warn(self, key: str, message: str) -> None:
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        if n == 0:
            self.logger.warning("%s (logged once; later ones are dropped quietly)", message)


@dataclass
class ClientRequest:
    """What a client asked for on the URL."""

    options: object  # generate.GenOptions
    pcm: bool = False  # the 0x81 extension
    ignored: dict[str, str] = field(default_factory=dict)


def parse_query(query, base_options, once: OnceLog) -> ClientRequest:
    """Apply the sampling parameters moshi-mac supports on top of the server's options;
    parameters it does not support (or cannot parse) are logged once and ignored."""
    changes, ignored = {}, {}
    for name, value in query.items():
        if name in QUERY_OPTIONS:
            attr, cast = QUERY_OPTIONS[name]
            try:
                changes[attr] = cast(float(value)) if cast is int else cast(value)
            except ValueError:
                ignored[name] = value
                once.warn(f"query-bad:{name}", f"query parameter {name}={value!r} is not a number; ignored")
        elif name not in QUERY_OWN:
            ignored[name] = value
            once.warn(f"query:{name}", f"query parameter {name!r} is not supported by moshi-mac; ignored")
    return ClientRequest(replace(base_options, **changes), query.get("codec") == PCM_CODEC, ignored)
