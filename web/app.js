// denoise-sfu demo client: joins a room over the WebSocket room protocol (docs/ws-protocol.md),
// publishes the raw microphone on one RTCPeerConnection and plays everyone else's denoised audio.
// No build step, no dependencies.
"use strict";

const MODES = ["auto", "on", "off"];
const $ = (id) => document.getElementById(id);

const call = {
  ws: null,
  pc: null,
  mic: null,
  audio: null,         // AudioContext for the level meters
  identity: null,
  room: null,
  mode: "auto",
  people: new Map(),   // identity -> {li, meter, analyser, audio, mid, trackId, raw}
  myAnalyser: null,
  queue: Promise.resolve(),
  meterTimer: 0,
  leaving: false,
};
// Read-only view for the browser tests and for poking around in the console.
window.denoiseDemo = call;

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function send(message) {
  if (call.ws && call.ws.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify(message));
}

function tokenFromUrl() {
  const hash = new URLSearchParams(location.hash.slice(1));
  return hash.get("token") || new URLSearchParams(location.search).get("token");
}

/** A token from the link, from the form, or (when the server offers demo tokens) from the server. */
async function getToken(room, name) {
  const given = tokenFromUrl() || $("token").value.trim();
  if (given) return given;
  const response = await fetch("demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ room, name }),
  });
  if (response.ok) return (await response.json()).token;
  $("token-field").hidden = false;
  $("token").focus();
  throw new Error("This server needs an access token: paste one below.");
}

function levelOf(analyser, buffer) {
  analyser.getFloatTimeDomainData(buffer);
  let sum = 0;
  for (const x of buffer) sum += x * x;
  const rms = Math.sqrt(sum / buffer.length);
  const db = 20 * Math.log10(rms + 1e-9);
  return Math.min(1, Math.max(0, (db + 60) / 60)); // -60 dBFS .. 0 dBFS
}

function makeAnalyser(stream) {
  const source = call.audio.createMediaStreamSource(stream);
  const analyser = call.audio.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  return analyser;
}

function updateMeters() {
  const buffer = new Float32Array(1024);
  if (call.myAnalyser) $("my-meter").value = levelOf(call.myAnalyser, buffer);
  for (const person of call.people.values()) {
    if (person.analyser) person.meter.value = levelOf(person.analyser, buffer);
  }
}

async function join(event) {
  event.preventDefault();
  const form = $("join-form");
  if (!form.reportValidity()) return;
  const room = $("room").value.trim();
  const name = $("name").value.trim();
  call.mode = form.querySelector("input[name=join-mode]:checked").value;
  $("join-button").disabled = true;
  call.leaving = false;
  try {
    setStatus("Getting an access token…");
    const token = await getToken(room, name);
    setStatus("Opening the microphone…");
    if (!navigator.mediaDevices) {
      throw new Error("The microphone needs a secure page: open this demo over https or on localhost.");
    }
    call.mic = await navigator.mediaDevices.getUserMedia({
      audio: { noiseSuppression: false, echoCancellation: false, autoGainControl: false },
      video: false,
    });
    call.audio = new AudioContext();
    call.myAnalyser = makeAnalyser(call.mic);
    call.meterTimer = setInterval(updateMeters, 100);
    setStatus("Connecting…");
    openSocket(token);
  } catch (error) {
    setStatus(error.message || String(error), true);
    cleanup();
  }
}

/**
 * Open the room socket and join. In a cluster the room may live on another node: the server
 * then answers the join with `{type: "redirect", url}` (a browser's WebSocket cannot follow an
 * HTTP 307) and the page joins again there, with the same token, at most 3 times.
 */
function openSocket(token, target = null, redirects = 0) {
  let url;
  if (target) {
    url = new URL(target);
  } else {
    url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  }
  const ws = new WebSocket(url);
  call.ws = ws;
  call.node = url.origin;
  ws.onopen = () => send({ type: "join", token, mode: call.mode });
  ws.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "redirect") {
      ws.onmessage = null;
      ws.onclose = null;
      ws.close();
      if (redirects >= 3) {
        setStatus("The room keeps moving between servers; try again.", true);
        cleanup();
        return;
      }
      setStatus(`Connecting to the server of room ${message.room}…`);
      call.redirects = redirects + 1;
      openSocket(token, message.url, redirects + 1);
      return;
    }
    // Handle messages strictly in order: an offer must finish before the next one starts.
    call.queue = call.queue.then(() => handle(message)).catch((error) => {
      setStatus(`Error: ${error.message || error}`, true);
    });
  };
  ws.onclose = (event) => {
    if (!call.leaving) setStatus(`Disconnected${event.reason ? `: ${event.reason}` : ""}.`, true);
    cleanup();
  };
}

async function handle(message) {
  switch (message.type) {
    case "joined":
      return onJoined(message);
    case "answer":
      return call.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
    case "offer":
      return onOffer(message);
    case "participants":
      return renderParticipants(message.participants);
    case "listening":
      return onListening(message);
    case "error":
      setStatus(`Server: ${message.message}`, true);
      return undefined;
    case "bye":
      call.leaving = true;
      setStatus(`Left the room (${message.reason}).`);
      return undefined;
    default:
      return undefined;
  }
}

