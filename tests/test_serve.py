"""`moshi-mac serve` end to end: a real server process on a tiny random Hibiki, and
clients speaking Kyutai's websocket protocol with sphn's Ogg/Opus (as Kyutai's own
clients do), fed French speech from espeak-ng in real time.

The server listens on 127.0.0.1 with a free port (--port 0; it prints the URL)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ("Bonjour à tous. Aujourd'hui, nous allons parler de la météo à Paris, "
          "il fait beau et chaud.")
START_TIMEOUT_S = 180
TIMEOUT_S = 60  # any single wait on the server


# ---------------------------------------------------------------------------------------
# The server process and the speech
# ---------------------------------------------------------------------------------------

class ServerProcess:
    """`python -m moshi_mac.cli serve ...` with this checkout first on the path; its log
    is collected on a thread."""

    def __init__(self, model: Path, *extra: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
               "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moshi_mac.cli", "serve", "-w", str(model), "--port", "0",
             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.lines: list[str] = []
        self._url = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._url.wait(START_TIMEOUT_S) or not self.url:
            self.stop()
            pytest.fail("the server did not start:\n" + self.log())

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = re.search(r"serving .* on (http://127\.0\.0\.1:\d+/)", line)
            if m and not self.url:
                self.url = m.group(1)
                self._url.set()
        self._url.set()

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "api/chat"

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no log line matches {pattern!r} within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def espeak_wav(path: Path, text: str = SPEECH) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt install espeak-ng; .ci/run does)")
    subprocess.run(["espeak-ng", "-v", "fr", "-w", str(path), text], check=True)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """French speech at 24 kHz, float32 mono."""
    import soundfile as sf
    import soxr

    wav = espeak_wav(tmp_path_factory.mktemp("speech") / "speech.wav")
    pcm, rate = sf.read(str(wav), dtype="float32")
    return soxr.resample(pcm, rate, 24000).astype(np.float32)


@pytest.fixture(scope="module")
def server(make_model, tmp_path_factory):
    record = tmp_path_factory.mktemp("record")
    srv = ServerProcess(make_model("hibiki-1b"), "--record", str(record), "--max-tail", "1",
                        "--idle-timeout", "6")
    srv.record = record
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------
# A Kyutai-protocol client
# ---------------------------------------------------------------------------------------

class KyutaiClient:
    """Speaks Kyutai's protocol: Ogg/Opus pages from sphn in 0x01 messages, collects
    what comes back (decoded audio, text pieces, errors) on a task of its own."""

    def __init__(self, ws):
        import sphn

        self.ws = ws
        self.writer = sphn.OpusStreamWriter(24000)
        self.reader = sphn.OpusStreamReader(24000)
        self.kinds: list[int] = []
        self.audio: list[np.ndarray] = []
        self.audio_messages = 0
        self.text: list[str] = []
        self.errors: list[str] = []
        self.closed = asyncio.Event()
        self.task = None

    @classmethod
    async def connect(cls, session, url: str, **kw) -> "KyutaiClient":
        return cls(await session.ws_connect(url, **kw))

    @classmethod
    async def connect_when_free(cls, session, url: str, **kw) -> "KyutaiClient":
        """Connect and take the handshake, retrying while the server reports busy (the
        previous conversation may still be closing)."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            c = await cls.connect(session, url, **kw)
            first = await c.first()
            if first == b"\x00":
                return c
            assert first[:1] == b"\x05" and time.monotonic() < deadline, first
            await c.ws.close()
            await asyncio.sleep(0.3)

    async def first(self) -> bytes:
        import aiohttp

        msg = await asyncio.wait_for(self.ws.receive(), TIMEOUT_S)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        return msg.data

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._receive())

    async def _receive(self) -> None:
        import aiohttp

        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            kind, payload = msg.data[0], msg.data[1:]
            self.kinds.append(kind)
            if kind == 0x01:
                self.audio_messages += 1
                self.audio.append(self.reader.append_bytes(payload))
            elif kind == 0x02:
                self.text.append(payload.decode("utf-8"))
            elif kind == 0x05:
                self.errors.append(payload.decode("utf-8"))
        self.closed.set()

    async def send_speech(self, pcm: np.ndarray, seconds: float | None = None) -> None:
        """In real time, one 80 ms frame at a time, as a microphone would."""
        n = pcm.size if seconds is None else min(pcm.size, int(seconds * 24000))
        t0 = time.monotonic()
        for k, i in enumerate(range(0, n - 1919, 1920)):
            pages = self.writer.append_pcm(pcm[i:i + 1920])
            if pages:
                await self.ws.send_bytes(b"\x01" + pages)
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.08 - time.monotonic()))

    async def wait_for(self, test, what: str, timeout: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not test():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    def pcm(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 4 * TIMEOUT_S))


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------

