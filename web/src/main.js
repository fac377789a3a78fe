// The browser participant's page (docs/protocol.md §10): join over SIP over WebSocket, list
// the items, decrypt each with WebCrypto as it streams, show images and PDF pages, keep the
// roster, follow the presenter (or browse on one's own), and, as a presenter, turn pages for
// everyone and upload by drag-and-drop (§9).
// Test hooks (stable): #user #password #conference #join #status [data-item-id][data-sha256]
// #slide[data-page] #leave; also #follow (checkbox), #upload (file input), #upload-progress,
// #present-error, #roster li[data-participant-id][data-role], body[data-role].
import { GlobalWorkerOptions, getDocument } from "pdfjs-dist";
import { ApiError, Api } from "./api.js";
import { CobblestoneError } from "./cobblestone.js";
import { JoinError, join } from "./sip.js";

GlobalWorkerOptions.workerSrc = "/assets/pdf.worker.mjs"; // our origin: CSP worker-src 'self'
const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;
const PING_MS = 25000;
const state = { config: null, meeting: null, api: null, items: new Map(), current: null, poll: null,
  finalStatus: false, pid: null, role: "attendee", presentation: null, follow: true };
const PRESENTING_ROLES = new Set(["presenter", "organizer"]);
const BYE_GRACE_MS = 2000; // how long a BYE waits for the channel to say why (revoked, ended)
const channel = { ws: null, seq: null, retry: 0, ping: null, timer: null };
const roster = new Map(); // participant id -> { id, user, role }
let rosterSeq = -1; // the roster's seq (§9.2): events at or below it are already in it
const rosterEvents = []; // roster pushes heard lately: replayed over a roster read meanwhile
const MAX_ROSTER_EVENTS = 256;

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
    li.addEventListener("click", () => {
      if (state.presentation?.item && state.presentation.item !== item.id && !canPresent()) setFollow(false);
      show(item.id);
    });
    $("items").append(li);
  }
  li.querySelector(".name").textContent = item.name;
  li.querySelector(".name").title = item.name;
  li.querySelector(".size").textContent = item.pages
    ? `${formatSize(item.size)} · ${item.pages} ${item.pages === 1 ? "page" : "pages"}` : formatSize(item.size);
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
    if (following() && state.presentation?.item === item.id) applyPresentation();
    else if (!state.current) show(item.id);
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
      if (state.presentation?.item === id) setPresentation({ item: null, seq: state.presentation.seq });
      if (state.current === id) clearStage();
    }
  }
}

// -- the stage ---------------------------------------------------------------------------
function isPdf(item) {
  return (item.content_type || "").split(";")[0].trim() === "application/pdf" || /\.pdf$/i.test(item.name);
}

let renderSeq = 0; // the latest render wins: quick turns may finish out of order

async function renderPdfPage(entry, number) {
  const token = ++renderSeq;
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
  if (state.current !== entry.item.id || token !== renderSeq) return; // superseded meanwhile
  slide.replaceChildren(canvas);
  slide.dataset.page = String(n);
  entry.page = n;
  $("page-label").textContent = `${n} / ${doc.numPages}`;
  $("prev").disabled = n <= 1;
  $("next").disabled = n >= doc.numPages;
  updatePresentUi();
}

function pageCount(entry) {
  return entry.pdf ? entry.pdf.numPages : (entry.item.pages || 1);
}

/** Prev/next: a presenter turns the page for everyone (§9.1); anyone else browses alone. */
async function turn(delta) {
  const entry = state.current && state.items.get(state.current);
  if (!entry) return;
  const page = Math.min(Math.max(1, (entry.page || 1) + delta), pageCount(entry));
  if (canPresent()) {
    await present(entry.item.id, page);
  } else if (entry.pdf) {
    setFollow(false);
    renderPdfPage(entry, page).catch(() => {});
  }
}

async function present(item, page) {
  const error = $("present-error");
  error.textContent = "";
  try {
    const now = await state.api.setPresentation(item, page);
    setPresentation(now);
    const entry = state.items.get(item);
    if (entry && entry.blob) show(item, page); // the presenter sees it at once, following or not
  } catch (e) {
    error.textContent = e instanceof ApiError ? `Cannot turn the page: ${e.message}` : `Cannot turn the page: ${e}`;
  }
}

function clearStage() {
  state.current = null;
  $("slide-title").textContent = "No item shown";
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = "Pick an item to show it.";
  $("slide").replaceChildren(p);
  $("slide").dataset.page = "0";
  $("page-label").textContent = "";
  updatePresentUi();
}

function show(id, page = null) {
  const entry = state.items.get(id);
  if (!entry || !entry.blob) return;
  if (state.current === id && entry.pdf && page) { // the same deck: just turn the page
    renderPdfPage(entry, page).catch(() => {});
    return;
  }
  if (page) entry.page = page;
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
  updatePresentUi();
}

