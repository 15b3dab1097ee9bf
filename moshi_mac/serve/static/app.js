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
  sentSamples: 0, hibiki: false, errors: [],
};
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

function showText(piece) {
  const text = $("text");
  const pending = text.querySelector(".pending");
  if (pending) pending.remove();
  text.append(document.createTextNode(piece));
  page.textChars += piece.length;
  if (conv && conv.pendingNote) text.append(conv.pendingNote());
  text.scrollTop = text.scrollHeight;
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
  slow.hidden = !s.behind;
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
    setState("streaming", "Listening: talk to the model.");
  } else if (kind === KIND.pcm16) {
    const n = payload.length >> 1;
    const view = new DataView(payload.buffer, payload.byteOffset, n * 2);
    const pcm = new Float32Array(n);
    for (let i = 0; i < n; i++) pcm[i] = view.getInt16(2 * i, true) / 32768;
    page.receivedSamples += n;
    conv.playback.port.postMessage({ pcm }, [pcm.buffer]);
  } else if (kind === KIND.text) {
    showText(new TextDecoder().decode(payload));
  } else if (kind === KIND.metadata) {
    const meta = JSON.parse(new TextDecoder().decode(payload));
    if (meta.event === "hello") {
      page.hibiki = meta.hibiki;
      $("model").textContent = `${meta.model} · ${meta.hibiki ? "translation" : "conversation"}`;
      $("text-title").textContent = meta.hibiki ? "Translation" : "Text";
      if (meta.hibiki) {
        setState("streaming", "Translating… speak, then press Stop to hear the end of the translation.");
        conv.pendingNote = () => pendingSpan("translating…");
        $("text").append(conv.pendingNote());
      }
      conv.playback.port.postMessage({ settings: {
        target: Math.round(RATE * meta.jitter_ms / 1000),
        maxFill: Math.round(RATE * meta.max_buffer_ms / 1000) } });
    } else if (meta.event === "stats") {
      showStats(meta);
    }
  } else if (kind === KIND.error) {
    const text = new TextDecoder().decode(payload);
    page.errors.push(text);
    setState("error", `Server: ${text}`);
  }
}

async function start() {
  $("start").disabled = true;
  $("text").textContent = "";
  page.handshake = false;
  page.textChars = 0;
  if (conv && conv.ctx) conv.ctx.close();
  setState("starting", "Opening the microphone…");
  const ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
  await ctx.audioWorklet.addModule("worklets.js");
  const micId = $("mic").value;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: {
      deviceId: micId ? { exact: micId } : undefined, channelCount: 1,
      echoCancellation: true, noiseSuppression: false, autoGainControl: false } });
  } catch (e) {
    setState("error", `No microphone: ${e.message}`);
    $("start").disabled = false;
    ctx.close();
    return;
  }
  await listMicrophones();
  const capture = new AudioWorkletNode(ctx, "capture");
  const mute = ctx.createGain();
  mute.gain.value = 0;
  ctx.createMediaStreamSource(stream).connect(capture).connect(mute).connect(ctx.destination);
  const playback = new AudioWorkletNode(ctx, "playback", { outputChannelCount: [1],
    processorOptions: { target: RATE * 0.16, maxFill: RATE * 0.48 } });
  playback.connect(ctx.destination);
  const ws = new WebSocket(wsUrl());
  ws.binaryType = "arraybuffer";
  conv = { ctx, stream, capture, playback, ws, bufferMs: 0, ending: false, pendingNote: null };
  const mine = conv;

  capture.port.onmessage = (e) => {
    $("level").style.width = `${Math.min(100, 100 * Math.sqrt(e.data.rms) * 1.6)}%`;
    if (!page.handshake || mine.ending || ws.readyState !== WebSocket.OPEN) return;
    const pcm = e.data.pcm;
    const out = new Uint8Array(1 + 2 * pcm.length);
    out[0] = KIND.pcm16;
    const view = new DataView(out.buffer, 1);
    for (let i = 0; i < pcm.length; i++) {
      view.setInt16(2 * i, Math.max(-32768, Math.min(32767, Math.round(pcm[i] * 32767))), true);
    }
    ws.send(out);
    page.sentSamples += pcm.length;
  };
  playback.port.onmessage = (e) => {
    page.playedSamples = e.data.played;
    mine.bufferMs = 1000 * e.data.fill / RATE;
    $("played").textContent = e.data.played;
    $("buffer").textContent = Math.round(mine.bufferMs);
    $("underruns").textContent = e.data.underruns;
  };
  ws.onopen = () => setState("warming", "Connected; the model is warming up…");
  ws.onmessage = onMessage;
  ws.onerror = () => page.errors.push("websocket error");
  ws.onclose = () => {
    stopMicrophone(mine);
    const pending = $("text").querySelector(".pending");
    if (pending) pending.remove();
    if (page.state !== "error") setState("closed", page.handshake ? "Done. Press Start to go again." : "Could not connect to the server.");
    $("start").disabled = false;
    $("stop").disabled = true;
  };
  $("stop").disabled = false;
}

function stopMicrophone(c) {
  c.stream.getTracks().forEach((t) => t.stop());
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
$("stop").addEventListener("click", stop);
if (navigator.mediaDevices) navigator.mediaDevices.addEventListener("devicechange", listMicrophones);
listMicrophones();
setState("idle", $("state").textContent);
