// Drives the real page in headless Debian chromium (playwright-core, never a downloaded
// browser): wrong password first, then join, wait until every expected item is decrypted
// (its data-sha256), check the slide, leave. The deployment's CA is trusted through an SPKI
// pin list (the WCS's and the focus's keys), never --ignore-certificate-errors.
// Prints one JSON line; saves screenshots into --shots (always the joined page; on failure
// the page as it was).
//   node join.mjs --url U --user A --password P --conference URI --items N --spki H1,H2
//        --shots DIR [--chromium PATH]
import { readFileSync } from "node:fs";
import https from "node:https";
import path from "node:path";
import { launch, options } from "./launch.mjs";

const opts = options();
const shots = opts.shots || ".";
const browser = await launch(opts);
const out = { console: [] };
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.on("console", (msg) => out.console.push(msg.text()));
  page.on("pageerror", (err) => out.console.push(`pageerror: ${err}`));
  page.on("request", (req) => {
    const auth = req.headers().authorization;
    if (auth && auth.startsWith("Bearer ")) out.cookie = auth.slice(7);
  });
  const response = await page.goto(opts.url);
  out.csp = response.headers()["content-security-policy"];

  // A wrong password: a clear message, not joined.
  await page.fill("#user", opts.user);
  await page.fill("#password", `${opts.password}-wrong`);
  await page.fill("#conference", opts.conference);
  await page.click("#join");
  await page.waitForFunction(() => document.querySelector("#join-error").textContent.length > 0, null, { timeout: 30000 });
  out.wrongPassword = { error: await page.textContent("#join-error"), status: await page.textContent("#status") };

  // An unknown conference (another id of the same organizer): a clear message too.
  await page.fill("#password", opts.password);
  await page.fill("#conference", opts.conference.replace(/id:[^;>]+/, "id:NO-SUCH-MEETING"));
  await page.evaluate(() => { document.querySelector("#join-error").textContent = ""; });
  await page.click("#join");
  await page.waitForFunction(() => document.querySelector("#join-error").textContent.length > 0, null, { timeout: 30000 });
  out.unknownConference = await page.textContent("#join-error");

  // The real join.
  await page.fill("#conference", opts.conference);
  await page.click("#join");
  await page.waitForFunction(() => document.querySelector("#status").textContent === "joined", null, { timeout: 30000 });
  out.status = await page.textContent("#status");
  const expected = Number(opts.items);
  await page.waitForFunction((n) => document.querySelectorAll("[data-item-id][data-sha256]").length >= n, expected, { timeout: 60000 });
  // Every item settled: decrypted, or failed (a tampered one).
  await page.waitForFunction(() => [...document.querySelectorAll("[data-item-id]")].every((el) => ["ready", "failed"].includes(el.dataset.state)), null, { timeout: 60000 });
  out.items = await page.$$eval("[data-item-id]", (els) => els.map((el) => ({
    id: el.dataset.itemId, sha256: el.dataset.sha256 || null, state: el.dataset.state,
    text: el.textContent })));
  if (opts.image) await page.click(`[data-item-id="${opts.image}"]`);
  await page.waitForSelector("#slide img", { timeout: 10000 });
  await page.waitForFunction(() => { const img = document.querySelector("#slide img"); return img && img.complete && img.naturalWidth > 0; }, null, { timeout: 10000 });
  out.slide = { page: await page.getAttribute("#slide", "data-page"),
    width: await page.$eval("#slide img", (img) => img.naturalWidth) };
  await page.screenshot({ path: path.join(shots, "joined.png") });
  // A push: the organizer shares one more item while the page is open (the channel is up,
  // so the page is not polling); it is decrypted and checked like the others.
  await page.waitForFunction(() => document.body.dataset.channel === "open", null, { timeout: 20000 });
  out.channel = "open";
  if (opts.share) {
    const body = Buffer.from(opts.share, "base64");
    const resp = await fetch(`${opts["api-base"]}/items`, { method: "POST", body,
      headers: { Authorization: `Bearer ${opts["organizer-cookie"]}`, "X-Item-Name": "pushed.png", "Content-Type": "image/png" } });
    out.pushed = (await resp.json()).item.id;
    await page.waitForFunction((id) => { const el = document.querySelector(`[data-item-id="${id}"]`); return el && el.dataset.sha256; }, out.pushed, { timeout: 30000 });
    out.pushedSha256 = await page.getAttribute(`[data-item-id="${out.pushed}"]`, "data-sha256");
  }
  if (opts["kill-wcs"]) { // the network drops: the channel reconnects and resumes from its seq
    process.kill(Number(opts["kill-wcs"]), "SIGKILL"); // `webconf serve` restarts the WCS
    await page.waitForFunction(() => document.body.dataset.channel === "closed", null, { timeout: 20000 });
    await page.waitForFunction(() => document.body.dataset.channel === "open", null, { timeout: 90000 });
    out.resumed = await page.evaluate(() => document.body.dataset.resumed || null);
  }
  if (opts.pdf) { // a PDF: page 1 on a canvas, then browse to page 2 on my own
    await page.click(`[data-item-id="${opts.pdf}"]`);
    await page.waitForFunction(() => document.querySelector("#slide canvas") && document.querySelector("#slide").dataset.page === "1", null, { timeout: 20000 });
    await page.screenshot({ path: path.join(shots, "pdf.png") });
    await page.click("#next");
    await page.waitForFunction(() => document.querySelector("#slide").dataset.page === "2", null, { timeout: 20000 });
    out.pdf = { pages: await page.textContent("#page-label"), page: await page.getAttribute("#slide", "data-page") };
  }

  if (opts["revoke-via"]) { // revoked at the WCS (the internal API, as an eject would be)
    const claims = JSON.parse(Buffer.from(out.cookie.split(".")[1], "base64url"));
    const url = new URL(`/internal/v1/conferences/${claims.conf}/participants/${claims.pid}`, opts["revoke-via"]);
    out.revokeStatus = await new Promise((resolve, reject) => {
      const req = https.request(url, { method: "DELETE", cert: readFileSync(opts["client-cert"]),
        key: readFileSync(opts["client-key"]), ca: readFileSync(opts.ca) }, (res) => { res.resume(); resolve(res.statusCode); });
      req.on("error", reject);
      req.end();
    });
    await page.waitForFunction(() => document.querySelector("#status").textContent === "you were removed", null, { timeout: 20000 });
    out.removed = true;
  } else {
    await page.click("#leave");
    await page.waitForFunction(() => document.querySelector("#status").textContent === "left", null, { timeout: 15000 });
    out.left = true;
  }
} catch (error) {
  out.error = String(error && error.stack || error);
  if (page) await page.screenshot({ path: path.join(shots, "failure.png") }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
