// Framecast live page: WebRTC receive-only video and voice, a "control" data channel, a stats
// overlay, and a Say box (text -> the session's voice; Stop speaking = barge-in).
// Plain JS, no build step, no external URLs. The server (framecast serve) serves this
// directory at / and answers POST /offer with {sdp, type, session}.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  video: $("video"), status: $("status"), log: $("log"),
  prompt: $("prompt"), mode: $("switch-mode"), switchBtn: $("switch"), form: $("prompt-form"),
  seed: $("seed"), steps: $("steps"), apply: $("apply"), token: $("token"),
  connect: $("connect"), disconnect: $("disconnect"),
  audio: $("audio"), say: $("say"), sayForm: $("say-form"), speak: $("speak"), hush: $("hush"),
  voice: $("stat-voice"), mic: $("mic"),
  fps: $("stat-fps"), latency: $("stat-latency"), ttff: $("stat-ttff"), decoded: $("stat-decoded"),
  serverFps: $("stat-server-fps"), dropped: $("stat-dropped"), promptNow: $("stat-prompt"),
};

const ICE_GATHER_TIMEOUT_MS = 3000; // no STUN/TURN: host candidates come at once
const STATS_PERIOD_MS = 1000;
const FPS_WINDOW_MS = 2000;
const AUDIO_METER_MS = 20; // the voice meter's period (one Opus frame)
const SPEAKING_RMS = 0.01; // above this the received voice counts as speaking

// Everything the page knows, also read by the browser test (window.framecast).
const state = {
  phase: "idle", // idle | connecting | connected | closed | error
  session: null,
  connectAt: 0, // performance.now() at the Connect click
  ttffMs: null, // Connect click -> first decoded frame presented
  fps: 0, // presented frames per second (requestVideoFrameCallback)
  presented: [], // recent presentation times (ms)
  decoded: 0, // framesDecoded from getStats
  latencyMs: null, // estimate, see updateLatency()
  rttMs: null, jitterMs: null, decodeMs: null,
  server: null, // last "stats" reply from the server
  replies: [], // control replies, newest last (bounded)
  audioRms: 0, // the received voice's level now (Web Audio analyser)
  speaking: false, // audioRms above SPEAKING_RMS
  lastSpeakingAt: null, // performance.now() when the voice was last heard
  audioFrames: 0, // meter readings taken (20 ms each)
  speakAt: null, hushAt: null, // performance.now() of the last Speak / Stop speaking click
  micSending: false, // the page sends its microphone
};
window.framecast = { state, connect, disconnect, send };

let pc = null;
let channel = null;
let timers = [];
let msgId = 0;
let lastInbound = null;
let audioCtx = null;
let micStream = null;

function log(line) {
  const t = new Date().toISOString().slice(11, 23);
  ui.log.textContent = `${t} ${line}\n` + ui.log.textContent.slice(0, 4000);
}

function setPhase(phase, detail) {
  state.phase = phase;
  ui.status.dataset.state = phase;
  ui.status.textContent = detail ? `${phase}: ${detail}` : phase;
  const live = phase === "connecting" || phase === "connected";
  ui.connect.disabled = live;
  ui.disconnect.disabled = !live;
  ui.switchBtn.disabled = phase !== "connected";
  ui.apply.disabled = phase !== "connected";
  ui.speak.disabled = phase !== "connected";
  ui.hush.disabled = phase !== "connected";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = ui.token.value.trim();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

function startParams() {
  const start = { prompt: ui.prompt.value.trim() };
  const seed = parseInt(ui.seed.value, 10);
  const steps = parseInt(ui.steps.value, 10);
  if (Number.isFinite(seed)) start.seed = seed;
  if (Number.isFinite(steps)) start.steps = steps;
  return start;
}

function waitForIceGathering(conn) {
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (conn.iceGatheringState === "complete") {
        conn.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    conn.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ICE_GATHER_TIMEOUT_MS); // send what we have
  });
}

