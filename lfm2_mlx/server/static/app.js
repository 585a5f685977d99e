// The web page of `lfm2-audio serve`: talk to the model over /v1/realtime (same origin).
// Microphone -> pcm16 24 kHz -> input_audio_buffer.append; reply audio deltas are scheduled on a
// Web Audio clock as they arrive; speech over the reply (or pressing "talk") interrupts it.
// Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const RATE = 24000; // pcm16 in and out, as OpenAI's Realtime API
const CHUNK = 2400; // samples per append: 100 ms
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// An AudioWorklet that hands the microphone's samples to the page (from a Blob: no extra file).
const WORKLET = `
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) this.port.postMessage(ch.slice(0));
    return true;
  }
}
registerProcessor("capture", Capture);
`;

const app = {
  ws: null,
  ctx: null,
  stream: null,
  pending: [], // captured samples not yet sent
  pendingCount: 0,
  talking: false, // press-to-talk: the button is held
  sentSamples: 0, // press-to-talk: samples sent in this turn
  playAt: 0, // when the next reply chunk starts, on ctx's clock
  sources: new Set(),
  reply: null, // {id, li, text, seconds}
  speechStart: 0,
  responding: false,
  events: [], // every server event type, in order (for tests and curiosity)
  replies: 0,
  audioChunks: 0,
};
window.lfm2 = app;

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function setStatus(text, kind) {
  $("status").textContent = text;
  document.body.dataset.status = kind;
}

function bump(name, value) {
  document.body.dataset[name] = String(value);
}

