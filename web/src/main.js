// The browser participant's page (docs/protocol.md §10): join over SIP over WebSocket, list
// the items, decrypt each with WebCrypto as it streams, show images and PDF pages.
// Test hooks (stable): #user #password #conference #join #status [data-item-id][data-sha256]
// #slide[data-page] #leave.
import { GlobalWorkerOptions, getDocument } from "pdfjs-dist";
import { ApiError, Api } from "./api.js";
import { CobblestoneError } from "./cobblestone.js";
import { JoinError, join } from "./sip.js";

GlobalWorkerOptions.workerSrc = "/assets/pdf.worker.mjs"; // our origin: CSP worker-src 'self'
const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;
const PING_MS = 25000;
const state = { config: null, meeting: null, api: null, items: new Map(), current: null, poll: null,
  finalStatus: false };
const BYE_GRACE_MS = 2000; // how long a BYE waits for the channel to say why (revoked, ended)
const channel = { ws: null, seq: null, retry: 0, ping: null, timer: null };
const roster = new Map(); // participant id -> { user, role }

function setStatus(text, kind = "idle") {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = kind;
}

export function formatSize(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB"];
  let value = n;
  let unit = "B";
  for (const u of units) {
    if (value < 1024) break;
    value /= 1024;
    unit = u;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${unit}`;
}

async function loadConfig() {
  const resp = await fetch("/config.json", { cache: "no-store" });
  if (!resp.ok) throw new Error(`config.json: HTTP ${resp.status}`);
  return resp.json();
}

// -- items -------------------------------------------------------------------------------
function renderItem(item) {
  let li = document.querySelector(`[data-item-id="${CSS.escape(item.id)}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.itemId = item.id;
    li.dataset.state = "waiting";
    const name = document.createElement("span");
    name.className = "name";
    const size = document.createElement("span");
    size.className = "size";
    const st = document.createElement("span");
    st.className = "state";
    li.append(name, size, st);
    li.addEventListener("click", () => show(item.id));
    $("items").append(li);
  }
  li.querySelector(".name").textContent = item.name;
  li.querySelector(".name").title = item.name;
  li.querySelector(".size").textContent = formatSize(item.size);
  return li;
}

function setItemState(id, kind, text) {
  const li = document.querySelector(`[data-item-id="${CSS.escape(id)}"]`);
  if (!li) return;
  li.dataset.state = kind;
  li.querySelector(".state").textContent = text;
}

async function decrypt(entry) {
  const { item } = entry;
  setItemState(item.id, "decrypting", "decrypting…");
  try {
    const { blob, sha256 } = await state.api.decryptItem(item, (done) => {
      setItemState(item.id, "decrypting", `${Math.floor((100 * done) / Math.max(item.size, 1))}%`);
    });
    entry.blob = blob;
    entry.sha256 = sha256;
    const li = document.querySelector(`[data-item-id="${CSS.escape(item.id)}"]`);
    if (li) li.dataset.sha256 = sha256;
    setItemState(item.id, "ready", "");
    if (!state.current) show(item.id);
  } catch (error) {
    if (error instanceof CobblestoneError) {
      setItemState(item.id, "failed", "integrity check failed");
    } else if (error instanceof ApiError && error.status === 401) {
      removed();
    } else { // the network or the server: tried again at the next refresh (a few times)
      entry.retries = (entry.retries || 0) + 1;
      setItemState(item.id, "failed", "download failed");
    }
  }
}

async function refreshItems() {
  if (!state.api) return;
  let items;
  try {
    items = await state.api.items();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) removed();
    return;
  }
  const seen = new Set();
  for (const item of items) {
    seen.add(item.id);
    renderItem(item);
    const known = state.items.get(item.id);
    if (!known) {
      const entry = { item, blob: null, sha256: null };
      state.items.set(item.id, entry);
      decrypt(entry);
    } else if (known.retries && known.retries < 4 && !known.blob && !known.busy) {
      known.busy = true;
      decrypt(known).finally(() => { known.busy = false; });
    }
  }
  for (const id of [...state.items.keys()]) {
    if (!seen.has(id)) {
      state.items.delete(id);
      document.querySelector(`[data-item-id="${CSS.escape(id)}"]`)?.remove();
    }
  }
}