async function connect() {
  if (pc) return;
  Object.assign(state, {
    session: null, ttffMs: null, fps: 0, presented: [], decoded: 0, latencyMs: null,
    rttMs: null, jitterMs: null, decodeMs: null, server: null,
  });
  lastInbound = null;
  state.connectAt = performance.now();
  setPhase("connecting");
  // No STUN/TURN servers: the server answers with its host candidates.
  pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  if (ui.mic.checked) {
    // the microphone goes up, the converted voice comes back on the same transceiver
    try {
      micStream = await navigator.mediaDevices.getUserMedia({ audio: true });
      pc.addTransceiver(micStream.getAudioTracks()[0], { direction: "sendrecv", streams: [micStream] });
      state.micSending = true;
    } catch (e) {
      log(`microphone unavailable: ${e.message || e}`);
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
  } else {
    pc.addTransceiver("audio", { direction: "recvonly" }); // inactive if the server has no voice
  }
  channel = pc.createDataChannel("control");
  channel.onopen = () => { log("control channel open"); requestStats(); };
  channel.onmessage = (ev) => onControlReply(ev.data);
  channel.onclose = () => log("control channel closed");
  pc.ontrack = (ev) => {
    if (ev.track.kind === "audio") {
      ui.audio.srcObject = new MediaStream([ev.track]);
      ui.audio.play().catch((e) => log(`audio play(): ${e}`));
      meterVoice(ev.track);
      return;
    }
    ui.video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
    ui.video.play().catch((e) => log(`play(): ${e}`));
  };
  pc.onconnectionstatechange = () => {
    const s = pc ? pc.connectionState : "closed";
    log(`connection ${s}`);
    if (s === "connected") setPhase("connected", state.session || "");
    if (s === "failed") teardown("error", "connection failed");
    if (s === "closed") teardown("closed");
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const res = await fetch("offer", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, start: startParams() }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(`${res.status} ${body.code || ""} ${body.message || body.error || res.statusText}`);
    state.session = body.session || null;
    await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
    log(`answered, session ${state.session}`);
  } catch (e) {
    log(`connect failed: ${e.message || e}`);
    teardown("error", e.message || String(e));
    return;
  }
  watchFrames();
  timers.push(setInterval(pollStats, STATS_PERIOD_MS));
  timers.push(setInterval(requestStats, STATS_PERIOD_MS));
}

function send(message) {
  if (!channel || channel.readyState !== "open") {
    log("not connected");
    return null;
  }
  message.id = ++msgId;
  channel.send(JSON.stringify(message));
  return message.id;
}

function requestStats() { send({ type: "stats" }); }

function onControlReply(data) {
  let reply;
  try { reply = JSON.parse(data); } catch (e) { log(`bad reply: ${data}`); return; }
  state.replies.push(reply);
  if (state.replies.length > 50) state.replies.shift();
  if (reply.type === "stats") {
    state.server = reply;
    renderServer();
  } else if (reply.type === "error") {
    log(`error ${reply.code}: ${reply.message}`);
  } else {
    log(`${reply.type} ${reply.for || ""} ${reply.prompt ? JSON.stringify(reply.prompt) : ""}`);
  }
}

// ---- measurement ----

function watchFrames() {
  const v = ui.video;
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = (now) => {
      if (!pc) return;
      framePresented(now);
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  } else {
    // Fallback: count decoded frames from getVideoPlaybackQuality() ten times a second.
    let seen = 0;
    timers.push(setInterval(() => {
      const total = v.getVideoPlaybackQuality().totalVideoFrames;
      for (; seen < total; seen++) framePresented(performance.now());
    }, 100));
  }
}

function framePresented(now) {
  if (state.ttffMs === null) {
    state.ttffMs = now - state.connectAt;
    ui.ttff.textContent = `${state.ttffMs.toFixed(0)} ms`;
    log(`first frame after ${state.ttffMs.toFixed(0)} ms`);
  }
  const p = state.presented;
  p.push(now);
  while (p.length && now - p[0] > FPS_WINDOW_MS) p.shift();
  state.fps = p.length > 1 ? ((p.length - 1) * 1000) / (p[p.length - 1] - p[0]) : 0;
  ui.fps.textContent = state.fps.toFixed(1);
}

async function pollStats() {
  if (!pc) return;
  const report = await pc.getStats();
  let inbound = null;
  let pair = null;
  let selectedPairId = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") inbound = s;
    if (s.type === "transport" && s.selectedCandidatePairId) selectedPairId = s.selectedCandidatePairId;
  });
  report.forEach((s) => {
    if (s.type === "candidate-pair" && (s.id === selectedPairId || (!selectedPairId && s.nominated))) pair = s;
  });
  if (pair && pair.currentRoundTripTime !== undefined) state.rttMs = pair.currentRoundTripTime * 1000;
  if (inbound) {
    state.decoded = inbound.framesDecoded || 0;
    const prev = lastInbound;
    if (prev) {
      const emitted = (inbound.jitterBufferEmittedCount || 0) - (prev.jitterBufferEmittedCount || 0);
      const decoded = (inbound.framesDecoded || 0) - (prev.framesDecoded || 0);
      if (emitted > 0) {
        state.jitterMs = (1000 * ((inbound.jitterBufferDelay || 0) - (prev.jitterBufferDelay || 0))) / emitted;
      }
      if (decoded > 0) {
        state.decodeMs = (1000 * ((inbound.totalDecodeTime || 0) - (prev.totalDecodeTime || 0))) / decoded;
      }
    }
    lastInbound = inbound;
  }
  updateLatency();
  ui.decoded.textContent = String(state.decoded);
}

