// The browser test of web/src/cobblestone.js: serves it, a test page and the C2SP/Wycheproof
// Cobblestone vectors from a loopback HTTP server of its own (blobs with Range support), runs
// the page in headless Debian chromium through playwright-core (never a downloaded browser),
// and prints one JSON line: {"results": [...]}; exit 0 when every vector passed.
//   node web/test/vectors.mjs VECTORS.json [--chromium /usr/bin/chromium]
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { inflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const vectorsPath = args[0];
const executablePath = args.includes("--chromium") ? args[args.indexOf("--chromium") + 1] : "/usr/bin/chromium";
if (!vectorsPath) {
  console.error("usage: node vectors.mjs VECTORS.json [--chromium PATH]");
  process.exit(2);
}
const doc = JSON.parse(await readFile(vectorsPath, "utf8"));
const blobs = new Map();
for (const group of doc.testGroups) for (const t of group.tests) blobs.set(String(t.tcId), inflateSync(Buffer.from(t.ct, "hex")));  // zlib, then hex (Wycheproof)

const files = {
  "/": ["text/html", `<!doctype html><meta charset="utf-8"><title>cobblestone vectors</title>
<script type="module" src="/vectors-page.js"></script>`],
  "/cobblestone.js": ["text/javascript", await readFile(path.join(here, "..", "src", "cobblestone.js"))],
  "/vectors-page.js": ["text/javascript", await readFile(path.join(here, "vectors-page.js"))],
  "/vectors.json": ["application/json", JSON.stringify(doc)],
};

const server = http.createServer((req, res) => {
  const blob = /^\/blob\/(\d+)$/.exec(req.url);
  if (blob && blobs.has(blob[1])) {
    const data = blobs.get(blob[1]);
    const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range || "");
    if (!range) {
      res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": data.length });
      return res.end(data);
    }
    const start = Number(range[1]);
    if (start >= data.length) {
      res.writeHead(416, { "Content-Range": `bytes */${data.length}` });
      return res.end();
    }
    const end = Math.min(Number(range[2]), data.length - 1);
    res.writeHead(206, { "Content-Type": "application/octet-stream",
      "Content-Range": `bytes ${start}-${end}/${data.length}`, "Content-Length": end - start + 1 });
    return res.end(data.subarray(start, end + 1));
  }
  const file = files[req.url];
  if (!file) {
    res.writeHead(404);
    return res.end();
  }
  res.writeHead(200, { "Content-Type": file[0], "Cache-Control": "no-store" });
  res.end(file[1]);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const url = `http://127.0.0.1:${server.address().port}/`;

// Root cannot use chromium's sandbox (CI runs as root); otherwise it stays on.
const launchArgs = process.getuid && process.getuid() === 0 ? ["--no-sandbox"] : [];
const browser = await chromium.launch({ executablePath, headless: true, args: launchArgs });
let exitCode = 1;
try {
  const page = await browser.newPage();
  const consoleLines = [];
  page.on("console", (msg) => consoleLines.push(msg.text()));
  page.on("pageerror", (err) => consoleLines.push(String(err)));
  await page.goto(url);
  await page.waitForFunction(() => window.results !== undefined, null, { timeout: 120000 });
  const results = await page.evaluate(() => window.results);
  const userAgent = await page.evaluate(() => navigator.userAgent);
  if (!Array.isArray(results)) {
    console.log(JSON.stringify({ error: results.error, console: consoleLines, userAgent }));
  } else {
    const failed = results.filter((r) => r.problems.length);
    console.log(JSON.stringify({ results, userAgent }));
    exitCode = failed.length ? 1 : 0;
  }
} finally {
  await browser.close();
  server.close();
}
process.exit(exitCode);