async function onJoined(message) {
  call.identity = message.identity;
  call.room = message.room;
  $("room-name").textContent = message.room;
  $("my-identity").textContent = message.identity;
  setMyMode(message.mode);
  $("join-panel").hidden = true;
  $("call-panel").hidden = false;
  history.replaceState(null, "", `?room=${encodeURIComponent(message.room)}`);

  const pc = new RTCPeerConnection();
  call.pc = pc;
  pc.ontrack = () => renderParticipants(null);
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") setStatus(`Connected to room ${call.room}.`);
    if (pc.connectionState === "failed") setStatus("Media connection failed.", true);
  };
  pc.addTransceiver(call.mic.getAudioTracks()[0], { direction: "sendonly" });
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  send({ type: "offer", sdp: pc.localDescription.sdp });
  renderParticipants(message.participants);
}

/** The server does not trickle ICE: send complete descriptions. */
function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);
  });
}

async function onOffer(message) {
  const pc = call.pc;
  await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  send({ type: "answer", sdp: pc.localDescription.sdp });
  renderParticipants(null);
}

function setMyMode(mode) {
  if (!MODES.includes(mode)) return;
  call.mode = mode;
  for (const input of document.querySelectorAll("input[name=mode]")) {
    input.checked = input.value === mode;
  }
  $("mode-group").dataset.confirmed = mode;
}

function trackForMid(mid) {
  if (!call.pc || mid == null) return null;
  const transceiver = call.pc.getTransceivers().find((t) => t.mid === mid);
  return transceiver ? transceiver.receiver.track : null;
}

function addPerson(identity) {
  const li = $("participant-template").content.firstElementChild.cloneNode(true);
  li.dataset.identity = identity;
  li.querySelector(".name").textContent = identity;
  const meter = li.querySelector("meter");
  meter.setAttribute("aria-label", `Level of ${identity}`);
  const button = li.querySelector("button.listen");
  const person = { li, meter, analyser: null, audio: li.querySelector("audio"), mid: null,
    trackId: null, raw: false };
  button.addEventListener("click", () => {
    send({ type: "listen", identity, raw: !person.raw });
  });
  $("participants").append(li);
  call.people.set(identity, person);
  return person;
}

/** Render the list (when `list` is given) and attach each person's received track. */
function renderParticipants(list) {
  if (list) {
    const seen = new Set();
    for (const info of list) {
      if (info.identity === call.identity) {
        setMyMode(info.mode);
        continue;
      }
      seen.add(info.identity);
      const person = call.people.get(info.identity) || addPerson(info.identity);
      person.mid = info.mid;
      const badge = person.li.querySelector(".mode-badge");
      badge.textContent = `denoise: ${info.mode}`;
      person.li.dataset.mode = info.mode;
    }
    for (const [identity, person] of call.people) {
      if (!seen.has(identity)) {
        person.audio.srcObject = null;
        person.li.remove();
        call.people.delete(identity);
      }
    }
    $("alone").hidden = call.people.size > 0;
  }
  for (const person of call.people.values()) {
    const track = trackForMid(person.mid);
    if (!track || track.id === person.trackId) continue;
    const stream = new MediaStream([track]);
    person.trackId = track.id;
    person.audio.srcObject = stream;
    person.analyser = makeAnalyser(stream);
    person.li.dataset.connected = "true";
  }
}

function onListening(message) {
  const person = call.people.get(message.identity);
  if (!person) return;
  person.raw = Boolean(message.raw);
  const button = person.li.querySelector("button.listen");
  button.setAttribute("aria-pressed", String(person.raw));
  button.textContent = person.raw ? "Hearing raw — switch to denoised" : "Hear raw";
  person.li.classList.toggle("raw", person.raw);
}

function leave() {
  call.leaving = true;
  send({ type: "leave" });
  setStatus("You left the room.");
  cleanup();
}

function cleanup() {
  clearInterval(call.meterTimer);
  if (call.ws) {
    call.ws.onclose = null;
    call.ws.close();
  }
  if (call.pc) call.pc.close();
  if (call.mic) for (const track of call.mic.getTracks()) track.stop();
  if (call.audio) call.audio.close();
  for (const person of call.people.values()) person.li.remove();
  Object.assign(call, { ws: null, pc: null, mic: null, audio: null, myAnalyser: null,
    identity: null, queue: Promise.resolve() });
  call.people.clear();
  $("call-panel").hidden = true;
  $("join-panel").hidden = false;
  $("join-button").disabled = false;
}

function init() {
  const params = new URLSearchParams(location.search);
  if (params.get("room")) $("room").value = params.get("room");
  if (params.get("name")) $("name").value = params.get("name");
  if (tokenFromUrl()) $("token-field").hidden = true;
  $("join-form").addEventListener("submit", join);
  $("leave-button").addEventListener("click", leave);
  for (const input of document.querySelectorAll("input[name=mode]")) {
    input.addEventListener("change", () => {
      if (input.checked) send({ type: "set_mode", mode: input.value });
    });
  }
}

init();
