// Cobblestone-256 (c2sp.org/chunked-encryption over AES-256-GCM) decryption with WebCrypto,
// chunk by chunk: the browser's twin of webconf/crypto/cobblestone.py (docs/protocol.md §5.1).
//
//   aead_key(32) || base_nonce(12) || commitment(32) =
//       HKDF-Expand-SHA-512(prk = key, info = LABEL || 0x00 || salt(24) || context)
//   blob = salt(24) || commitment(32) || chunk_0 || ... || chunk_n
//
// Plaintext chunks are 16384 bytes, the final one always shorter (possibly empty); chunk i is
// AES-256-GCM under aead_key with the nonce base_nonce XOR i (12-byte big-endian), empty AAD.
// Rules kept here: the commitment is checked before any chunk is decrypted; a chunk's
// plaintext is released only after its tag verified; a full chunk is decrypted only once a
// byte after it shows it is not the final one; truncation, a missing short final chunk and
// trailing data fail; a failed decryptor keeps failing.

export const SALT_SIZE = 24;
export const COMMITMENT_SIZE = 32;
export const HEADER_SIZE = SALT_SIZE + COMMITMENT_SIZE;
export const KEY_SIZE = 32;
export const CHUNK_SIZE = 16384;
export const TAG_SIZE = 16;
export const CIPHERTEXT_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE;
const LABEL = "c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM";
const DERIVED_SIZE = 32 + 12 + 32;

export class CobblestoneError extends Error {
  /** kind: "key" | "header" | "commitment" | "chunk" | "truncated" | "trailing" */
  constructor(message, kind) {
    super(message);
    this.name = "CobblestoneError";
    this.kind = kind;
  }
}