def test_kyutai_client_conversation_records_and_survives_bad_messages(server, speech):
    import aiohttp
    import soundfile as sf

    before = set(server.record.glob("session-*"))

    async def go():
        async with aiohttp.ClientSession() as http_:
            c = await KyutaiClient.connect_when_free(  # the handshake: exactly b"\x00"
                http_, server.ws_url + "?text_temperature=0.6&audio_topk=100&pad_mult=0")
            c.start()
            await c.send_speech(speech, seconds=1.5)
            # Malformed messages: each is logged once and dropped; the session goes on.
            for bad in (b"", b"\x09junk", b"\x01this is not an ogg page", b"\x81abc"):
                await c.ws.send_bytes(bad)
            await c.ws.send_str("hello")
            audio_before = c.audio_messages
            await c.send_speech(speech[int(1.5 * 24000):])
            await c.wait_for(lambda: c.audio_messages > audio_before + 3, "audio after bad messages")
            await c.ws.send_bytes(b"\x03\x01")  # end of input: Hibiki flushes, then the server closes
            at_end = c.audio_messages
            await asyncio.wait_for(c.closed.wait(), TIMEOUT_S)
            assert c.audio_messages > at_end, "the flush's output arrives before the close"
            return c

    c = run(go())
    pcm = c.pcm()
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert pcm.size >= 10 * 1920, "at least 10 frames of 24 kHz audio decoded from Opus"
    assert np.isfinite(pcm).all() and np.abs(pcm).max() > 0
    assert set(c.kinds) <= {0x01, 0x02}, "a plain Kyutai client gets only audio and text"
    assert c.text and "".join(c.text).strip(), "text messages arrive"
    log = server.log()
    for problem in ("empty message", "unknown kind 0x09", "bad Ogg/Opus", "bad PCM", "TEXT message"):
        assert log.count(problem) == 1, (problem, log)
    assert "'pad_mult' is not supported" in log
    assert "the client ended its input; flushing the translation" in log
    server.wait_log(r"conversation \d+ ended")

    # --record: input, output and the timed transcript of that conversation.
    (folder,) = set(server.record.glob("session-*")) - before
    mic, rate = sf.read(str(folder / "input.wav"), dtype="float32")
    out, rate_out = sf.read(str(folder / "output.wav"), dtype="float32")
    assert rate == rate_out == 24000
    assert abs(mic.size - speech.size) < 3 * 1920, "the whole input is recorded (bad data left out)"
    assert out.size >= pcm.size - 1920 and np.abs(out).max() > 0
    doc = json.loads((folder / "transcript.json").read_text())
    assert doc["model_type"] == "hibiki" and doc["session"]["frames_out"] > 0
    assert doc["text"].strip() and (folder / "transcript.srt").exists()


def test_second_client_is_busy_while_the_first_goes_on(server, speech):
    import aiohttp

    async def go():
        async with aiohttp.ClientSession() as http_:
            first = await KyutaiClient.connect_when_free(http_, server.ws_url)
            first.start()
            feeding = asyncio.ensure_future(first.send_speech(speech, seconds=4))
            await first.wait_for(lambda: first.audio_messages > 0, "the first client's audio")
            second = await KyutaiClient.connect(http_, server.ws_url)
            busy = await second.first()
            assert busy[:1] == b"\x05" and b"busy" in busy and b"\n" not in busy
            msg = await asyncio.wait_for(second.ws.receive(), TIMEOUT_S)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert second.ws.closed
            seen = first.audio_messages
            await first.wait_for(lambda: first.audio_messages > seen + 3,
                                 "the first client's audio after the refusal")
            assert not first.errors and not first.closed.is_set()
            await feeding
            await first.ws.close()

    run(go())


def test_disconnect_mid_stream_frees_the_session(server, speech):
    import aiohttp

    async def go():
        async with aiohttp.ClientSession() as http_:
            c = await KyutaiClient.connect_when_free(http_, server.ws_url)
            await c.send_speech(speech, seconds=1.0)
        # The client is gone without a goodbye (its HTTP session closed mid-stream): the
        # next one gets the handshake.
        async with aiohttp.ClientSession() as http_:
            c = await KyutaiClient.connect_when_free(http_, server.ws_url)
            c.start()
            await c.send_speech(speech, seconds=1.0)
            await c.wait_for(lambda: c.audio_messages > 0, "audio for the next client")
            await c.ws.close()

    run(go())