// -- the stage ---------------------------------------------------------------------------
function isPdf(item) {
  return (item.content_type || "").split(";")[0].trim() === "application/pdf" || /\.pdf$/i.test(item.name);
}

async function renderPdfPage(entry, number) {
  if (!entry.pdf) {
    entry.pdf = await getDocument({ data: new Uint8Array(await entry.blob.arrayBuffer()) }).promise;
  }
  const doc = entry.pdf;
  const n = Math.min(Math.max(1, number), doc.numPages);
  const page = await doc.getPage(n);
  const slide = $("slide");
  const base = page.getViewport({ scale: 1 });
  const scale = Math.min((slide.clientWidth - 24) / base.width, (slide.clientHeight - 24) / base.height) || 1;
  const viewport = page.getViewport({ scale: scale * (window.devicePixelRatio || 1) });
  const canvas = document.createElement("canvas");
  canvas.width = Math.floor(viewport.width);
  canvas.height = Math.floor(viewport.height);
  canvas.style.width = `${Math.floor(viewport.width / (window.devicePixelRatio || 1))}px`;
  await page.render({ canvas, viewport }).promise;
  if (state.current !== entry.item.id) return; // another item was picked meanwhile
  slide.replaceChildren(canvas);
  slide.dataset.page = String(n);
  entry.page = n;
  $("page-label").textContent = `${n} / ${doc.numPages}`;
  $("prev").disabled = n <= 1;
  $("next").disabled = n >= doc.numPages;
}

function turn(delta) {
  const entry = state.current && state.items.get(state.current);
  if (entry && entry.pdf) renderPdfPage(entry, (entry.page || 1) + delta).catch(() => {});
}

function show(id) {
  const entry = state.items.get(id);
  if (!entry || !entry.blob) return;
  state.current = id;
  for (const li of document.querySelectorAll("[data-item-id]")) {
    li.classList.toggle("current", li.dataset.itemId === id);
  }
  $("slide-title").textContent = entry.item.name;
  const slide = $("slide");
  slide.replaceChildren();
  $("prev").disabled = true;
  $("next").disabled = true;
  if (isPdf(entry.item)) {
    renderPdfPage(entry, entry.page || 1).catch(() => {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = `${entry.item.name} is not a PDF that can be shown.`;
      slide.replaceChildren(p);
      slide.dataset.page = "0";
    });
  } else if ((entry.item.content_type || "").startsWith("image/")) {
    const img = document.createElement("img");
    img.alt = entry.item.name;
    img.src = URL.createObjectURL(entry.blob);
    slide.append(img);
    slide.dataset.page = "1";
    $("page-label").textContent = "1 / 1";
  } else {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = `${entry.item.name} (${formatSize(entry.item.size)}) cannot be shown here yet.`;
    slide.append(p);
    slide.dataset.page = "0";
    $("page-label").textContent = "";
  }
}

// -- the data channel (docs/protocol.md §4.3) ---------------------------------------------
function startPolling() {
  if (!state.poll && state.api) state.poll = setInterval(refreshItems, POLL_MS);
}

function stopPolling() {
  if (state.poll) clearInterval(state.poll);
  state.poll = null;
}

function closeChannel() {
  clearTimeout(channel.timer);
  clearInterval(channel.ping);
  channel.timer = channel.ping = null;
  const ws = channel.ws;
  channel.ws = null;
  if (ws) ws.close(1000);
  document.body.dataset.channel = "closed";
}

async function openChannel() {
  const api = state.api;
  if (!api) return;
  try { // the channel takes the HTTP cookie: a browser's WebSocket sends no Authorization
    const resp = await fetch(api.url("/browser-cookie"), { method: "POST", headers: api.headers });
    if (resp.status === 401) return removed();
  } catch { /* the network: retried below */ }
  if (state.api !== api) return;
  const after = channel.seq === null ? "" : `?after=${channel.seq}`;
  const ws = new WebSocket(`${api.base.replace(/^http/, "ws")}/v1/conferences/${encodeURIComponent(api.conference)}/channel${after}`);
  channel.ws = ws;
  ws.onopen = () => {
    channel.retry = 0;
    document.body.dataset.channel = "open";
    stopPolling();
    channel.ping = setInterval(() => ws.readyState === 1 && ws.send('{"type":"ping"}'), PING_MS);
  };
  ws.onmessage = (event) => {
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    onEvent(msg);
  };
  ws.onclose = (event) => {
    if (channel.ws !== ws) return; // closed by us
    clearInterval(channel.ping);
    channel.ws = null;
    document.body.dataset.channel = "closed";
    if (!state.api || event.code === 1000) return; // left, or the conference ended
    startPolling(); // until it is back; it resumes from the last seq it saw
    const delay = Math.min(10000, 500 * 2 ** channel.retry++);
    channel.timer = setTimeout(openChannel, delay);
  };
}

