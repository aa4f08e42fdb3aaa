// Drives the operator console in headless Chromium: the tree loads live with each actor's mailbox
// figures, the shard map shows this node serving every partition, an actor restarted from the page shows its restart count rise, and a user looked up
// after an event shows its state and recommendations. Usage: node console.mjs BASE_URL
// (playwright-core on NODE_PATH, CHROMIUM pointing at the browser, STREAMREC_TOKEN an admin's
// bearer token). Exits non-zero on the first failed expectation.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const base = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new"],
});
try {
  const page = await browser.newPage();
  page.on("dialog", (dialog) => dialog.accept());
  await page.goto(`${base}/console`);
  // The node requires a token: the page says so, then connects with an operator's.
  await page.locator("#status", { hasText: "enter a token" }).waitFor({ timeout: 15000 });
  await page.fill("#token", process.env.STREAMREC_TOKEN);
  await page.click("#token-form button");
  await page.locator("#status", { hasText: "live" }).waitFor({ timeout: 15000 });
  await page.locator("#ingest", { hasText: "events/s" }).waitFor({ timeout: 5000 });
  // The shard map: this node is the one member, and it serves every partition.
  await page.locator("#members", { hasText: "(this node)" }).waitFor({ timeout: 5000 });
  const shards = await page.locator("#shards tr.shard").allTextContents();
  if (shards.length === 0 || !shards.every((row) => row.includes("active"))) {
    throw new Error(`expected every partition active here: ${JSON.stringify(shards)}`);
  }

  const worker = page.locator('.actor[data-name="model-0"]');
  await worker.waitFor({ timeout: 15000 });
  // Every actor shows its mailbox: depth, messages handled and rate.
  await page.locator('.actor[data-name="model-0"]', { hasText: /mailbox=\d+ msgs=\d+ \([\d.]+\/s\)/ }).waitFor({ timeout: 5000 });
  const before = await worker.textContent();
  if (!before.includes("restarts=0")) throw new Error(`expected no restarts yet: ${before}`);
  await worker.click();
  await page.locator("#actor", { hasText: '"name": "model-0"' }).waitFor({ timeout: 5000 });
  await page.click("#restart");
  await page.locator('.actor[data-name="model-0"]', { hasText: "restarts=1" }).waitFor({ timeout: 15000 });

  const posted = await page.request.post(`${base}/v1/events`, {
    headers: { Authorization: `Bearer ${process.env.STREAMREC_TOKEN}` },
    data: { events: [{ event_id: "browser-1", user_id: "browser-user", item_id: "item-1", kind: "click" }] },
  });
  if (posted.status() !== 202) throw new Error(`posting an event: ${posted.status()}`);
  await page.fill("#user-id", "browser-user");
  for (let attempt = 0; ; attempt++) {
    await page.click("#session-form button");
    try {
      await page.locator("#session", { hasText: '"num_events": 1' }).waitFor({ timeout: 1000 });
      break;
    } catch (e) {
      if (attempt > 10) throw e;
    }
  }
  const session = await page.textContent("#session");
  if (!session.includes('"recommendations"')) throw new Error(`no recommendations shown: ${session}`);
  console.log("console: tree live, shard map shown, restart counted, session shown");
} finally {
  await browser.close();
}