def test_idle_client_is_closed(server):
    import aiohttp

    async def go():
        async with aiohttp.ClientSession() as http_:
            c = await KyutaiClient.connect_when_free(http_, server.ws_url)
            c.start()
            t0 = time.monotonic()
            await asyncio.wait_for(c.closed.wait(), TIMEOUT_S)
            return c, time.monotonic() - t0

    c, waited = run(go())
    assert c.errors == ["idle timeout"] and 5 < waited < 40


def test_pcm_extension_for_our_page(server, speech):
    import aiohttp

    async def go():
        async with aiohttp.ClientSession() as http_:
            ws = (await KyutaiClient.connect_when_free(http_, server.ws_url + "?codec=pcm16")).ws
            got = {"pcm": 0, "stats": [], "text": 0, "opus": 0}
            hello = json.loads((await ws.receive()).data[1:])
            assert hello["event"] == "hello" and hello["hibiki"] is True
            assert hello["sample_rate"] == 24000 and hello["jitter_ms"] == 160

            async def receive():
                async for msg in ws:
                    kind = msg.data[0]
                    if kind == 0x81:
                        assert (len(msg.data) - 1) % 2 == 0
                        got["pcm"] += (len(msg.data) - 1) // 2
                    elif kind == 0x04:
                        got["stats"].append(json.loads(msg.data[1:]))
                    elif kind == 0x02:
                        got["text"] += 1
                    elif kind == 0x01:
                        got["opus"] += 1

            task = asyncio.ensure_future(receive())
            t0 = time.monotonic()
            for k, i in enumerate(range(0, 2 * 24000, 1920)):
                chunk = (np.clip(speech[i:i + 1920], -1, 1) * 32767).astype("<i2").tobytes()
                await ws.send_bytes(b"\x81" + chunk)
                await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.08 - time.monotonic()))
            await ws.send_bytes(b"\x03\x01")
            await asyncio.wait_for(task, TIMEOUT_S)
            return got

    got = run(go())
    assert got["pcm"] >= 5 * 1920 and got["opus"] == 0 and got["text"] > 0
    stats = got["stats"]
    assert stats and all(s["event"] == "stats" for s in stats)
    assert {"steps_per_s", "latency_ms", "skipped", "behind"} <= set(stats[-1])
    assert stats[-1]["frames_out"] > 0


def test_oversized_message_closes_the_connection(server):
    import aiohttp

    from moshi_mac.serve.server import MAX_MESSAGE_BYTES

    async def go():
        async with aiohttp.ClientSession() as http_:
            c = await KyutaiClient.connect_when_free(http_, server.ws_url)
            await c.ws.send_bytes(b"\x01" + bytes(MAX_MESSAGE_BYTES))
            while True:
                msg = await asyncio.wait_for(c.ws.receive(), TIMEOUT_S)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    return msg, c.ws.close_code

    msg, code = run(go())
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and code == 1009


def test_origin_is_checked(server):
    import aiohttp

    async def go():
        async with aiohttp.ClientSession() as http_:
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http_.ws_connect(server.ws_url, headers={"Origin": "http://evil.example"})
            assert e.value.status == 403
            same = server.url.rstrip("/")
            c = await KyutaiClient.connect_when_free(http_, server.ws_url, headers={"Origin": same})
            await c.ws.close()

    run(go())
    assert "refused a websocket from origin http://evil.example" in server.log()