// -- following the presenter (docs/protocol.md §9.1) ----------------------------------------
function following() {
  return state.follow;
}

function canPresent() {
  return PRESENTING_ROLES.has(state.role);
}

/** Keep the presentation with the larger seq; a stopped one is { item: null, seq }. */
function setPresentation(p) {
  const next = p && p.item ? { item: p.item, page: p.page || 1, presenter: p.presenter, seq: p.seq ?? 0 }
    : { item: null, seq: p?.seq ?? 0 };
  if (state.presentation && next.seq < state.presentation.seq) return;
  state.presentation = next.item ? next : (next.seq ? next : null);
  applyPresentation();
}

function applyPresentation() {
  updatePresentUi();
  const p = state.presentation;
  if (!following() || !p || !p.item) return;
  const entry = state.items.get(p.item);
  if (entry && entry.blob) show(p.item, p.page); // else when decrypted (decrypt())
}

function setFollow(on) {
  state.follow = on;
  $("follow").checked = on;
  document.body.dataset.follow = on ? "on" : "off";
  if (on) applyPresentation();
  else updatePresentUi();
}

function updatePresentUi() {
  const p = state.presentation;
  const label = $("presenting");
  if (p && p.item) {
    const entry = state.items.get(p.item);
    const who = p.presenter === state.pid ? "You are" : `${roster.get(p.presenter)?.user || "The presenter"} is`;
    label.textContent = `${who} presenting ${entry ? entry.item.name : "an item"}, page ${p.page}`;
    label.dataset.live = "on";
  } else {
    label.textContent = "Nobody is presenting";
    label.dataset.live = "off";
  }
  for (const li of document.querySelectorAll("[data-item-id]")) {
    li.classList.toggle("presented", Boolean(p && p.item === li.dataset.itemId));
  }
  const presentBtn = $("present");
  presentBtn.hidden = !canPresent() || !state.current || Boolean(p && p.item === state.current);
}

function setRole(role) {
  state.role = role;
  document.body.dataset.role = role;
  $("presenter-tools").hidden = !canPresent();
  updatePresentUi();
}

// -- uploads (docs/protocol.md §4.1): a presenter drops files, or picks them ----------------
async function uploadFiles(files) {
  if (!state.api || !canPresent()) return;
  const bar = $("upload-progress");
  const text = $("upload-status");
  for (const file of files) {
    bar.hidden = false;
    bar.value = 0;
    text.textContent = `Uploading ${file.name}…`;
    text.dataset.state = "busy";
    try {
      const item = await state.api.upload(file, (sent, total) => {
        bar.value = Math.floor((100 * sent) / Math.max(total, 1));
      });
      bar.value = 100;
      text.textContent = `Shared ${item.name} (${formatSize(item.size)})`;
      text.dataset.state = "done";
      refreshItems(); // item.shared brings it too
    } catch (e) {
      text.textContent = `Upload of ${file.name} failed: ${e.message}`;
      text.dataset.state = "error";
    }
  }
}