function updateLatency() {
  const parts = [];
  let total = 0;
  if (state.jitterMs !== null) { total += state.jitterMs; parts.push(`jb ${state.jitterMs.toFixed(0)}`); }
  if (state.decodeMs !== null) { total += state.decodeMs; parts.push(`dec ${state.decodeMs.toFixed(0)}`); }
  if (state.rttMs !== null) { total += state.rttMs / 2; parts.push(`rtt/2 ${(state.rttMs / 2).toFixed(0)}`); }
  const age = state.server && state.server.delivery_age_ms ? state.server.delivery_age_ms.p50 : null;
  if (age !== null && age !== undefined) { total += age; parts.push(`srv ${age.toFixed(0)}`); }
  if (!parts.length) return;
  state.latencyMs = total;
  ui.latency.textContent = `≈${total.toFixed(0)} ms (${parts.join(" + ")})`;
}

function renderServer() {
  const s = state.server;
  ui.serverFps.textContent = `${Number(s.fps).toFixed(1)} / ${s.fps_target}`;
  ui.dropped.textContent = String(s.frames_dropped);
  ui.promptNow.textContent = `${s.prompt} (${s.switches} switches)`;
  if (s.audio) {
    const a = s.audio;
    const first = a.first_audio_s === null ? "-" : `${(a.first_audio_s * 1000).toFixed(0)} ms`;
    const rtf = a.real_time_factor === null ? "-" : a.real_time_factor.toFixed(2);
    ui.voice.textContent = `${a.audio_seconds.toFixed(1)} s, first ${first}, RTF ${rtf}, ${a.underruns} underruns`;
  } else {
    ui.voice.textContent = "none (framecast serve --voice default)";
  }
}

// The received voice's level, from a Web Audio analyser on the WebRTC track.
function meterVoice(track) {
  audioCtx = audioCtx || new AudioContext();
  audioCtx.resume().catch(() => {});
  const analyser = audioCtx.createAnalyser();
  analyser.fftSize = 1024;
  audioCtx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  timers.push(setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    state.audioRms = Math.sqrt(sum / buf.length);
    state.speaking = state.audioRms > SPEAKING_RMS;
    if (state.speaking) state.lastSpeakingAt = performance.now();
    state.audioFrames++;
  }, AUDIO_METER_MS));
}

// ---- controls ----

function disconnect() {
  send({ type: "stop" }); // frees the server's session at once; closing the peer would too
  teardown("closed");
}

function teardown(phase, detail) {
  for (const t of timers) clearInterval(t);
  timers = [];
  if (channel) { channel.onclose = null; channel.close(); }
  if (pc) { pc.onconnectionstatechange = null; pc.close(); }
  channel = null;
  pc = null;
  ui.video.srcObject = null;
  ui.audio.srcObject = null;
  if (audioCtx) { audioCtx.close(); audioCtx = null; }
  if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
  state.micSending = false;
  setPhase(phase, detail);
}

ui.connect.addEventListener("click", () => connect());
ui.disconnect.addEventListener("click", () => disconnect());
ui.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const prompt = ui.prompt.value.trim();
  if (!prompt) { log("the prompt is empty"); return; }
  send({ type: "switch_prompt", prompt, mode: ui.mode.value });
});
ui.sayForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = ui.say.value.trim();
  if (!text) { log("nothing to say"); return; }
  state.speakAt = performance.now();
  send({ type: "say", text, final: true });
});
ui.hush.addEventListener("click", () => {
  state.hushAt = performance.now();
  send({ type: "cancel" });
});
ui.apply.addEventListener("click", () => {
  const { seed, steps } = startParams();
  send({ type: "start", seed, steps });
});
setPhase("idle");
