// Drives headless Chromium over the deltazoo web pages; prints what it read as JSON on stdout.
// usage: node check_pages.mjs BASE_URL SCREENSHOT_PATH USER_DATA_DIR
import { chromium } from "playwright-core";

const [base, screenshot, userDataDir] = process.argv.slice(2);
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1200, height: 900 },
});
const out = { errors: [] };
try {
  const page = await context.newPage();
  page.on("pageerror", (e) => out.errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") out.errors.push(m.text()); });

  await page.goto(base + "/");
  out.index = await page.$$eval("#models tbody tr[data-model]", (rows) => rows.map((r) => ({
    name: r.dataset.model,
    logical: Number(r.querySelector(".logical [data-bytes]").dataset.bytes),
    stored: Number(r.querySelector(".stored [data-bytes]").dataset.bytes),
    ratio: r.querySelector(".ratio [data-ratio]") ? Number(r.querySelector(".ratio [data-ratio]").dataset.ratio) : null,
    description: r.cells[5].textContent,
  })));
  out.cssApplied = await page.$eval("header", (h) => getComputedStyle(h).backgroundColor);

  await page.click('a[href="/models/family/math"]');
  await page.waitForSelector("#lineage");
  out.modelUrl = page.url();
  out.lineage = await page.$$eval("#lineage a.node", (nodes) => nodes.map((a) => ({
    ref: a.dataset.ref, role: a.dataset.role, parent: a.dataset.parent || null,
    text: a.querySelector("text.label").textContent,
    tags: a.dataset.tags, tagsText: a.querySelector("text.tags") ? a.querySelector("text.tags").textContent : null,
  })));
  out.lineageEdges = await page.$$eval("#lineage path.edge", (p) => p.length);
  out.card = await page.$$eval("#card dd[data-field]", (dds) => Object.fromEntries(dds.map((d) => [d.dataset.field, d.textContent])));
  out.cardHeading = await page.$eval("#card .card-body h1", (h) => h.textContent);
  out.snippets = await page.$$eval("#use pre", (pres) => pres.map((p) => p.textContent));
  await page.click('button[data-copy="cli-code"]');
  // the button answers once the clipboard promise settles: wait for its new label (or give up after 10 s)
  await page
    .waitForFunction(() => document.querySelector('button[data-copy="cli-code"]').textContent !== "copy", null, { timeout: 10000 })
    .catch(() => {});
  out.copyButton = await page.$eval('button[data-copy="cli-code"]', (b) => b.textContent);
  out.modelOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  out.modelSvg = await page.$$eval("svg.plot rect.bar", (bars) => bars.length);
  await page.screenshot({ path: screenshot, fullPage: true });

  await page.click('#versions a[href="/models/family/math/1"]');
  await page.waitForSelector("#tensors");
  out.versionOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  out.tensors = await page.$$eval("#tensors tbody tr", (rows) => rows.map((r) => ({
    name: r.dataset.tensor,
    encoding: r.cells[3].textContent.trim(),
    stored: Number(r.querySelector(".stored [data-bytes]").dataset.bytes),
  })));

  await page.goto(base + "/leaderboard?text=fox");
  out.leaderboard = await page.$$eval("#leaderboard tbody tr", (rows) => rows.map((r) => ({
    ref: r.dataset.ref,
    profile: r.dataset.profile || null,
    bpb: Number(r.querySelector(".bpb").dataset.bpb),
    gain: r.querySelector(".gain").dataset.gain === "" ? null : Number(r.querySelector(".gain").dataset.gain),
  })));
  out.leaderboardDots = await page.$$eval("svg.plot circle.dot:not(.legend *)", (c) => c.length);
  out.legend = await page.$$eval("svg.plot .legend .legendlabel", (t) => t.map((x) => x.textContent));
  out.yticks = await page.$$eval("svg.plot text.tick[text-anchor=end]", (t) => t.map((x) => x.textContent));
} catch (e) {
  out.errors.push(String(e));
} finally {
  await context.close();
}
console.log(JSON.stringify(out));