def test_static_files_never_leave_the_folder(server):
    host = server.url.split("//")[1].rstrip("/")

    def get(path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(host, timeout=TIMEOUT_S)
        conn.putrequest("GET", path, skip_accept_encoding=True)  # sent as is, not normalized
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()

    status, body = get("/")
    assert status == 200 and b"moshi-mac" in body and b"app.js" in body
    assert get("/app.js")[0] == 200 and get("/worklets.js")[0] == 200
    for path in ("/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 "/static/../../../../etc/hostname", "/..%2f..%2f..%2fetc%2fpasswd"):
        status, body = get(path)
        assert status in (400, 403, 404), (path, status)
        assert b"root:" not in body


# ---------------------------------------------------------------------------------------
# Without a model: the query, the Origin rule, --static and the CLI's checks
# ---------------------------------------------------------------------------------------

def test_query_parameters_honoured_or_logged_once(caplog):
    from moshi_mac.generate import GenOptions
    from moshi_mac.serve.protocol import OnceLog, parse_query

    once = OnceLog()
    base = GenOptions(temp=0.8, seed=1)
    q = {"text_temperature": "0.5", "audio_temperature": "0.9", "text_topk": "20",
         "audio_topk": "200.0", "text_seed": "7", "audio_seed": "8", "pad_mult": "0",
         "codec": "pcm16"}
    with caplog.at_level("WARNING"):
        req = parse_query(q, base, once)
        parse_query({"pad_mult": "1", "audio_seed": "9"}, base, once)
    o = req.options
    assert (o.temp_text, o.temp, o.top_k_text, o.top_k, o.seed) == (0.5, 0.9, 20, 200, 7)
    assert req.pcm and set(req.ignored) == {"audio_seed", "pad_mult"}
    assert base.seed == 1 and base.temp == 0.8, "the server's options are not changed"
    assert [r.getMessage().count("pad_mult") for r in caplog.records].count(1) == 1
    assert parse_query({"text_topk": "many"}, base, once).options.top_k_text is None


@pytest.mark.parametrize("flush", [True, False])
def test_end_of_input_source(flush):
    """The engine's source: the client's frames (the last partial one completed with
    silence), then for Hibiki the end-of-input frame and at most max_tail silent frames;
    for Moshi, nothing more."""
    from moshi_mac.buffers import LagPolicy, SampleRing
    from moshi_mac.live import LiveStats, MicSource
    from moshi_mac.serve.chat import EndOfInput

    ring = SampleRing(24000 * 4)
    mic = MicSource(ring, 24000, LagPolicy(max_lag_s=60), LiveStats(), lambda: 0.0)
    source = EndOfInput(mic, ring, flush=flush, max_tail_frames=3)
    stop = threading.Event()
    pcm = np.linspace(-0.5, 0.5, 1920 * 2 + 100, dtype=np.float32)
    ring.write(pcm)
    first = source(stop)
    assert first.kind == "input" and first.offset == 0 and np.array_equal(first.pcm, pcm[:1920])
    source.end()
    frames = []
    while (frame := source(stop)) is not None:
        frames.append(frame)
        assert len(frames) < 10
    kinds = [f.kind for f in frames]
    assert kinds == (["input", "input", "eos", "tail", "tail", "tail"] if flush else ["input", "input"])
    assert [f.offset for f in frames] == [1920 * k for k in range(1, len(frames) + 1)]
    last = frames[1].pcm
    assert np.array_equal(last[:100], pcm[-100:]) and not last[100:].any()


def test_origin_rule():
    from moshi_mac.serve.server import origin_allowed

    assert origin_allowed(None, "127.0.0.1:8998", ())
    assert origin_allowed("http://127.0.0.1:8998", "127.0.0.1:8998", ())
    assert not origin_allowed("http://127.0.0.1:9000", "127.0.0.1:8998", ())
    assert not origin_allowed("http://evil.example", "127.0.0.1:8998", ())
    assert origin_allowed("http://localhost:5173", "127.0.0.1:8998", ("http://localhost:5173/",))
    assert origin_allowed("http://evil.example", "127.0.0.1:8998", ("*",))
    assert not origin_allowed("file://", "127.0.0.1:8998", ())


def test_static_dir_serves_another_client(tmp_path):
    """--static DIR (e.g. Kyutai's client `dist`): its index at /, its assets, nothing
    outside it, no symlink out."""
    from aiohttp.test_utils import TestClient, TestServer

    from moshi_mac.serve.server import ChatServer, ServerConfig

    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<html>kyutai client</html>")
    (dist / "assets" / "index.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("secret")
    (dist / "link.txt").symlink_to(tmp_path / "secret.txt")

    async def go():
        app = ChatServer(ServerConfig(model=None, options=None, static=dist)).app()
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            r = await client.get("/")
            assert r.status == 200 and "kyutai client" in await r.text()
            assert (await client.get("/assets/index.js")).status == 200
            for path in ("/../secret.txt", "/link.txt", "/%2e%2e/secret.txt"):
                r = await client.get(path)
                assert r.status in (400, 403, 404), path
                assert "secret" not in await r.text()

    asyncio.run(go())


def test_cli_warns_off_localhost_and_checks_static(tmp_path, capsys):
    from moshi_mac.cli import main

    rc = main(["serve", "-w", str(tmp_path / "missing"), "--host", "0.0.0.0"])
    out, err = capsys.readouterr()
    assert rc != 0 and "error:" in err and "Traceback" not in err
    assert "anyone who can reach this machine" in out and len(
        [line for line in out.splitlines() if "anyone" in line]) == 1
    rc = main(["serve", "-w", str(tmp_path), "--static", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 1 and "has no index.html" in err
    rc = main(["serve", "-w", str(tmp_path)])
    out, err = capsys.readouterr()
    assert "anyone" not in out
