"""`moshi-mac serve`: talk to Moshi, or hear Hibiki translate, in a browser.

An aiohttp server speaking Kyutai's websocket protocol at `/api/chat` (protocol.py), so
Kyutai's own web client works unchanged (`--static DIR`), and a page of our own at `/`
(static/: plain HTML, JS and CSS, no build step, works offline). Each conversation runs
on the same engine and buffers as `live` (chat.py); the server's safety rules are in
server.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..errors import MoshiMacError

DEFAULT_PORT = 8998
DEFAULT_IDLE_TIMEOUT_S = 60.0


def register(subparsers) -> None:
    from ..api import DEFAULT_MAX_TAIL_S
    from ..cli import add_generation_args, add_model_args
    from ..live import add_latency_args

    p = subparsers.add_parser(
        "serve", help="a web page and Kyutai's websocket protocol: talk to the model in a browser",
        description="Serve a page at / and Kyutai's websocket protocol at /api/chat, one "
                    "conversation at a time. Ctrl-C stops.")
    add_model_args(p)
    n = p.add_argument_group("network (safe defaults: see the README)")
    n.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    n.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    n.add_argument("--static", type=Path, metavar="DIR",
                   help="serve this folder at / instead of moshi-mac's page (e.g. the `dist` "
                        "of Kyutai's web client)")
    n.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept websockets from pages at ORIGIN, e.g. "
                        "http://localhost:5173 (repeatable; '*' for any)")
    n.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S, metavar="SECONDS",
                   help=f"close a conversation whose client sent nothing for this long "
                        f"(default {DEFAULT_IDLE_TIMEOUT_S:.0f})")
    n.add_argument("--open", action="store_true", help="open the page in the default browser")
    g = p.add_argument_group("audio")
    add_latency_args(g)
    g.add_argument("--max-tail", type=float, default=DEFAULT_MAX_TAIL_S, metavar="SECONDS",
                   help=f"Hibiki: after the client stops, translate at most this long "
                        f"(default {DEFAULT_MAX_TAIL_S:.0f})")
    p.add_argument("--record", type=Path, metavar="DIR",
                   help="keep each conversation in DIR/session-TIME/: input.wav (client), "
                        "output.wav (model), transcript.srt and transcript.json")
    add_generation_args(p)
    p.set_defaults(func=main)


def _check_args(args) -> None:
    from ..live import check_latency_args

    check_latency_args(args)
    if not 0 <= args.port <= 65535:
        raise MoshiMacError(f"--port must be between 0 and 65535, got {args.port}")
    if not args.idle_timeout > 0:
        raise MoshiMacError("--idle-timeout must be positive")
    if args.max_tail < 0:
        raise MoshiMacError("--max-tail must be >= 0 seconds")
    if args.static is not None and not (args.static / "index.html").is_file():
        raise MoshiMacError(f"--static {args.static} has no index.html; point it at a built web "
                            f"client folder (for Kyutai's client: its extracted `dist`)")


def main(args) -> int:
    from ..cli import console, gen_options
    from ..api import load
    from ..engine import Session
    from .chat import ChatSettings
    from .server import LOCAL_HOSTS, STATIC_DIR, ServerConfig, engine_thread, serve

    _check_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.host not in LOCAL_HOSTS:
        console.print(f"[bold yellow]warning:[/] listening on {args.host}: anyone who can reach "
                      f"this machine on port {args.port} can use the microphone session",
                      highlight=False, soft_wrap=True)
    engine = engine_thread()
    with console.status("loading the model"):
        model = engine.submit(lambda: load(args.model, weights=args.weights).loaded).result()
    options = gen_options(args)
    with console.status("warming up"):  # fails early; each conversation warms up again
        warm = engine.submit(Session, model, options).result()
        engine.submit(warm.warm_up).result()
    settings = ChatSettings(max_lag_ms=args.max_lag_ms, lag_policy=args.lag_policy,
                            jitter_ms=args.jitter_ms, max_buffer_ms=args.max_buffer_ms,
                            max_tail_s=args.max_tail, pipelined=not args.sequential,
                            record=args.record, slow_s=args.debug_step_delay_ms / 1000)
    config = ServerConfig(model=model, options=options, chat=settings,
                          static=(args.static or STATIC_DIR).resolve(),
                          allow_origins=tuple(args.allow_origin), idle_timeout_s=args.idle_timeout,
                          engine=engine, codecs=(warm.encoder, warm.decoder))
    what = "translation" if model.is_hibiki else "conversation"

    def ready(url: str) -> None:
        console.print(f"[green]serving[/] {model.name} ({what}) on {url}  "
                      f"(websocket {url}api/chat; Ctrl-C stops)", highlight=False, soft_wrap=True)
        if args.open:
            import webbrowser

            webbrowser.open(url)

    try:
        asyncio.run(serve(config, args.host, args.port, ready))
    except OSError as e:
        raise MoshiMacError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
                            f"pick another --port") from None
    return 0

