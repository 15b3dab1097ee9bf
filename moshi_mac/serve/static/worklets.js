// Audio worklets for moshi-mac's page (they run on the browser's audio thread).
//
// "capture": passes the microphone's samples (already at the context's 24 kHz) to the
// page in blocks, with their RMS for the level meter.
// "playback": the jitter buffer in front of the speaker, with live mode's rules
// (moshi_mac/buffers.py JitterBuffer): playback starts once `target` samples are queued
// and again after an underrun; past `maxFill` the oldest samples are dropped down to
// `target`, so the latency it adds stays bounded. It reports played samples, fill,
// underruns and drops to the page.

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(1920); // one 80 ms model frame at 24 kHz
    this.n = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        this.block[this.n++] = ch[i];
        if (this.n === this.block.length) {
          let sum = 0;
          for (let j = 0; j < this.n; j++) sum += this.block[j] * this.block[j];
          this.port.postMessage({ pcm: this.block, rms: Math.sqrt(sum / this.n) });
          this.block = new Float32Array(1920);
          this.n = 0;
        }
      }
    }
    return true;
  }
}

class Playback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.target = o.target || 3840;
    this.maxFill = Math.max(o.maxFill || 11520, this.target);
    this.ring = new Float32Array(2 * this.maxFill + 48000);
    this.written = 0;
    this.consumed = 0;
    this.playing = false;
    this.played = 0;
    this.underruns = 0;
    this.dropped = 0;
    this.lastReport = 0;
    this.port.onmessage = (e) => {
      if (e.data.settings) {
        this.target = e.data.settings.target;
        this.maxFill = Math.max(e.data.settings.maxFill, this.target);
        return;
      }
      const pcm = e.data.pcm;
      const free = this.ring.length - (this.written - this.consumed);
      const n = Math.min(pcm.length, free);
      for (let i = 0; i < n; i++) this.ring[(this.written + i) % this.ring.length] = pcm[i];
      this.written += n;
      this.dropped += pcm.length - n;
    };
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    let avail = this.written - this.consumed;
    if (avail > this.maxFill) {
      this.dropped += avail - this.target;
      this.consumed += avail - this.target;
      avail = this.target;
    }
    if (!this.playing && avail >= Math.max(this.target, 1)) this.playing = true;
    let n = 0;
    this.sq = this.sq || 0;
    if (this.playing) {
      n = Math.min(out.length, avail);
      for (let i = 0; i < n; i++) {
        out[i] = this.ring[(this.consumed + i) % this.ring.length];
        this.sq += out[i] * out[i];
      }
      this.consumed += n;
      this.played += n;
      if (n < out.length) {
        this.underruns += 1;
        this.playing = false;
      }
    }
    for (let i = n; i < out.length; i++) out[i] = 0;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (currentTime - this.lastReport > 0.1) {
      this.lastReport = currentTime;
      this.port.postMessage({ played: this.played, fill: this.written - this.consumed,
                              underruns: this.underruns, dropped: this.dropped,
                              rms: Math.sqrt(this.sq / (0.1 * sampleRate)) });
      this.sq = 0;
    }
    return true;
  }
}

registerProcessor("capture", Capture);
registerProcessor("playback", Playback);
