// The newcomer of `webconf demo --keep` (README "Browser"): opens the printed URL in headless
// Debian chromium with the printed SPKI pins, joins with the printed attendee login, and
// watches the organizer's slides turn (#slide[data-page] on a canvas) until it has seen
// three pages; then leaves. Prints one JSON line {role, pages, presenting, left}.
//   node newcomer.mjs --url U --spki H1,H2 --user A --password P --conference URI
//        --shots DIR [--chromium PATH]
import path from "node:path";
import { launch, options } from "./launch.mjs";

const opts = options();
const browser = await launch(opts);
const out = { console: [] };
let page;
try {
  page = await (await browser.newContext({ viewport: { width: 1280, height: 760 } })).newPage();
  page.on("pageerror", (err) => out.console.push(`pageerror: ${err}`));
  await page.goto(opts.url);
  await page.fill("#user", opts.user);
  await page.fill("#password", opts.password);
  await page.fill("#conference", opts.conference);
  await page.click("#join");
  await page.waitForFunction(() => document.querySelector("#status").textContent === "joined", null, { timeout: 30000 });
  out.role = await page.getAttribute("body", "data-role");
  const pages = new Set();
  while (pages.size < 3) { // each turn the presenter makes shows up as the next page
    const seen = [...pages];
    const handle = await page.waitForFunction((known) => {
      const slide = document.querySelector("#slide");
      return slide.querySelector("canvas") && !known.includes(slide.dataset.page) && slide.dataset.page;
    }, seen, { timeout: 60000 });
    pages.add(await handle.jsonValue());
  }
  out.pages = [...pages];
  out.presenting = await page.textContent("#presenting");
  await page.screenshot({ path: path.join(opts.shots || ".", "newcomer.png") });
  await page.click("#leave");
  await page.waitForFunction(() => document.querySelector("#status").textContent === "left", null, { timeout: 15000 });
  out.left = true;
} catch (error) {
  out.error = String(error && error.stack || error);
  if (page) await page.screenshot({ path: path.join(opts.shots || ".", "failure.png") }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
