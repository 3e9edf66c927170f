// The page's microphone: the js_on_load of the #mic gr.HTML (given element, trigger, props,
// watch). An AudioWorklet cuts the microphone into 50 ms frames of 16-bit PCM at the device's
// own rate (the server resamples); each frame goes, in order, over one WebSocket to the page's
// own server (components/page/mic_link.py) and is kept here until the server acknowledges it. So a
// dropped connection loses nothing (the page reconnects and sends the rest), a slow server
// slows the sender instead of losing audio, and Stop travels behind the last frame.
const FRAME_SECONDS = 0.05;
const MAX_AHEAD_SECONDS = 2; // audio sent but not yet acknowledged
const MAX_HELD_SECONDS = 120; // audio kept while the server is unreachable or slow
const RECONNECT_SECONDS = 30; // how long a lost connection is retried
const SOCKET_BUFFER_BYTES = 1 << 18;
const MAX_DELAYS = 6000; // frames whose delay is remembered for the figures

const WORKLET = `
class LiveCaptionsFrames extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.frame;
    this.frame = new Int16Array(this.size);
    this.n = 0;
    this.done = false;
    this.port.onmessage = (e) => {
      if (e.data !== "flush") return;
      if (this.n) this.port.postMessage(this.frame.slice(0, this.n).buffer);
      this.n = 0;
      this.done = true;
      this.port.postMessage("flushed");
    };
  }
  process(inputs) {
    if (this.done) return false;
    const samples = inputs[0] && inputs[0][0];
    if (!samples) return true;
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      this.frame[this.n++] = Math.round(s < 0 ? s * 32768 : s * 32767);
      if (this.n === this.size) {
        const full = this.frame;
        this.port.postMessage(full.buffer, [full.buffer]);
        this.frame = new Int16Array(this.size);
        this.n = 0;
      }
    }
    return true;
  }
}
registerProcessor("live-captions-frames", LiveCaptionsFrames);
`;
const workletUrl = URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" }));

const root = element.querySelector(".mic");
const recordButton = element.querySelector(".record-button");
const stopButton = element.querySelector(".stop-button");
const statusLine = element.querySelector(".mic-status");
const meter = element.querySelector(".mic-meter > span");
const clock = element.querySelector(".mic-time");
let current = null;

const config = () => {
  try {
    return JSON.parse(props.value || "{}");
  } catch (e) {
    return {};
  }
};
const say = (text, kind = "error") => {
  statusLine.textContent = text || "";
  statusLine.dataset.kind = text ? kind : "";
};
const setState = (state) => {
  root.dataset.state = state;
  const busy = state === "starting" || state === "recording";
  recordButton.hidden = busy;
  stopButton.hidden = !busy;
  recordButton.disabled = state === "stopping" || !config().token;
  if (!busy) meter.style.transform = "scaleX(0)";
};
watch("value", () => setState(root.dataset.state || "idle"));

const randomId = () => {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
};
const percentile = (values, q) => {
  if (!values.length) return "";
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))].toFixed(1);
};
const publish = (r) => {
  // The figures of this recording, for the curious and for tests and benches.
  Object.assign(root.dataset, {
    recording: r.id,
    rate: String(r.rate || ""),
    captured: String(r.captured),
    received: String(r.acked),
    frames: String(r.framesCaptured),
    reconnects: String(r.reconnects),
    delayP50: percentile(r.delays, 0.5),
    delayP95: percentile(r.delays, 0.95),
  });
};
const micError = (err) => {
  const name = (err && err.name) || "";
  if (name === "NotAllowedError" || name === "SecurityError")
    return "The browser did not allow the microphone. Allow it for this site (the icon in the address bar), then press Record again.";
  if (name === "NotFoundError" || name === "OverconstrainedError")
    return "No microphone was found. Connect one, then press Record again.";
  if (name === "NotReadableError")
    return "The microphone is in use by another program or could not be opened.";
  return `The microphone could not be started: ${(err && err.message) || err}.`;
};

function releaseCapture(r) {
  if (r.node) r.node.port.onmessage = null;
  try {
    if (r.source) r.source.disconnect();
  } catch (e) {}
  if (r.stream) r.stream.getTracks().forEach((t) => t.stop());
  if (r.context && r.context.state !== "closed") r.context.close().catch(() => {});
  r.node = r.source = r.stream = r.context = null;
}

function finish(r, message, kind = "error") {
  r.done = true;
  releaseCapture(r);
  if (r.ws) {
    const ws = r.ws;
    r.ws = null;
    try {
      ws.close(1000);
    } catch (e) {}
  }
  publish(r);
  if (current === r) {
    current = null;
    setState("idle");
  }
  say(message, kind);
}

function onAck(r, received) {
  const now = performance.now();
  while (r.frames.length && r.frames[0].start + r.frames[0].pcm.length <= received) {
    const frame = r.frames.shift();
    if (frame.sent) {
      r.delays.push(now - frame.at);
      if (r.delays.length > MAX_DELAYS) r.delays.shift();
    }
    r.next = Math.max(0, r.next - 1);
  }
  r.acked = Math.max(r.acked, received);
}

function pump(r) {
  const ws = r.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || !r.ready) return;
  while (r.next < r.frames.length) {
    if (ws.bufferedAmount > SOCKET_BUFFER_BYTES) {
      if (!r.drainTimer) r.drainTimer = setTimeout(() => ((r.drainTimer = null), pump(r)), 20);
      return;
    }
    if (r.sentTo - r.acked > MAX_AHEAD_SECONDS * r.rate) return; // the next ack pumps again
    const frame = r.frames[r.next++];
    const message = new ArrayBuffer(8 + frame.pcm.byteLength);
    new DataView(message).setFloat64(0, frame.start, true);
    new Int16Array(message, 8).set(frame.pcm);
    ws.send(message);
    frame.sent = true;
    r.sentTo = frame.start + frame.pcm.length;
  }
  if (r.stopAsked && !r.capturing && !r.stopSent) {
    ws.send(JSON.stringify({ type: "stop" }));
    r.stopSent = true;
  }
}

