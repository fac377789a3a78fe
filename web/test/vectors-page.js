// Runs in the browser (web/test/vectors.mjs serves it): every C2SP/Wycheproof Cobblestone
// vector through web/src/cobblestone.js, in memory in several piece sizes and streamed from
// fetch() with Range; window.results gets one entry per vector.
import { CHUNK_SIZE, CIPHERTEXT_CHUNK_SIZE, HEADER_SIZE, Decryptor, decrypt, fetchAndDecrypt } from "/cobblestone.js";

const hex = (s) => Uint8Array.from((s.match(/../g) || []).map((b) => parseInt(b, 16)));
const toHex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
const sha512 = async (b) => toHex(await crypto.subtle.digest("SHA-512", b));
const concat = (parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};

async function stream(key, ctx, ct, size) {
  // Returns { plaintext, error }: what was released before the error, and the error.
  const released = [];
  let d;
  try {
    d = new Decryptor(key, ctx);
    for (let at = 0; at < ct.length; at += size) released.push(await d.update(ct.subarray(at, at + size)));
    released.push(await d.finalize());
    return { plaintext: concat(released), error: null, d };
  } catch (error) {
    return { plaintext: concat(released), error, d };
  }
}

async function keepsFailing(d) {
  for (const call of [() => d.update(new Uint8Array(1)), () => d.finalize()]) {
    try { await call(); return false; } catch { /* expected */ }
  }
  return true;
}

async function check(t) {
  const key = hex(t.key), ctx = hex(t.ctx);
  const ct = t.ctBytes;
  const problems = [];
  const sizes = [ct.length + 1, 7, 4099, CIPHERTEXT_CHUNK_SIZE, CIPHERTEXT_CHUNK_SIZE + 1, 65537];
  const ranges = [4099, CIPHERTEXT_CHUNK_SIZE, 65537];
  if (t.result === "valid") {
    const pt = await decrypt(key, ctx, ct);
    if (pt.length !== t.msgLength) problems.push(`length ${pt.length} != ${t.msgLength}`);
    if (await sha512(pt) !== t.msgSha512) problems.push("sha512 mismatch");
    for (const n of sizes) {
      const r = await stream(key, ctx, ct, n);
      if (r.error || r.plaintext.length !== pt.length || await sha512(r.plaintext) !== t.msgSha512) {
        problems.push(`pieces of ${n}: ${r.error ? r.error.message : "different plaintext"}`);
      }
    }
    for (const n of ranges) {
      const parts = [];
      const size = await fetchAndDecrypt(`/blob/${t.tcId}`, key, ctx, (p) => { parts.push(p); }, { rangeBytes: n });
      const got = concat(parts);
      if (size !== pt.length || await sha512(got) !== t.msgSha512) problems.push(`fetch ranges of ${n}: wrong plaintext`);
    }
    return problems;
  }
  // invalid
  if (t.flags.includes("InvalidKeySize")) {
    try { new Decryptor(key, ctx); problems.push("a wrong-size key was accepted"); } catch { /* expected */ }
    return problems;
  }
  try { await decrypt(key, ctx, ct); problems.push("decrypt accepted an invalid blob"); } catch { /* expected */ }
  const prefix = t.msgLength || 0;
  for (const n of sizes) {
    const r = await stream(key, ctx, ct, n);
    if (!r.error) { problems.push(`pieces of ${n}: accepted`); continue; }
    if (r.plaintext.length > prefix) problems.push(`pieces of ${n}: released ${r.plaintext.length} > ${prefix}`);
    if (r.plaintext.length % CHUNK_SIZE !== 0) problems.push(`pieces of ${n}: released a partial chunk`);
    if (r.plaintext.length === prefix && t.msgSha512 && await sha512(r.plaintext) !== t.msgSha512) {
      problems.push(`pieces of ${n}: released prefix differs`);
    }
    if (r.d && !(await keepsFailing(r.d))) problems.push(`pieces of ${n}: did not keep failing`);
  }
  for (const n of ranges) {
    const parts = [];
    try {
      await fetchAndDecrypt(`/blob/${t.tcId}`, key, ctx, (p) => { parts.push(p); }, { rangeBytes: n });
      problems.push(`fetch ranges of ${n}: accepted`);
    } catch {
      const got = concat(parts);
      if (got.length > prefix || got.length % CHUNK_SIZE !== 0) problems.push(`fetch ranges of ${n}: released ${got.length}`);
    }
  }
  if (t.flags.includes("HeaderFailure") && ct.length >= HEADER_SIZE) {
    // Rejected on the header alone, before any chunk is looked at.
    const d = new Decryptor(key, ctx);
    try { await d.update(ct.subarray(0, HEADER_SIZE)); problems.push("header accepted"); } catch { /* expected */ }
  }
  return problems;
}

async function main() {
  const doc = await (await fetch("/vectors.json")).json();
  const results = [];
  for (const group of doc.testGroups) {
    for (const t of group.tests) {
      t.ctBytes = new Uint8Array(await (await fetch(`/blob/${t.tcId}`)).arrayBuffer());
      let problems;
      try {
        problems = await check(t);
      } catch (error) {
        problems = [`exception: ${error && error.message}`];
      }
      results.push({ tcId: t.tcId, result: t.result, flags: t.flags, problems });
    }
  }
  window.results = results;
}

main().catch((error) => { window.results = { error: String(error && error.stack || error) }; });