function addEntry(kind, who, text) {
  const li = document.createElement("li");
  li.className = kind;
  const w = document.createElement("span");
  w.className = "who";
  w.textContent = who;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("span");
  meta.className = "meta";
  li.append(w, body, meta);
  $("log").append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

// ---- audio encoding ------------------------------------------------------------------------
function toBase64(floats) {
  const pcm = new Int16Array(floats.length);
  for (let i = 0; i < floats.length; i++) {
    const x = Math.max(-1, Math.min(1, floats[i]));
    pcm[i] = x < 0 ? x * 32768 : x * 32767;
  }
  const bytes = new Uint8Array(pcm.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function fromBase64(b64) {
  const s = atob(b64);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  const out = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) out[i] = pcm[i] / 32768;
  return out;
}

// ---- microphone ------------------------------------------------------------------------------
async function startAudio() {
  if (!navigator.mediaDevices) throw new Error("browsers allow it only on https or localhost pages");
  const ctx = new AudioContext({ sampleRate: RATE });
  try {
    await ctx.resume();
    app.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    const url = URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" }));
    await ctx.audioWorklet.addModule(url);
    const source = ctx.createMediaStreamSource(app.stream);
    const node = new AudioWorkletNode(ctx, "capture");
    node.port.onmessage = (e) => captured(e.data);
    const mute = ctx.createGain();
    mute.gain.value = 0;
    source.connect(node).connect(mute).connect(ctx.destination); // keeps the worklet running
  } catch (e) {
    ctx.close();
    throw e;
  }
  app.ctx = ctx;
}

function captured(samples) {
  if (!app.ws || app.ws.readyState !== WebSocket.OPEN) return;
  if (mode() === "ptt" && !app.talking) return;
  app.pending.push(samples);
  app.pendingCount += samples.length;
  if (app.pendingCount >= CHUNK) flushMic();
}

function flushMic() {
  if (!app.pendingCount) return;
  const all = new Float32Array(app.pendingCount);
  let at = 0;
  for (const p of app.pending) {
    all.set(p, at);
    at += p.length;
  }
  app.pending = [];
  app.pendingCount = 0;
  app.sentSamples += all.length;
  send({ type: "input_audio_buffer.append", audio: toBase64(all) });
}

// ---- playback ----------------------------------------------------------------------------------
function play(b64) {
  const samples = fromBase64(b64);
  if (!samples.length || !app.ctx) return;
  const buf = app.ctx.createBuffer(1, samples.length, RATE);
  buf.copyToChannel(samples, 0);
  const src = app.ctx.createBufferSource();
  src.buffer = buf;
  src.connect(app.ctx.destination);
  app.playAt = Math.max(app.playAt, app.ctx.currentTime + 0.05);
  src.start(app.playAt);
  app.playAt += buf.duration;
  app.sources.add(src);
  src.onended = () => app.sources.delete(src);
}

function stopPlayback() {
  for (const src of app.sources) {
    try {
      src.stop();
    } catch (e) {
      /* not started yet */
    }
  }
  app.sources.clear();
  app.playAt = 0;
}

// ---- the connection ------------------------------------------------------------------------
function send(event) {
  if (app.ws && app.ws.readyState === WebSocket.OPEN) app.ws.send(JSON.stringify(event));
}

function sessionUpdate() {
  const turn = mode() === "ptt" ? null : { type: "server_vad", create_response: true, interrupt_response: true };
  send({
    type: "session.update",
    session: {
      type: "realtime",
      output_modalities: ["audio"],
      audio: {
        input: { format: { type: "audio/pcm", rate: RATE }, turn_detection: turn },
        output: { format: { type: "audio/pcm", rate: RATE } },
      },
    },
  });
}

async function connect() {
  $("connect").disabled = true;
  setStatus("Starting the microphone…", "connecting");
  try {
    if (!app.ctx) await startAudio();
  } catch (e) {
    setStatus("No microphone: " + e.message, "error");
    $("connect").disabled = false;
    return;
  }
  const url = new URL("/v1/realtime", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const key = $("key").value.trim();
  // Browsers cannot set headers on a WebSocket: the key goes as a subprotocol, as OpenAI's do.
  const protocols = key ? ["realtime", "openai-insecure-api-key." + key] : ["realtime"];
  const ws = new WebSocket(url, protocols);
  app.ws = ws;
  setStatus("Connecting…", "connecting");
  ws.onopen = () => {
    sessionUpdate();
    $("stop").disabled = false;
    $("talk").disabled = mode() !== "ptt";
    setStatus(mode() === "ptt" ? "Hold the button and talk." : "Listening: just talk.", "listening");
  };
  ws.onmessage = (e) => {
    try {
      handle(JSON.parse(e.data));
    } catch (err) {
      console.error(err);
    }
  };
  ws.onclose = (e) => {
    if (app.ws === ws) app.ws = null;
    stopPlayback();
    $("connect").disabled = false;
    $("talk").disabled = true;
    $("stop").disabled = true;
    const why = e.code === 1006 ? " (refused: check the API key)" : e.reason ? ` (${e.reason})` : "";
    setStatus("Disconnected" + why + ".", e.wasClean ? "idle" : "error");
  };
}

function disconnect() {
  if (app.ws) app.ws.close(1000, "bye");
}

// ---- server events -------------------------------------------------------------------------
function handle(ev) {
  app.events.push(ev.type);
  switch (ev.type) {
    case "session.created":
      $("model").textContent = "Model: " + ev.session.model;
      break;
    case "input_audio_buffer.speech_started":
      app.speechStart = ev.audio_start_ms;
      stopPlayback(); // barge-in: the server cancels the reply, the page stops playing it
      setStatus("Hearing you…", "listening");
      break;
    case "input_audio_buffer.speech_stopped":
      userTurn((ev.audio_end_ms - app.speechStart) / 1000);
      break;
    case "input_audio_buffer.committed":
      if (mode() === "ptt") userTurn(app.sentSamples / RATE);
      break;
    case "response.created":
      app.responding = true;
      app.reply = { id: ev.response.id, li: addEntry("assistant", "LFM2", ""), text: "", seconds: 0 };
      setStatus("Replying…", "replying");
      break;
    case "response.output_audio_transcript.delta":
    case "response.audio_transcript.delta": // the beta API's name
    case "response.output_text.delta":
    case "response.text.delta":
      if (app.reply) {
        app.reply.text += ev.delta;
        app.reply.li.querySelector(".text").textContent = app.reply.text;
      }
      break;
    case "response.output_audio.delta":
    case "response.audio.delta": // the beta API's name
      play(ev.delta);
      app.audioChunks += 1;
      bump("audioChunks", app.audioChunks);
      if (app.reply) app.reply.seconds += (ev.delta.length * 3) / 4 / 2 / RATE;
      break;
    case "response.done":
      responseDone(ev.response);
      break;
    case "error":
      addEntry("error", "error", ev.error.message);
      break;
  }
}

function userTurn(seconds) {
  addEntry("user", "You", `(spoke for ${seconds.toFixed(1)} s)`);
}

function responseDone(r) {
  app.responding = false;
  const reply = app.reply;
  app.reply = null;
  if (reply) {
    const how = r.status === "completed" ? "" : ` · ${r.status}${r.status_details && r.status_details.reason ? " (" + r.status_details.reason + ")" : ""}`;
    reply.li.querySelector(".meta").textContent = `${reply.seconds.toFixed(1)} s of audio${how}`;
    if (!reply.text) reply.li.querySelector(".text").textContent = "(no text)";
  }
  if (r.status === "completed" || r.status === "incomplete") {
    app.replies += 1;
    bump("replies", app.replies);
  }
  if (app.ws) setStatus(mode() === "ptt" ? "Hold the button and talk." : "Listening: just talk.", "listening");
}

// ---- press to talk ---------------------------------------------------------------------------
function talkStart(e) {
  if (e.type === "keydown" && e.key !== " " && e.key !== "Enter") return;
  e.preventDefault();
  if (app.talking || mode() !== "ptt") return;
  stopPlayback();
  if (app.responding) send({ type: "response.cancel" });
  send({ type: "input_audio_buffer.clear" });
  app.pending = [];
  app.pendingCount = 0;
  app.sentSamples = 0;
  app.talking = true;
  $("talk").classList.add("active");
  setStatus("Talking… release to send.", "listening");
}

function talkEnd(e) {
  if (e.type === "keyup" && e.key !== " " && e.key !== "Enter") return;
  e.preventDefault();
  if (!app.talking) return;
  app.talking = false;
  $("talk").classList.remove("active");
  flushMic();
  if (app.sentSamples >= RATE / 10) {
    send({ type: "input_audio_buffer.commit" });
    send({ type: "response.create" });
  } else {
    setStatus("Too short: hold the button while you talk.", "listening");
  }
}

// ---- wiring ----------------------------------------------------------------------------------
$("key").value = params.get("api_key") || "";
$("connect").addEventListener("click", connect);
$("stop").addEventListener("click", disconnect);
for (const ev of ["pointerdown", "keydown"]) $("talk").addEventListener(ev, talkStart);
for (const ev of ["pointerup", "pointerleave", "keyup"]) $("talk").addEventListener(ev, talkEnd);
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => {
    sessionUpdate();
    $("talk").disabled = !app.ws || mode() !== "ptt";
  });
}
if (params.get("mode") === "ptt") document.querySelector('input[value="ptt"]').checked = true;
if (params.get("autostart") === "1") connect();
