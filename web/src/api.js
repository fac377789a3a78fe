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

  async json(path) {
    const resp = await fetch(this.url(path), { headers: this.headers, cache: "no-store" });
    if (!resp.ok) {
      let code = "";
      let message = `HTTP ${resp.status}`;
      try {
        const body = await resp.json();
        code = body.error.code;
        message = body.error.message;
      } catch { /* not JSON */ }
      throw new ApiError(message, resp.status, code);
    }
    return resp.json();
  }

  items() {
    return this.json("/items").then((body) => body.items);
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
