// Drives the operator console in headless Chromium: the tree loads live with each actor's mailbox
// figures, the shard map shows this node serving every partition, every live chart draws and
// updates (events/s rises after events are posted, each chart gains points), an actor restarted
// from the page shows its restart count rise (in the tree and on the restarts chart), hundreds of
// sessions are grouped under their manager, paged in natural order and searchable, and a user
// looked up after an event shows its state and recommendations. Usage: node console.mjs BASE_URL
// (playwright-core on NODE_PATH, CHROMIUM pointing at the browser, STREAMREC_TOKEN an admin's
// bearer token, STREAMREC_CONSOLE_SCREENSHOT a PNG path to save the page at the end, if set).
// Exits non-zero on the first failed expectation. Waits for conditions, never for a time.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const base = process.argv[2];
const auth = { Authorization: `Bearer ${process.env.STREAMREC_TOKEN}` };
const USERS = 260;  // more sessions than a snapshot lists (200), so the page fetches them all

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  page.on("dialog", (dialog) => dialog.accept());
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
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

  // A chart as the page draws it: its points, headline value (as text and as a number), the
  // accessible label, and each series' path.
  const chart = (key) => page.evaluate((key) => {
    const f = document.getElementById(`chart-${key}`);
    return {
      points: Number(f.dataset.points),
      last: f.dataset.last === "" ? null : Number(f.dataset.last),
      title: f.querySelector(".chart-title").textContent,
      value: f.querySelector(".chart-value").textContent,
      label: f.querySelector("svg").getAttribute("aria-label"),
      series: [...f.querySelectorAll("path.series")].map((p) => ({ name: p.dataset.series, d: p.getAttribute("d") })),
    };
  }, key);
  // Waits until a chart has drawn at least `min` points of a series with a non-empty path, and
  // `extra(figure)` holds.
  const drawn = async (key, min = 2, extra = "true") => {
    try {
      await page.waitForFunction(([key, min, extra]) => {
        const f = document.getElementById(`chart-${key}`);
        const paths = [...f.querySelectorAll("path.series")].filter((p) => /^M-?[\d.]+ -?[\d.]+/.test(p.getAttribute("d") || ""));
        return paths.length > 0 && Number(f.dataset.points) >= min && new Function("f", `return ${extra}`)(f);
      }, [key, min, extra], { timeout: 20000, polling: 100 });
    } catch (e) {
      throw new Error(`chart ${key} did not draw (${extra}): ${JSON.stringify(await chart(key))}`);
    }
    const c = await chart(key);
    if (!c.title || c.value === "–" || !c.label.startsWith(`${c.title}: `)) {
      throw new Error(`chart ${key} is not labelled with its title and value: ${JSON.stringify(c)}`);
    }
    return c;
  };

  // Charts fed by the snapshot stream and by /metrics (the page's own requests are traffic).
  await drawn("events");
  await drawn("requests");
  await drawn("latency");
  await drawn("lag");
  await drawn("sessions");
  await drawn("restarts");

  const worker = page.locator('.actor[data-name="model-0"]');
  await worker.waitFor({ timeout: 15000 });
  // Every actor shows its mailbox: depth, messages handled and rate.
  await page.locator('.actor[data-name="model-0"]', { hasText: /mailbox=\d+ msgs=\d+ \([\d.]+\/s\)/ }).waitFor({ timeout: 5000 });
  const before = await worker.textContent();
  if (!before.includes("restarts=0")) throw new Error(`expected no restarts yet: ${before}`);
  const restartsBefore = (await chart("restarts")).last;
  await worker.click();
  await page.locator("#actor", { hasText: '"name": "model-0"' }).waitFor({ timeout: 5000 });
  await page.click("#restart");
  await page.locator('.actor[data-name="model-0"]', { hasText: "restarts=1" }).waitFor({ timeout: 15000 });
  await drawn("restarts", 2, `Number(f.dataset.last) >= ${restartsBefore + 1}`);

  // Events: the events/s chart's last value rises from 0 and it keeps gaining points; the
  // requests chart draws the route they were posted on.
  await drawn("events", 2, "Number(f.dataset.last) === 0");
  const eventsBefore = await chart("events");
  // In ten requests, so that the route is among the busiest drawn.
  for (let batch = 0; batch < 10; batch++) {
    const events = Array.from({ length: USERS / 10 }, (_, i) => {
      const user = batch * (USERS / 10) + i + 1;
      return { event_id: `many-${user}`, user_id: `user-${user}`, item_id: `item-${(user % 7) + 1}`, kind: "click" };
    });
    const many = await page.request.post(`${base}/v1/events`, { headers: auth, data: { events } });
    if (many.status() !== 202) throw new Error(`posting events: ${many.status()}`);
  }
  await drawn("events", eventsBefore.points + 1, "Number(f.dataset.last) > 0");
  await drawn("requests", 2, `!!f.querySelector('path.series[data-series="/v1/events"]')`);
  await drawn("sessions", 2, `Number(f.dataset.last) >= ${USERS}`);

  // The sessions are one group under their manager, with a count, not hundreds of lines.
  const sessions = page.locator('li.node:has(> .row .actor[data-name="sessions"])');
  await sessions.locator("> .row .count", { hasText: `${USERS} session actors` }).waitFor({ timeout: 15000 });
  const listed = sessions.locator("> ul > li");
  if (await listed.count() !== 0) throw new Error("sessions are listed before the group is opened");
  // Opened from the keyboard: the manager's row takes focus, the right arrow opens it.
  await sessions.locator("> .row .actor").click();
  await page.keyboard.press("ArrowRight");
  const range = sessions.locator("> .group-bar .range");
  await range.filter({ hasText: `1–50 of ${USERS}` }).waitFor({ timeout: 15000 });
  const names = () => sessions.locator("> ul > li > .row .actor").evaluateAll((els) => els.map((e) => e.dataset.name));
  const first = await names();
  const expected = Array.from({ length: 50 }, (_, i) => `user-${i + 1}`);
  if (JSON.stringify(first) !== JSON.stringify(expected)) {
    throw new Error(`expected the first page in natural order: ${JSON.stringify(first)}`);
  }
  await sessions.locator("> .group-bar .next").click();
  await range.filter({ hasText: `51–100 of ${USERS}` }).waitFor({ timeout: 5000 });
  const second = await names();
  if (second.length !== 50 || second[0] !== "user-51" || second[49] !== "user-100") {
    throw new Error(`expected users 51 to 100 on the second page: ${JSON.stringify(second)}`);
  }
  // Search finds one user, past the first 200 the snapshot lists (in string order user-99 is
  // among the last).
  await sessions.locator("> .group-bar input[type=search]").fill("user-99");
  await range.filter({ hasText: "1–1 of 1" }).waitFor({ timeout: 15000 });
  const found = await names();
  if (JSON.stringify(found) !== JSON.stringify(["user-99"])) throw new Error(`search found ${JSON.stringify(found)}`);
  await sessions.locator('> ul .actor[data-name="user-99"]').click();
  await page.locator("#actor", { hasText: '"name": "user-99"' }).waitFor({ timeout: 5000 });

  const posted = await page.request.post(`${base}/v1/events`, {
    headers: auth,
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
  // Recommendations ran the model and looked in the cache.
  await drawn("inference", 1);
  await drawn("cache", 1);

  if (errors.length) throw new Error(`the page failed: ${errors.join("; ")}`);
  if (process.env.STREAMREC_CONSOLE_SCREENSHOT) {
    await page.screenshot({ path: process.env.STREAMREC_CONSOLE_SCREENSHOT, fullPage: true });
  }
  console.log("console: charts draw and update, tree live and grouped, shard map shown, restart counted, session shown");
} finally {
  await browser.close();
}