function setUpDrop(zone) {
  zone.addEventListener("dragover", (e) => {
    if (!canPresent()) return;
    e.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    zone.classList.remove("dragging");
    if (!canPresent()) return;
    e.preventDefault();
    uploadFiles([...(e.dataTransfer?.files || [])]);
  });
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
  // batch=1: a burst (a thousand joins to a large meeting) may come as one frame holding
  // an array of events (docs/protocol.md §4.3), and the roster is drawn once per frame.
  const query = channel.seq === null ? "?batch=1" : `?after=${channel.seq}&batch=1`;
  const ws = new WebSocket(`${api.base.replace(/^http/, "ws")}/v1/conferences/${encodeURIComponent(api.conference)}/channel${query}`);
  channel.ws = ws;
  ws.onopen = () => {
    channel.retry = 0;
    document.body.dataset.channel = "open";
    stopPolling();
    channel.ping = setInterval(() => ws.readyState === 1 && ws.send('{"type":"ping"}'), PING_MS);
  };
  ws.onmessage = (event) => {
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    let rosterChanged = false;
    for (const msg of Array.isArray(frame) ? frame : [frame]) {
      if (msg !== null && typeof msg === "object") rosterChanged = onEvent(msg) || rosterChanged;
    }
    if (rosterChanged) renderRoster();
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

// One event of the channel; true when it changed the roster (the caller draws it once).
function onEvent(msg) {
  if (typeof msg.seq === "number") channel.seq = Math.max(channel.seq ?? 0, msg.seq);
  switch (msg.type) {
    case "resumed":
      document.body.dataset.resumed = String(msg.seq);
      if (msg.role) setRole(msg.role);
      refreshItems();
      break;
    case "welcome":
      if (msg.role) setRole(msg.role);
      setPresentation(msg.presentation ?? { item: null, seq: msg.seq }); // stopped by then
      refreshItems();
      loadRoster();
      break;
    case "item.shared":
    case "item.removed":
      refreshItems();
      break;
    case "presentation.changed":
      setPresentation(msg);
      break;
    case "participant.joined":
    case "participant.role_changed":
    case "participant.left":
      rosterEvents.push(msg);
      if (rosterEvents.length > MAX_ROSTER_EVENTS) rosterEvents.shift();
      return applyRosterEvent(msg);
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
  return false;
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
    state.pid = meeting.admission.participant;
    state.presentation = null;
    roster.clear();
    rosterSeq = -1;
    rosterEvents.length = 0;
    roster.set(state.pid, { id: state.pid, user: $("user").value.trim(), role: meeting.admission.role });
    setRole(meeting.admission.role || "attendee");
    setFollow(true);
    renderRoster();
    const id = /opaque=app:conf:focus:id:([^;>]+)/.exec($("conference").value);
    $("meeting-name").textContent = id ? `Meeting ${id[1]}` : "Meeting";
    $("meeting-name").title = $("conference").value.trim();
    setStatus("joined", "joined");
    await Promise.all([refreshItems(), loadRoster()]);
    startPolling();
    openChannel();
  } catch (e) {
    setStatus("not joined", "error");
    error.textContent = e instanceof JoinError ? e.message : `Joining failed: ${e.message}`;
  } finally {
    $("join").disabled = false;
  }
}

/** Apply a roster push unless the roster read already holds it (its seq, §9.2). */
function applyRosterEvent(msg, replay = false) {
  if (!replay && msg.seq <= rosterSeq) return false;
  if (msg.type === "participant.left") {
    roster.delete(msg.participant.id);
  } else {
    roster.set(msg.participant.id, { ...msg.participant });
    if (msg.participant.id === state.pid) setRole(msg.participant.role);
  }
  return true;
}

/** The roster as the WCS has it (§9.2); pushes with a larger seq are applied on top. */
async function loadRoster() {
  const api = state.api;
  if (!api) return;
  let body;
  try {
    body = await api.participants();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) removed();
    return;
  }
  if (state.api !== api || body.seq < rosterSeq) return;
  roster.clear();
  for (const p of body.participants) roster.set(p.id, { id: p.id, user: p.user, role: p.role });
  rosterSeq = body.seq;
  // Pushes that arrived while the read was out and are newer than it go back on top.
  const newer = rosterEvents.filter((msg) => msg.seq > body.seq);
  rosterEvents.length = 0;
  rosterEvents.push(...newer);
  for (const msg of newer) applyRosterEvent(msg, true);
  const me = roster.get(state.pid);
  if (me) setRole(me.role);
  renderRoster();
}

function initials(user) {
  const name = user.split("@")[0];
  return name.slice(0, 2).toUpperCase();
}

function renderRoster() {
  const order = { organizer: 0, presenter: 1, attendee: 2 };
  const people = [...roster.values()].sort((a, b) => (order[a.role] ?? 3) - (order[b.role] ?? 3)
    || a.user.localeCompare(b.user));
  const rows = people.map((p) => {
    const li = document.createElement("li");
    li.dataset.participantId = p.id;
    li.dataset.role = p.role;
    li.dataset.user = p.user;
    const badge = document.createElement("span");
    badge.className = "avatar";
    badge.textContent = initials(p.user);
    const who = document.createElement("span");
    who.className = "who";
    const [local, domain] = p.user.split("@");
    who.textContent = local;
    const host = document.createElement("span");
    host.className = "host";
    host.textContent = p.id === state.pid ? " (you)" : domain ? `@${domain}` : "";
    who.append(host);
    who.title = p.user;
    const role = document.createElement("span");
    role.className = `role ${p.role}`;
    role.textContent = p.role;
    li.append(badge, who, role);
    return li;
  });
  $("roster").replaceChildren(...rows);
  $("roster-count").textContent = String(people.length);
  updatePresentUi();
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
  $("follow").addEventListener("change", (e) => setFollow(e.target.checked));
  $("present").addEventListener("click", () => {
    const entry = state.current && state.items.get(state.current);
    if (entry) present(entry.item.id, entry.page || 1);
  });
  $("upload").addEventListener("change", (e) => {
    uploadFiles([...e.target.files]);
    e.target.value = "";
  });
  setUpDrop($("drop"));
  setUpDrop($("stage"));
  document.addEventListener("keydown", (e) => {
    if (!state.api || e.target instanceof HTMLInputElement) return;
    if (e.key === "ArrowRight" || e.key === "PageDown") turn(1);
    if (e.key === "ArrowLeft" || e.key === "PageUp") turn(-1);
  });
  window.addEventListener("pagehide", () => { if (state.meeting) state.meeting.leave(); });
  loadConfig().then((c) => { state.config = c; }).catch(() => {});
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
else main();
