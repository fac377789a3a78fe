// The WCS's HTTP API as the page uses it (docs/protocol.md §4): the cookie from the join body
// stays in memory and goes as `Authorization: Bearer`, never into storage or an HTTP cookie.
import { CobblestoneError, fetchAndDecrypt } from "./cobblestone.js";

export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export function b64urlDecode(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function lp(text) {
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(2 + bytes.length);
  out[0] = bytes.length >> 8;
  out[1] = bytes.length & 255;
  out.set(bytes, 2);
  return out;
}

/** The Cobblestone context of an item (docs/protocol.md §5.2). */
export function itemContext(tenant, conference, item) {
  const parts = [new TextEncoder().encode("webconf-item/v1"), lp(tenant), lp(conference), lp(item)];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function errorOf(status, body) {
  let code = "";
  let message = `HTTP ${status}`;
  try {
    const parsed = await body();
    code = parsed.error.code;
    message = parsed.error.message;
  } catch { /* not JSON */ }
  return new ApiError(message, status, code);
}

export class Api {
  constructor(admission, tenant) {
    this.base = admission.webconf_url.replace(/\/$/, "");
    this.conference = admission.conference;
    this.cookie = admission.cookie;
    this.tenant = tenant;
  }

  get headers() {
    return { Authorization: `Bearer ${this.cookie}` };
  }

  url(path) {
    return `${this.base}/v1/conferences/${encodeURIComponent(this.conference)}${path}`;
  }

  async json(path, init = {}) {
    const resp = await fetch(this.url(path), { cache: "no-store", ...init,
      headers: { ...this.headers, ...(init.headers || {}) } });
    if (!resp.ok) throw await errorOf(resp.status, () => resp.json());
    return resp.json();
  }

  items() {
    return this.json("/items").then((body) => body.items);
  }

  /** The roster (docs/protocol.md §9.2): { seq, participants: [{ id, user, role }] }. */
  participants() {
    return this.json("/participants");
  }

  /** Present `item` at `page` for everyone (§9.1); a refusal throws ApiError. */
  setPresentation(item, page) {
    return this.json("/presentation", { method: "PUT", body: JSON.stringify({ item, page }),
      headers: { "Content-Type": "application/json" } });
  }

  /**
   * Upload a file (§4.1) with XMLHttpRequest, whose upload progress fetch() lacks:
   * `onProgress(sent, total)`; resolves to the new item's view (it also arrives as item.shared).
   */
  upload(file, onProgress = () => {}) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", this.url("/items"));
      xhr.setRequestHeader("Authorization", `Bearer ${this.cookie}`);
      xhr.setRequestHeader("X-Item-Name", encodeURIComponent(file.name));
      xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
      xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
      xhr.onload = async () => {
        if (xhr.status === 201) return resolve(JSON.parse(xhr.responseText).item);
        reject(await errorOf(xhr.status, () => JSON.parse(xhr.responseText)));
      };
      xhr.onerror = () => reject(new ApiError("the upload failed (network)", 0, ""));
      xhr.send(file);
    });
  }

  /**
   * Decrypt an item as it streams (Range requests), checking the key's context against the
   * ids asked for: resolves to { blob, sha256 } of the plaintext; a CobblestoneError means the
   * integrity check failed (nothing unverified was kept).
   */
  async decryptItem(item, onProgress = () => {}) {
    const { key, context } = await this.json(`/items/${encodeURIComponent(item.id)}/key`);
    const expected = itemContext(this.tenant, this.conference, item.id);
    if (!equal(b64urlDecode(context), expected)) {
      throw new CobblestoneError("the item's context does not match its place", "commitment");
    }
    const parts = [];
    let done = 0;
    await fetchAndDecrypt(this.url(`/items/${encodeURIComponent(item.id)}/content`),
      b64urlDecode(key), expected, (plain) => {
        parts.push(plain);
        done += plain.length;
        onProgress(done);
      }, { init: { headers: this.headers, cache: "no-store" } });
    const blob = new Blob(parts, { type: item.content_type || "application/octet-stream" });
    return { blob, sha256: await sha256Hex(blob) };
  }
}
