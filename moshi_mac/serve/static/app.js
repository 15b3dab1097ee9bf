// moshi-mac's page: the microphone to /api/chat and the model's voice and text back.
// It speaks Kyutai's protocol with moshi-mac's PCM extension (?codec=pcm16: 0x81 + int16
// little-endian 24 kHz mono, and 0x04 JSON stats), so no Opus codec is needed in the
// browser. See moshi_mac/serve/protocol.py.
"use strict";

const RATE = 24000;
const KIND = { handshake: 0x00, audio: 0x01, text: 0x02, control: 0x03, metadata: 0x04,
               error: 0x05, pcm16: 0x81 };
const END_TURN = 0x01;
const $ = (id) => document.getElementById(id);

// What the tests (and the curious) can read: window.moshiMac.
const page = window.moshiMac = {
  state: "idle", handshake: false, playedSamples: 0, receivedSamples: 0, textChars: 0,
  sentSamples: 0, hibiki: false, errors: [], queued: null, closeCode: null, micOpen: false,
  following: true, sampling: null,
};
page.onMessage = (data) => onMessage({ data }); // the tests feed messages through this
const SLOW_HOLD_MS = 2000; // the below-real-time banner stays this long after the last "behind"
let conv = null; // the running conversation

function setState(state, text) {
  page.state = state;
  $("state").textContent = text;
}

async function listMicrophones() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const sel = $("mic");
  const keep = sel.value;
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
  sel.length = 1;
  devices.forEach((d, i) => {
    if (!d.deviceId || d.deviceId === "default") return;
    const opt = new Option(d.label || `microphone ${i + 1}`, d.deviceId);
    sel.add(opt);
  });
  sel.value = [...sel.options].some((o) => o.value === keep) ? keep : "";
}

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  return `${proto}://${location.host}/api/chat?codec=pcm16`;
}

function followText() {
  const box = $("text");
  if (page.following) box.scrollTop = box.scrollHeight;
  $("latest").hidden = page.following;
}

function showText(piece) {
  const text = $("text");
  const pending = text.querySelector(".pending");
  if (pending) pending.remove();
  text.append(document.createTextNode(piece));
  page.textChars += piece.length;
  if (conv && conv.pendingNote) text.append(conv.pendingNote());
  if (conv) conv.transcript.push(piece);
  followText();
}

function pendingSpan(label) {
  const span = document.createElement("span");
  span.className = "pending";
  span.textContent = ` ${label}`;
  return span;
}

function showStats(s) {
  $("steps").textContent = s.steps_per_s.toFixed(1);
  $("skipped").textContent = s.skipped;
  const out = conv && conv.ctx ? (conv.ctx.baseLatency || 0) + (conv.ctx.outputLatency || 0) : 0;
  const buffer = conv ? conv.bufferMs : 0;
  $("latency").textContent = Math.round(s.latency_ms + buffer + 1000 * out);
  const slow = $("slow");
  if (s.behind) page.slowSince = Date.now();
  const show = s.behind || (page.slowSince && Date.now() - page.slowSince < SLOW_HOLD_MS);
  slow.classList.toggle("shown", Boolean(show));
  if (s.behind) {
    slow.textContent = `The model is running below real time on this machine ` +
      `(${s.steps_per_s.toFixed(1)} steps/s; ${s.real_time_steps_per_s} are needed): ` +
      `parts of your speech are being skipped to keep the latency bounded. ` +
      `Try a quantized model (q8 or q4) or close other programs.`;
  }
}

