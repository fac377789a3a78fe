// Presenting in real browsers (docs/protocol.md §9, §10.2): one headless Debian chromium with
// three pages. The follower and the browser join first (the organizer is already in over
// SIP/TLS and presents a PDF at page 1): both list the organizer in their roster at once, both
// show page 1 from their welcome; the browser switches "Follow presenter" off. The organizer
// then joins in a third page and turns pages with #next: the follower follows, the browser
// stays, and jumps to the presenter's page when it follows again. The organizer makes the
// browser a presenter (its page shows the presenter tools), uploads one file with #upload and
// drops another on #drop; the follower decrypts both. Prints one JSON line.
//   node present.mjs --url U --spki H1,H2 --conference URI --organizer A:P --follower B:P
//        --browser C:P --api-base URL --upload-file F --drop-file F --shots DIR [--readme-shot PNG] [--chromium PATH]
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { launch, options } from "./launch.mjs";

const opts = options();
const shots = opts.shots || ".";
const browser = await launch(opts);
const out = { console: [] };
const pages = {};
const T = { timeout: 30000 };

async function open(who) {
  const [user, password] = opts[who].split(":");
  const context = await browser.newContext({ viewport: { width: 1280, height: 760 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.on("console", (msg) => out.console.push(`${who}: ${msg.text()}`));
  page.on("pageerror", (err) => out.console.push(`${who}: pageerror: ${err}`));
  page.on("request", (req) => {
    const auth = req.headers().authorization;
    if (auth && auth.startsWith("Bearer ")) out[`${who}Cookie`] = auth.slice(7);
  });
  page.on("websocket", (ws) => { // the data channel asks for batch frames (§4.3)
    if (ws.url().includes("/channel")) (out.channelUrls ??= []).push(ws.url());
  });
  await page.goto(opts.url);
  await page.fill("#user", user);
  await page.fill("#password", password);
  await page.fill("#conference", opts.conference);
  await page.click("#join");
  await page.waitForFunction(() => document.querySelector("#status").textContent === "joined", null, T);
  pages[who] = page;
  return page;
}

const slidePage = (page) => page.getAttribute("#slide", "data-page");
const waitPage = (page, n) => page.waitForFunction((want) => {
  const slide = document.querySelector("#slide");
  return slide.querySelector("canvas") && slide.dataset.page === want;
}, String(n), T);
const waitPresenting = (page, n) => page.waitForFunction((want) => document.querySelector("#presenting").textContent.endsWith(`page ${want}`), String(n), T);
const roster = (page) => page.$$eval("#roster li", (els) => els.map((el) => ({ user: el.dataset.user, role: el.dataset.role, id: el.dataset.participantId })));

async function waitSha(page, name) {
  const handle = await page.waitForFunction((n) => {
    const el = [...document.querySelectorAll("[data-item-id]")].find((li) => li.querySelector(".name").textContent === n);
    return el && el.dataset.sha256;
  }, name, { timeout: 60000 });
  return handle.jsonValue();
}

try {
  const [follower, other] = await Promise.all([open("follower"), open("browser")]);
  // The roster at join: whoever was in before (the organizer over SIP), with roles.
  for (const page of [follower, other]) {
    await page.waitForSelector('#roster li[data-role="organizer"]', T);
  }
  out.rosterAtJoin = await roster(follower);
  // Both follow the presentation their welcome carried: the PDF, page 1.
  await Promise.all([waitPage(follower, 1), waitPage(other, 1)]);
  out.welcomePage = [await slidePage(follower), await slidePage(other)];
  out.followerRole = await follower.getAttribute("body", "data-role");
  out.toolsHiddenForAttendee = await follower.$eval("#presenter-tools", (el) => el.hidden);
  // The browser goes its own way.
  await other.uncheck("#follow");

  const presenter = await open("organizer");
  // Live roster: the follower sees the organizer's second device join (and, below, leave).
  await follower.waitForFunction(() => document.querySelectorAll("#roster li").length === 4, null, T);
  out.rosterAfterJoin = (await roster(follower)).length;
  out.presenterRole = await presenter.getAttribute("body", "data-role");
  await waitPage(presenter, 1);
  await presenter.click("#next");
  await waitPage(presenter, 2); // its own page re-renders when its turn comes back
  await waitPage(follower, 2);
  await waitPresenting(other, 2); // the browser heard the turn ...
  out.afterFirstTurn = { presenter: await slidePage(presenter), follower: await slidePage(follower),
    browsing: await slidePage(other) }; // ... and stayed where it was
  await presenter.click("#next");
  await waitPage(follower, 3);
  await waitPresenting(other, 3);
  out.afterSecondTurn = { follower: await slidePage(follower), browsing: await slidePage(other) };
  await other.check("#follow"); // follow again: jump to the presenter's page
  await waitPage(other, 3);
  out.afterFollowAgain = await slidePage(other);

  // The organizer makes the browser a presenter: its page shows the presenter tools.
  const me = (await roster(other)).find((p) => p.user === opts.browser.split(":")[0]);
  const patch = await fetch(`${opts["api-base"]}/participants/${me.id}`, { method: "PATCH",
    body: JSON.stringify({ role: "presenter" }),
    headers: { Authorization: `Bearer ${out.organizerCookie}`, "Content-Type": "application/json" } });
  out.patchStatus = patch.status;
  await other.waitForFunction(() => document.body.dataset.role === "presenter" && !document.querySelector("#presenter-tools").hidden, null, T);
  await follower.waitForFunction((id) => document.querySelector(`#roster li[data-participant-id="${id}"]`)?.dataset.role === "presenter", me.id, T);
  out.promoted = true;

  // Uploads by the presenter: a file input, then a drop; the follower decrypts both.
  const picked = await readFile(opts["upload-file"]);
  await presenter.setInputFiles("#upload", { name: "notes.txt", mimeType: "text/plain", buffer: picked });
  await presenter.waitForFunction(() => document.querySelector("#upload-status").dataset.state === "done", null, T);
  out.progress = await presenter.$eval("#upload-progress", (el) => el.value);
  out.uploadedSha256 = await waitSha(follower, "notes.txt");
  const dataTransfer = await presenter.evaluateHandle((b64) => {
    const dt = new DataTransfer();
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    dt.items.add(new File([bytes], "dropped.bin", { type: "application/octet-stream" }));
    return dt;
  }, (await readFile(opts["drop-file"])).toString("base64"));
  await presenter.dispatchEvent("#drop", "dragover", { dataTransfer });
  await presenter.dispatchEvent("#drop", "drop", { dataTransfer });
  out.droppedSha256 = await waitSha(follower, "dropped.bin");
  out.droppedOnPresenter = await waitSha(presenter, "dropped.bin");

  await follower.waitForFunction(() => [...document.querySelectorAll("[data-item-id]")].every((el) => el.dataset.state === "ready"), null, T);
  await presenter.waitForFunction(() => document.querySelector("#upload-status").dataset.state === "done", null, T);
  await follower.screenshot({ path: path.join(shots, "following.png") });
  await presenter.screenshot({ path: path.join(shots, "presenter.png") });
  if (opts["readme-shot"]) await writeFile(opts["readme-shot"], await follower.screenshot());
  await presenter.click("#leave");
  await presenter.waitForFunction(() => document.querySelector("#status").textContent === "left", null, T);
  await follower.waitForFunction(() => document.querySelectorAll("#roster li").length === 3, null, T);
  out.rosterAfterLeave = (await roster(follower)).length;
  for (const page of [follower, other]) {
    await page.click("#leave");
    await page.waitForFunction(() => document.querySelector("#status").textContent === "left", null, T);
  }
  out.left = true;
} catch (error) {
  out.error = String(error && error.stack || error);
  for (const [who, page] of Object.entries(pages)) {
    await page.screenshot({ path: path.join(shots, `failure-${who}.png`) }).catch(() => {});
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