function onFrame(r, data) {
  if (data === "flushed") {
    r.capturing = false;
    releaseCapture(r);
    pump(r);
    return;
  }
  const pcm = new Int16Array(data);
  r.frames.push({ start: r.captured, pcm, at: performance.now(), sent: false });
  r.captured += pcm.length;
  r.framesCaptured += 1;
  let sum = 0;
  for (let i = 0; i < pcm.length; i += 4) sum += pcm[i] * pcm[i];
  const rms = Math.sqrt(sum / Math.max(1, pcm.length / 4)) / 32768;
  meter.style.transform = `scaleX(${Math.min(1, rms * 6).toFixed(3)})`;
  const seconds = Math.floor(r.captured / r.rate);
  clock.textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  if (r.captured - r.acked > MAX_HELD_SECONDS * r.rate) {
    finish(
      r,
      `The server has not taken the audio for ${MAX_HELD_SECONDS} s (the connection is too slow or gone), so recording stopped. The captions so far are kept.`,
    );
    return;
  }
  if (r.framesCaptured % 20 === 0) publish(r);
  pump(r);
}

function connect(r) {
  const url = new URL("mic", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = url.hash = "";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  r.ws = ws;
  r.ready = false;
  ws.onopen = () =>
    ws.send(JSON.stringify({ type: "hello", token: r.token, recording: r.id, rate: r.rate }));
  ws.onmessage = (e) => {
    if (r.ws !== ws) return;
    let m;
    try {
      m = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    if (m.type === "ready") {
      if (r.downSince !== null) say("");
      r.ready = true;
      r.attempts = 0;
      r.downSince = null;
      onAck(r, m.received);
      r.next = 0; // everything not acknowledged goes again; the server skips what it has
      r.sentTo = r.acked;
      pump(r);
    } else if (m.type === "ack") {
      onAck(r, m.received);
      pump(r);
    } else if (m.type === "stopped") {
      onAck(r, m.received);
      finish(r, "");
    } else if (m.type === "ended") {
      finish(r, ""); // the page's status line says why
    } else if (m.type === "error") {
      finish(r, m.message || "The server refused the microphone's audio.");
    }
  };
  ws.onclose = () => {
    if (r.ws !== ws || r.done) return;
    r.ws = null;
    r.ready = false;
    if (r.downSince === null) r.downSince = performance.now();
    if (performance.now() - r.downSince > RECONNECT_SECONDS * 1000) {
      finish(
        r,
        `The connection to the server was lost for ${RECONNECT_SECONDS} s, so recording stopped. The captions so far are kept.`,
      );
      return;
    }
    r.reconnects += 1;
    say("The connection to the server was lost; reconnecting. No audio is lost meanwhile.", "notice");
    const delay = Math.min(2000, 250 * 2 ** r.attempts++);
    setTimeout(() => {
      if (!r.done) connect(r);
    }, delay);
  };
}

async function start() {
  if (current) return;
  const { token } = config();
  if (!token) {
    say("The page is still loading; press Record again in a moment.", "notice");
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
    say(
      window.isSecureContext
        ? "This browser cannot record audio here; try a current Chrome, Edge, Firefox or Safari."
        : "The microphone needs a secure page: open it over HTTPS, or on localhost.",
    );
    return;
  }
  const r = (current = {
    id: randomId(), token, rate: 0, frames: [], next: 0, captured: 0, framesCaptured: 0,
    acked: 0, sentTo: 0, delays: [], reconnects: 0, attempts: 0, downSince: null,
    ws: null, ready: false, capturing: true, stopAsked: false, stopSent: false, done: false,
  });
  say("");
  setState("starting");
  try {
    r.stream = await navigator.mediaDevices.getUserMedia({
      // Speech engines want the room as it sounds: no echo cancelling, denoising or gain riding.
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    r.context = new AudioContext();
    await r.context.audioWorklet.addModule(workletUrl);
    r.rate = r.context.sampleRate;
    r.source = r.context.createMediaStreamSource(r.stream);
    r.node = new AudioWorkletNode(r.context, "live-captions-frames", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers",
      processorOptions: { frame: Math.round(r.rate * FRAME_SECONDS) },
    });
    r.node.port.onmessage = (e) => onFrame(r, e.data);
    r.source.connect(r.node);
    if (r.context.state === "suspended") await r.context.resume();
  } catch (err) {
    finish(r, micError(err));
    return;
  }
  if (r.done) return;
  setState(r.stopAsked ? "stopping" : "recording");
  publish(r);
  props.value = JSON.stringify({ token, recording: r.id });
  trigger("start_recording"); // the page's own event starts the session, with its settings
  connect(r);
  if (r.stopAsked) r.node.port.postMessage("flush");
}

function stop() {
  const r = current;
  if (!r || r.stopAsked) return;
  r.stopAsked = true;
  setState("stopping");
  say("Finishing…", "notice");
  if (r.node) r.node.port.postMessage("flush"); // else start() flushes once capture is up
}

recordButton.addEventListener("click", () => start());
stopButton.addEventListener("click", () => stop());
window.addEventListener("pagehide", () => current && finish(current, ""));
setState("idle");