function onEvent(msg) {
  if (typeof msg.seq === "number") channel.seq = Math.max(channel.seq ?? 0, msg.seq);
  switch (msg.type) {
    case "resumed":
      document.body.dataset.resumed = String(msg.seq);
      refreshItems();
      break;
    case "welcome":
    case "item.shared":
    case "item.removed":
      refreshItems();
      break;
    case "participant.joined":
      roster.set(msg.participant.id, msg.participant);
      renderRoster();
      break;
    case "participant.left":
      roster.delete(msg.participant.id);
      renderRoster();
      break;
    case "revoked":
      removed();
      break;
    case "conference.ended":
      state.finalStatus = true;
      stop();
      setStatus("the meeting ended", "error");
      break;
    default:
      break;
  }
}

// -- join and leave ----------------------------------------------------------------------
function removed() {
  state.finalStatus = true;
  stop();
  setStatus("you were removed", "error");
}

function stop() {
  stopPolling();
  closeChannel();
  state.api = null;
  $("leave").hidden = true;
}

async function onJoin(event) {
  event.preventDefault();
  const error = $("join-error");
  error.textContent = "";
  $("join").disabled = true;
  setStatus("joining…", "busy");
  try {
    if (!state.config) state.config = await loadConfig();
    if (!state.config.wss_url) throw new JoinError("This server does not accept browsers (SIP over WebSocket is off).");
    const meeting = await join({
      wssUrl: state.config.wss_url, address: $("user").value, password: $("password").value,
      conferenceUri: $("conference").value,
      onEnded: (reason) => {
        // The focus's BYE comes for an end, an eject or any revocation (docs/protocol.md
        // §7.3); the channel's `revoked` or `conference.ended` says which, so give it a
        // moment before reading the BYE as the end of the meeting.
        const byMeeting = reason === "ended by the meeting";
        setTimeout(() => {
          if (state.finalStatus) return;
          stop();
          setStatus(byMeeting ? "the meeting ended" : reason, "error");
        }, byMeeting ? BYE_GRACE_MS : 0);
      },
    });
    state.meeting = meeting;
    state.finalStatus = false;
    state.api = new Api(meeting.admission, meeting.tenant);
    $("password").value = "";
    $("join-view").hidden = true;
    $("meeting-view").hidden = false;
    $("leave").hidden = false;
    roster.clear();
    roster.set(meeting.admission.participant, { user: `${$("user").value.trim()} (you)`, role: meeting.admission.role });
    renderRoster();
    setStatus("joined", "joined");
    await refreshItems();
    startPolling();
    openChannel();
  } catch (e) {
    setStatus("not joined", "error");
    error.textContent = e instanceof JoinError ? e.message : `Joining failed: ${e.message}`;
  } finally {
    $("join").disabled = false;
  }
}

function renderRoster() {
  const rows = [...roster.values()].map((p) => {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.textContent = p.user;
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = p.role;
    li.append(who, role);
    return li;
  });
  $("roster").replaceChildren(...rows);
}

async function onLeave() {
  const meeting = state.meeting;
  stop();
  state.meeting = null;
  setStatus("leaving…", "busy");
  if (meeting) await meeting.leave();
  setStatus("left", "idle");
}

function main() {
  $("join-form").addEventListener("submit", onJoin);
  $("leave").addEventListener("click", onLeave);
  $("prev").addEventListener("click", () => turn(-1));
  $("next").addEventListener("click", () => turn(1));
  window.addEventListener("pagehide", () => { if (state.meeting) state.meeting.leave(); });
  loadConfig().then((c) => { state.config = c; }).catch(() => {});
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
else main();