function onMessage(event) {
  const data = new Uint8Array(event.data);
  if (!data.length) return;
  const kind = data[0];
  const payload = data.subarray(1);
  if (kind === KIND.handshake) {
    page.handshake = true;
    page.queued = null;
    setState("streaming", "Listening: talk to the model.");
    if (conv && conv.openMic) conv.openMic();
  } else if (kind === KIND.pcm16) {
    const n = payload.length >> 1;
    const view = new DataView(payload.buffer, payload.byteOffset, n * 2);
    const pcm = new Float32Array(n);
    for (let i = 0; i < n; i++) pcm[i] = view.getInt16(2 * i, true) / 32768;
    page.receivedSamples += n;
    if (conv) conv.played.push(pcm.slice());
    if (conv) conv.playback.port.postMessage({ pcm }, [pcm.buffer]);
  } else if (kind === KIND.text) {
    showText(new TextDecoder().decode(payload));
  } else if (kind === KIND.metadata) {
    const meta = JSON.parse(new TextDecoder().decode(payload));
    if (meta.event === "queued") {
      page.queued = meta.ahead;
      const n = meta.ahead;
      setState("queued", `The server is busy: waiting, ${n} conversation${n === 1 ? "" : "s"} ahead.`);
    } else if (meta.event === "hello") {
      page.hibiki = meta.hibiki;
      page.sampling = meta.sampling || null;
      $("model").textContent = `${meta.model} · ${meta.hibiki ? "translation" : "conversation"}` +
        samplingText(meta.sampling, meta.client_sampling);
      $("text-title").textContent = meta.hibiki ? "Translation" : "Text";
      if (meta.hibiki) {
        setState("streaming", "Translating… speak, then press Stop to hear the end of the translation.");
        conv.pendingNote = () => pendingSpan("translating…");
        $("text").append(conv.pendingNote());
      }
      if (conv) conv.playback.port.postMessage({ settings: {
        target: Math.round(RATE * meta.jitter_ms / 1000),
        maxFill: Math.round(RATE * meta.max_buffer_ms / 1000) } });
    } else if (meta.event === "stats") {
      showStats(meta);
    }
  } else if (kind === KIND.error) {
    const text = new TextDecoder().decode(payload);
    page.errors.push(text);
    if (/shutting down/.test(text)) setState("shutdown", "The server is shutting down.");
    else setState("error", `Server: ${text}`);
  }
}

function samplingText(s, policy) {
  if (!s) return "";
  const seed = s.seed === null || s.seed === undefined ? "random seed" : `seed ${s.seed}`;
  const whose = policy === "ignore" ? " (server's)" : policy === "honour" ? " (as asked)" : "";
  return ` · sampling: temp ${s.temp} / text ${s.temp_text}, top-k ${s.top_k} / ${s.top_k_text}, ${seed}${whose}`;
}

function meterWidth(rms) {
  return `${Math.min(100, 100 * Math.sqrt(rms) * 1.6)}%`;
}

// A suspended AudioContext plays and records nothing: ask for a click and resume on it.
function watchContext(ctx) {
  const check = () => {
    const suspended = ctx.state === "suspended";
    page.audioState = ctx.state;
    $("resume").hidden = !suspended;
  };
  ctx.onstatechange = check;
  check();
}

async function openMic(mine) {
  const { ctx, ws } = mine;
  const micId = $("mic").value;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: {
      deviceId: micId ? { exact: micId } : undefined, channelCount: 1,
      echoCancellation: true, noiseSuppression: false, autoGainControl: false } });
  } catch (e) {
    mine.micError = true;
    setState("error", `No microphone: ${e.message}`);
    ws.close();
    return;
  }
  if (mine.closed) { stream.getTracks().forEach((t) => t.stop()); return; }
  mine.stream = stream;
  page.micOpen = true;
  await listMicrophones();
  const mute = ctx.createGain();
  mute.gain.value = 0;
  ctx.createMediaStreamSource(stream).connect(mine.capture).connect(mute).connect(ctx.destination);
  mine.capture.port.onmessage = (e) => {
    $("level").style.width = meterWidth(e.data.rms);
    if (!page.handshake || mine.ending || ws.readyState !== WebSocket.OPEN) return;
    const pcm = e.data.pcm;
    const out = new Uint8Array(1 + 2 * pcm.length);
    out[0] = KIND.pcm16;
    const view = new DataView(out.buffer, 1);
    for (let i = 0; i < pcm.length; i++) {
      view.setInt16(2 * i, Math.max(-32768, Math.min(32767, Math.round(pcm[i] * 32767))), true);
    }
    ws.send(out);
    mine.sent.push(pcm.slice());
    page.sentSamples += pcm.length;
  };
}