function subtle() {
  const s = globalThis.crypto && globalThis.crypto.subtle;
  if (!s) throw new CobblestoneError("WebCrypto is unavailable (a secure context is needed)", "key");
  return s;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** HKDF-Expand (RFC 5869 §2.3) with HMAC-SHA-512: WebCrypto's HKDF always extracts first. */
async function hkdfExpandSha512(prk, info, length) {
  const s = subtle();
  const hmacKey = await s.importKey("raw", prk, { name: "HMAC", hash: "SHA-512" }, false, ["sign"]);
  const blocks = [];
  let previous = new Uint8Array(0);
  for (let i = 1; blocks.length * 64 < length; i++) {
    previous = new Uint8Array(await s.sign("HMAC", hmacKey, concat(previous, info, Uint8Array.of(i))));
    blocks.push(previous);
  }
  return concat(...blocks).slice(0, length);
}

/** (aeadKey, baseNonce, commitment) of a blob's salt under `key` and `context`. */
export async function deriveKeys(key, salt, context) {
  const info = concat(new TextEncoder().encode(LABEL), Uint8Array.of(0), salt, context);
  const okm = await hkdfExpandSha512(key, info, DERIVED_SIZE);
  return { aeadKey: okm.slice(0, 32), baseNonce: okm.slice(32, 44), commitment: okm.slice(44, 76) };
}

function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function chunkNonce(baseNonce, index) {
  const nonce = baseNonce.slice();
  let i = index;
  for (let pos = 11; pos >= 4 && i > 0; pos--) {
    nonce[pos] ^= i % 256;
    i = Math.floor(i / 256);
  }
  return nonce;
}

/** Plaintext size of a well-formed blob of `n` bytes (null: no blob has that size). */
export function plaintextSize(n) {
  const body = n - HEADER_SIZE;
  if (body < TAG_SIZE) return null;
  const full = Math.floor(body / CIPHERTEXT_CHUNK_SIZE);
  const last = body - full * CIPHERTEXT_CHUNK_SIZE;
  if (last < TAG_SIZE) return null;
  return full * CHUNK_SIZE + last - TAG_SIZE;
}

/** A streaming decryptor: `update(bytes)` returns the verified plaintext so far (whole chunks),
 *  `finalize()` the final chunk's. Calls must not overlap (await each one). */
export class Decryptor {
  constructor(key, context) {
    if (!(key instanceof Uint8Array) || key.length !== KEY_SIZE) {
      throw new CobblestoneError(`the key must be ${KEY_SIZE} bytes`, "key");
    }
    this._key = key;
    this._context = context;
    this._buffer = new Uint8Array(0);
    this._cipher = null; // CryptoKey once the header passed
    this._baseNonce = null;
    this._index = 0;
    this._error = null;
    this._done = false;
    this.released = 0; // plaintext bytes released so far
  }

  _fail(message, kind) {
    this._error = new CobblestoneError(message, kind);
    this._buffer = new Uint8Array(0);
    throw this._error;
  }

  _check() {
    if (this._error) throw this._error;
    if (this._done) throw new CobblestoneError("the decryptor is finalized", "trailing");
  }

  async _takeHeader() {
    const salt = this._buffer.slice(0, SALT_SIZE);
    const commitment = this._buffer.slice(SALT_SIZE, HEADER_SIZE);
    const keys = await deriveKeys(this._key, salt, this._context);
    if (!equalBytes(keys.commitment, commitment)) {
      this._fail("commitment mismatch: wrong key or context, or a modified header", "commitment");
    }
    this._cipher = await subtle().importKey("raw", keys.aeadKey, "AES-GCM", false, ["decrypt"]);
    this._baseNonce = keys.baseNonce;
    this._buffer = this._buffer.slice(HEADER_SIZE);
  }

  async _decryptChunk(data) {
    let plain;
    try {
      plain = await subtle().decrypt(
        { name: "AES-GCM", iv: chunkNonce(this._baseNonce, this._index), tagLength: 128 },
        this._cipher, data);
    } catch {
      this._fail(`chunk ${this._index}: authentication failed`, "chunk");
    }
    this._index += 1;
    const out = new Uint8Array(plain);
    this.released += out.length;
    return out;
  }

  /** Feed ciphertext; returns the plaintext of the chunks verified by it (maybe empty). */
  async update(data) {
    this._check();
    this._buffer = this._buffer.length ? concat(this._buffer, data) : new Uint8Array(data);
    if (!this._cipher) {
      if (this._buffer.length < HEADER_SIZE) return new Uint8Array(0);
      await this._takeHeader();
    }
    const out = [];
    // A full chunk is known not to be the final one only once a byte follows it.
    while (this._buffer.length > CIPHERTEXT_CHUNK_SIZE) {
      out.push(await this._decryptChunk(this._buffer.subarray(0, CIPHERTEXT_CHUNK_SIZE)));
      this._buffer = this._buffer.slice(CIPHERTEXT_CHUNK_SIZE);
    }
    return out.length === 1 ? out[0] : concat(...out);
  }

  /** The end of the blob: the short final chunk's plaintext; throws on truncation. */
  async finalize() {
    this._check();
    if (!this._cipher) this._fail("truncated: the header is incomplete", "truncated");
    const rest = this._buffer;
    if (rest.length < TAG_SIZE) this._fail("truncated: the final chunk is incomplete", "truncated");
    if (rest.length === CIPHERTEXT_CHUNK_SIZE) {
      this._fail("truncated: the short final chunk is missing", "truncated");
    }
    const out = await this._decryptChunk(rest);
    this._buffer = new Uint8Array(0);
    this._done = true;
    return out;
  }
}

/** Decrypt a whole blob in memory (tests, small items). */
export async function decrypt(key, context, blob) {
  const d = new Decryptor(key, context);
  const head = await d.update(blob);
  return concat(head, await d.finalize());
}

/**
 * Fetch a blob with `Range` requests of `rangeBytes` and decrypt it as it comes, so a large
 * item never sits whole in memory: `onPlaintext(bytes)` gets each verified piece in order.
 * Resolves to the plaintext size. `init` is passed to fetch() (headers such as
 * `Authorization`). A server that ignores `Range` (200) is read as one stream.
 */
export async function fetchAndDecrypt(url, key, context, onPlaintext, { init = {}, rangeBytes = 1 << 20 } = {}) {
  const d = new Decryptor(key, context);
  let total = null;
  let offset = 0;
  const headers = new Headers(init.headers || {});
  for (;;) {
    const end = total === null ? offset + rangeBytes - 1 : Math.min(offset + rangeBytes, total) - 1;
    headers.set("Range", `bytes=${offset}-${end}`);
    const resp = await fetch(url, { ...init, headers });
    if (resp.status === 200) {
      // No ranges: stream the whole body through the decryptor.
      const reader = resp.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const out = await d.update(value);
        if (out.length) await onPlaintext(out);
      }
      break;
    }
    if (resp.status === 416 && offset === 0) {
      throw new CobblestoneError("truncated: the blob is empty", "truncated");
    }
    if (resp.status !== 206) {
      const error = new Error(`GET ${url}: HTTP ${resp.status}`);
      error.status = resp.status;
      throw error;
    }
    const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(resp.headers.get("Content-Range") || "");
    if (!range || Number(range[1]) !== offset) throw new Error(`GET ${url}: bad Content-Range`);
    total = Number(range[3]);
    const body = new Uint8Array(await resp.arrayBuffer());
    if (body.length !== Number(range[2]) - offset + 1) throw new Error(`GET ${url}: short range`);
    const out = await d.update(body);
    if (out.length) await onPlaintext(out);
    offset += body.length;
    if (offset >= total) break;
  }
  const last = await d.finalize();
  if (last.length) await onPlaintext(last);
  return d.released;
}
