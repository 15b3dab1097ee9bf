"""The aiohttp application: `/api/chat` (see protocol.py), the page, and the safety rules.

- One conversation at a time: a second client gets a one-line 0x05 "busy" and a clean
  close; the first one never notices.
- The websocket checks its Origin: same origin, or one of `--allow-origin` ("*": any).
  Clients that send no Origin (not a browser) are accepted.
- Messages over `MAX_MESSAGE_BYTES` close the connection (aiohttp's size cap); a client
  silent for `idle_timeout` seconds gets 0x05 "idle timeout" and a close.
- A malformed message (empty, unknown kind, bad Opus, bad PCM) is logged once per
  conversation and dropped; the conversation goes on.
- Static files come from one folder only (aiohttp refuses paths that leave it, and
  symlinks are not followed).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from ..codec import SAMPLE_RATE
from . import protocol
from .chat import Chat, ChatSettings
from .protocol import OnceLog, log

STATIC_DIR = Path(__file__).parent / "static"
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: an 80 ms Opus page is ~300 bytes, PCM16 3.8 kB
STATS_PERIOD_S = 0.5
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServerConfig:
    model: object  # engine.LoadedModel
    options: object  # generate.GenOptions: the server's defaults
    chat: ChatSettings = field(default_factory=ChatSettings)
    static: Path = STATIC_DIR
    allow_origins: tuple[str, ...] = ()
    idle_timeout_s: float = 60.0
    # MLX arrays belong to the thread that made them: all MLX work (loading the model,
    # building, warming up and running each conversation) happens on this one thread.
    engine: ThreadPoolExecutor = field(default_factory=lambda: engine_thread())
    codecs: tuple | None = None  # Mimi's encoder and decoder, loaded once (see Session)


def engine_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    if origin is None:  # not a browser
        return True
    if "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


class ChatServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.busy = False
        self.query_log = OnceLog()  # unsupported query parameters: once per server
        self.sessions = 0
        self.engine_thread = config.engine
        self.current: Chat | None = None

    def shutdown(self) -> None:
        """Stop the running conversation (its engine thread) when the server stops."""
        if self.current is not None:
            self.current.stop()
        self.engine_thread.shutdown(wait=False, cancel_futures=True)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/chat", self.handle_chat)
        index = self.config.static / "index.html"

        async def root(_request):
            return web.FileResponse(index)

        app.router.add_get("/", root)
        app.router.add_static("/", self.config.static, follow_symlinks=False)
        return app

    # -- the websocket -------------------------------------------------------------------
    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, request.host, self.config.allow_origins):
            log.warning("refused a websocket from origin %s (allow it with --allow-origin)", origin)
            return web.Response(status=403, text="origin not allowed\n")
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        if self.busy:
            log.info("refused a second client: one conversation at a time")
            await ws.send_bytes(protocol.error_message(
                "busy: moshi-mac serves one conversation at a time; try again later"))
            await ws.close()
            return ws
        self.busy = True  # no await between the test and this line
        try:
            await self._converse(ws, request)
        finally:
            self.busy = False
            self.current = None
        return ws

    async def _converse(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        req = protocol.parse_query(request.query, cfg.options, self.query_log)
        outbox: asyncio.Queue = asyncio.Queue()

        def send(message: bytes) -> None:  # from any thread
            loop.call_soon_threadsafe(outbox.put_nowait, message)

        self.sessions += 1
        n = self.sessions
        try:
            chat = await loop.run_in_executor(self.engine_thread, _new_chat, cfg, req, send)
        except Exception as e:  # noqa: BLE001  (one line for the client and the log)
            log.error("conversation %d could not start: %s", n, e)
            await ws.send_bytes(protocol.error_message(f"the server could not start: {e}"))
            return
        self.current = chat
        log.info("conversation %d: %s, %s audio", n, request.remote,
                 "PCM extension" if req.pcm else "Ogg/Opus")
        with contextlib.suppress(ConnectionError, RuntimeError):  # gone during the warm-up:
            await ws.send_bytes(protocol.frame(protocol.HANDSHAKE))  # the receiver sees it
            if req.pcm:
                await ws.send_bytes(protocol.metadata_message({
                    "event": "hello", "model": cfg.model.name, "hibiki": cfg.model.is_hibiki,
                    "sample_rate": SAMPLE_RATE, "jitter_ms": cfg.chat.jitter_ms,
                    "max_buffer_ms": cfg.chat.max_buffer_ms, "max_lag_ms": cfg.chat.max_lag_ms}))
        done = threading.Event()
        engine = loop.run_in_executor(self.engine_thread, _run_chat, chat, done)
        sender = asyncio.ensure_future(self._send_loop(ws, outbox, chat, req.pcm, done))
        receiver = asyncio.ensure_future(self._receive_loop(ws, chat, n))
        try:
            await asyncio.wait([engine, receiver], return_when=asyncio.FIRST_COMPLETED)
            if receiver.done() and not engine.done():
                await engine  # the client stopped: its input ended (Hibiki flushes) or it left
        finally:
            chat.stop()
            with contextlib.suppress(Exception):
                await engine
            done.set()
            await sender
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver
            if not ws.closed:
                await ws.close()
        error = engine.exception() if engine.done() and not engine.cancelled() else None
        if error is not None:
            log.error("conversation %d failed: %s", n, error)
        else:
            info = chat.info()
            log.info("conversation %d ended: %d steps, %.1f steps/s, %d frames skipped%s", n,
                     info["steps"], info["steps_per_s"], info["skipped_frames"],
                     f", recorded in {chat.folder}" if chat.folder else "")

    async def _send_loop(self, ws, outbox: asyncio.Queue, chat: Chat, pcm_ext: bool,
                         done: threading.Event) -> None:
        """Everything the engine produced goes out in order; stats (extension only) every
        STATS_PERIOD_S; after the engine has finished, what is queued is flushed."""
        behind_logged = False
        next_stats = asyncio.get_running_loop().time() + STATS_PERIOD_S
        while True:
            try:
                message = await asyncio.wait_for(outbox.get(), timeout=0.1)
            except asyncio.TimeoutError:
                message = None
            if message is not None and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_bytes(message)
            if message is None and done.is_set():
                return
            now = asyncio.get_running_loop().time()
            if now >= next_stats:
                next_stats = now + STATS_PERIOD_S
                status = chat.status()
                if status["behind"] and not behind_logged:
                    behind_logged = True
                    log.warning("the model is running below real time (%s steps/s, %.1f "
                                "needed): input frames are skipped to keep the latency bounded",
                                status["steps_per_s"] or "under 1", status["real_time_steps_per_s"])
                if pcm_ext and not ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.send_bytes(protocol.metadata_message(status))

    async def _receive_loop(self, ws, chat: Chat, n: int) -> None:
        """Client messages until it closes, goes idle, or ends its input (then we keep
        reading only to notice it leaving)."""
        import sphn

        once = OnceLog()
        opus = sphn.OpusStreamReader(SAMPLE_RATE)
        while True:
            try:
                msg = await ws.receive(timeout=self.config.idle_timeout_s)
            except asyncio.TimeoutError:
                if chat.source.ended.is_set():
                    continue  # the client is waiting for the flush
                log.info("conversation %d: idle for %.0f s, closing", n, self.config.idle_timeout_s)
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_bytes(protocol.error_message("idle timeout"))
                chat.stop()
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                if msg.type == WSMsgType.ERROR:
                    once.warn("ws-error", f"conversation {n}: websocket error: {ws.exception()}")
                chat.stop()  # gone: nobody left to send to (not even a flush)
                return
            if msg.type != WSMsgType.BINARY:
                once.warn("not-binary", f"conversation {n}: dropped a {msg.type.name} message "
                                        f"(the protocol is binary)")
                continue
            data: bytes = msg.data
            if not data:
                once.warn("empty", f"conversation {n}: dropped an empty message")
                continue
            kind, payload = data[0], data[1:]
            if kind == protocol.AUDIO:
                try:
                    pcm = opus.append_bytes(payload)
                except (ValueError, RuntimeError) as e:
                    once.warn("opus", f"conversation {n}: dropped bad Ogg/Opus data ({e})")
                    opus = sphn.OpusStreamReader(SAMPLE_RATE)  # its buffer is poisoned
                    continue
                chat.push(pcm)
            elif kind == protocol.PCM16:
                try:
                    chat.push(protocol.decode_pcm16(payload))
                except ValueError as e:
                    once.warn("pcm", f"conversation {n}: dropped bad PCM data ({e})")
            elif kind == protocol.CONTROL and payload[:1] == bytes([protocol.CONTROL_END_TURN]):
                log.info("conversation %d: the client ended its input%s", n,
                         "; flushing the translation" if chat.model.is_hibiki else "")
                chat.end_input()
            elif kind in protocol.KINDS_IN:
                pass  # ping, metadata, other controls: nothing to do
            else:
                once.warn(f"kind-{kind}", f"conversation {n}: dropped a message of unknown "
                                          f"kind 0x{kind:02x}")


def _new_chat(cfg: ServerConfig, req: protocol.ClientRequest, send) -> Chat:
    chat = Chat(cfg.model, req.options, cfg.chat, send, req.pcm, cfg.codecs)
    cfg.codecs = chat.codecs
    chat.warm_up()
    return chat


def _run_chat(chat: Chat, done: threading.Event):
    try:
        return chat.run()
    finally:
        done.set()


async def serve(config: ServerConfig, host: str, port: int, on_ready=None) -> None:
    """Run until cancelled. `on_ready(url)` is called once the socket is listening."""
    server = ChatServer(config)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        sockets = site._server.sockets if site._server else []  # noqa: SLF001  (the bound port)
        bound = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        if on_ready is not None:
            on_ready(f"http://{shown}:{bound}/")
        await asyncio.Event().wait()
    finally:
        server.shutdown()
        await runner.cleanup()