async function start() {
  $("start").disabled = true;
  $("text").textContent = "";
  $("downloads").hidden = true;
  page.handshake = false;
  page.textChars = 0;
  page.queued = null;
  page.closeCode = null;
  page.micOpen = false;
  page.following = true;
  followText();
  if (conv && conv.ctx) conv.ctx.close();
  setState("starting", "Connecting…");
  const ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
  watchContext(ctx);
  await ctx.audioWorklet.addModule("worklets.js");
  const capture = new AudioWorkletNode(ctx, "capture");
  const playback = new AudioWorkletNode(ctx, "playback", { outputChannelCount: [1],
    processorOptions: { target: RATE * 0.16, maxFill: RATE * 0.48 } });
  playback.connect(ctx.destination);
  const ws = new WebSocket(wsUrl());
  ws.binaryType = "arraybuffer";
  conv = { ctx, stream: null, capture, playback, ws, bufferMs: 0, ending: false, pendingNote: null,
           sent: [], played: [], transcript: [], closed: false };
  const mine = conv;
  // The microphone opens only once the server has granted the slot (its handshake).
  mine.openMic = () => openMic(mine);

  playback.port.onmessage = (e) => {
    page.playedSamples = e.data.played;
    mine.bufferMs = 1000 * e.data.fill / RATE;
    $("played").textContent = e.data.played;
    $("buffer").textContent = Math.round(mine.bufferMs);
    $("underruns").textContent = e.data.underruns;
    $("out-level").style.width = meterWidth(e.data.rms || 0);
  };
  ws.onopen = () => setState("warming", "Connected; the model is warming up…");
  ws.onmessage = onMessage;
  ws.onerror = () => page.errors.push("websocket error");
  ws.onclose = (e) => {
    mine.closed = true;
    page.closeCode = e.code;
    stopMicrophone(mine);
    const pending = $("text").querySelector(".pending");
    if (pending) pending.remove();
    if (e.code === 1001 || page.state === "shutdown") {
      setState("shutdown", "The server is shutting down.");
    } else if (page.state === "error") {
      // the server's own words stay on screen
    } else if (!page.handshake && page.queued === null) {
      setState("closed", "Could not connect to the server.");
    } else if (e.code === 1000 && mine.ending) {
      setState("closed", "Done. Press Start to go again.");
    } else if (e.code === 1000 && page.hibiki === false && page.handshake) {
      setState("closed", "The server ended the conversation. Press Start to go again.");
    } else if (mine.ending && e.code === 1005) {
      setState("closed", "Done. Press Start to go again.");
    } else {
      setState("dropped", `The connection to the server was lost (code ${e.code}). ` +
        "Press Start to try again.");
    }
    offerDownloads(mine);
    $("out-level").style.width = "0";
    $("start").disabled = false;
    $("stop").disabled = true;
  };
  $("stop").disabled = false;
}

function wavBlob(chunks) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const buf = new ArrayBuffer(44 + 2 * n);
  const v = new DataView(buf);
  const str = (o, t) => { for (let i = 0; i < t.length; i++) v.setUint8(o + i, t.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + 2 * n, true); str(8, "WAVE"); str(12, "fmt ");
  v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, RATE, true); v.setUint32(28, 2 * RATE, true); v.setUint16(32, 2, true);
  v.setUint16(34, 16, true); str(36, "data"); v.setUint32(40, 2 * n, true);
  let o = 44;
  for (const c of chunks) {
    for (let i = 0; i < c.length; i++, o += 2) {
      v.setInt16(o, Math.max(-32768, Math.min(32767, Math.round(c[i] * 32767))), true);
    }
  }
  return new Blob([buf], { type: "audio/wav" });
}

function offerDownloads(c) {
  if (!c.sent.length && !c.played.length && !c.transcript.length) return;
  const set = (id, blob) => {
    const a = $(id);
    if (a.href && a.href.startsWith("blob:")) URL.revokeObjectURL(a.href);
    a.href = URL.createObjectURL(blob);
  };
  set("dl-input", wavBlob(c.sent));
  set("dl-output", wavBlob(c.played));
  set("dl-text", new Blob([c.transcript.join("")], { type: "text/plain;charset=utf-8" }));
  $("downloads").hidden = false;
}

function stopMicrophone(c) {
  if (c.stream) c.stream.getTracks().forEach((t) => t.stop());
  c.capture.port.onmessage = null;
  $("level").style.width = "0";
}

function stop() {
  if (!conv) return;
  if (conv.ending || conv.ws.readyState !== WebSocket.OPEN) {
    conv.ws.close();
    return;
  }
  // End of input: Hibiki translates what it has heard to the end, then the server closes.
  conv.ending = true;
  stopMicrophone(conv);
  conv.ws.send(new Uint8Array([KIND.control, END_TURN]));
  if (page.hibiki) {
    conv.pendingNote = () => pendingSpan("finishing the translation…");
    const pending = $("text").querySelector(".pending");
    if (pending) pending.replaceWith(conv.pendingNote());
    setState("flushing", "Finishing the translation… (Stop again to cut it short)");
  } else {
    setState("flushing", "Stopping…");
  }
}

$("start").addEventListener("click", start);
$("resume").addEventListener("click", () => { if (conv && conv.ctx) conv.ctx.resume(); });
$("latest").addEventListener("click", () => { page.following = true; followText(); });
$("text").addEventListener("scroll", () => {
  const box = $("text");
  page.following = box.scrollHeight - box.scrollTop - box.clientHeight < 8;
  $("latest").hidden = page.following;
});
$("stop").addEventListener("click", stop);
if (navigator.mediaDevices) navigator.mediaDevices.addEventListener("devicechange", listMicrophones);
listMicrophones();
setState("idle", $("state").textContent);
