// What every browser driver here starts with: its `--name value` options, and headless
// Debian chromium through playwright-core (never a downloaded browser) trusting the
// deployment by the SPKI pins of `--spki` (never --ignore-certificate-errors).
import { mkdir } from "node:fs/promises";
import { chromium } from "playwright-core";

export function options() {
  const opts = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) opts[argv[i].replace(/^--/, "")] = argv[i + 1];
  return opts;
}

// The browser, after making the --shots directory.
export async function launch(opts) {
  await mkdir(opts.shots || ".", { recursive: true });
  const args = [`--ignore-certificate-errors-spki-list=${opts.spki}`];
  if (process.getuid && process.getuid() === 0) args.push("--no-sandbox"); // root (CI) only
  return chromium.launch({ executablePath: opts.chromium || "/usr/bin/chromium", headless: true, args });
}
