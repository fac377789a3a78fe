// Builds the web client into dist/ (what the WCS serves at /, docs/protocol.md §10.2):
//   dist/index.html, dist/assets/app.js (+ .map), dist/assets/app.css,
//   dist/assets/pdf.worker.mjs (pdf.js's worker, loaded from our own origin).
// No inline script anywhere: the CSP forbids it.
import { copyFile, mkdir, rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, "dist");
const assets = path.join(dist, "assets");
await rm(dist, { recursive: true, force: true });
await mkdir(assets, { recursive: true });
await esbuild.build({
  entryPoints: [path.join(here, "src", "main.js")],
  outfile: path.join(assets, "app.js"),
  bundle: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  logLevel: "warning",
});
await copyFile(path.join(here, "src", "index.html"), path.join(dist, "index.html"));
await copyFile(path.join(here, "src", "style.css"), path.join(assets, "app.css"));
await copyFile(path.join(here, "node_modules", "pdfjs-dist", "build", "pdf.worker.min.mjs"),
  path.join(assets, "pdf.worker.mjs"));
console.log(`built ${path.relative(process.cwd(), dist)}`);
