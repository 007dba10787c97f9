// The dashboard in headless Firefox (Debian's firefox-esr over WebDriver BiDi, via puppeteer-core).
// Usage: node dashboard.mjs URL_WITH_TOKEN JOB_NAME SHOTS_DIR BROKEN_FILE
// Prints one JSON line of what it saw; exits non-zero when a check fails.
import puppeteer from "puppeteer-core";

const [url, jobName, shots, broken] = process.argv.slice(2);
const firefox = process.env.FIREFOX || "/usr/bin/firefox-esr";
const seen = {};
const browser = await puppeteer.launch({ browser: "firefox", executablePath: firefox, headless: true });
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 1000 });
  page.setDefaultTimeout(120_000);
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));

  await page.goto(url);
  await page.waitForFunction(() => document.querySelector("#who")?.textContent.includes("signed in as"));
  seen.token_left_url = !page.url().includes("token=");
  await page.waitForSelector(`tr[data-job]`);
  seen.jobs = await page.$$eval("tr[data-job]", (rows) => rows.length);
  await page.screenshot({ path: `${shots}/firefox-jobs-list.png` });

  await page.evaluate(() => { location.hash = "#/new"; });
  await page.waitForSelector("#new-job #f-lr");
  seen.default_lr = await page.$eval("#f-lr", (el) => el.value);
  seen.default_general = await page.$eval("#pick-general", (el) => el.selectedOptions[0]?.textContent ?? "");
  const input = await page.$("#file-domain");
  await input.uploadFile(broken);
  await page.waitForFunction(() =>
    document.querySelector('[data-error-for="domain_data"]')?.textContent.includes("line 2: invalid JSON"));
  seen.refused_upload = await page.$eval('[data-error-for="domain_data"]', (el) => el.textContent);
  // the Advanced section and the YAML view: a field typed in the form shows in the YAML; an edit applied comes back
  await page.click("details.advanced > summary");
  seen.advanced_fields = await page.$$eval("details.advanced .field", (els) => els.length);
  await page.$eval("#f-seed", (el) => { el.value = ""; });
  await page.type("#f-seed", "3");
  await page.click("details.yaml-view > summary");
  await page.waitForFunction(() => document.querySelector("#spec-yaml").value.includes("\nseed: 3\n"));
  await page.$eval("#spec-yaml", (t) => {
    t.value = t.value.replace("seed: 3", "seed: 4");
    t.dispatchEvent(new Event("input", { bubbles: true }));
  });
  await page.click("[data-action=apply-yaml]");
  seen.yaml_seed = await page.$eval("#f-seed", (el) => el.value);
  await page.screenshot({ path: `${shots}/firefox-new-job.png`, fullPage: true });

  await page.evaluate(() => { location.hash = "#/jobs"; });
  await page.waitForSelector(`a ::-p-text(${jobName})`);
  await (await page.$(`a ::-p-text(${jobName})`)).click();
  const chart = '[data-chart="Training cross-entropy"]';
  await page.waitForFunction((sel) => +document.querySelector(sel)?.dataset.points > 0, {}, chart);
  await page.waitForFunction(() => document.querySelector(".badge")?.textContent === "succeeded");
  const evalChart = '[data-chart="Domain perplexity (held out)"]';  // evaluations at steps 0, 4 and 8
  await page.waitForFunction((sel) => +document.querySelector(sel)?.dataset.points >= 3, {}, evalChart);
  seen.points = await page.$eval(chart, (el) => +el.dataset.points);
  seen.eval_points = await page.$eval(evalChart, (el) => +el.dataset.points);
  seen.canvases = await page.$$eval(`${chart} canvas`, (els) => els.length);
  seen.eval_charts = await page.$$eval('[data-chart] canvas', (els) => els.length);
  await page.screenshot({ path: `${shots}/firefox-job.png`, fullPage: true });
  seen.page_errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
const ok = seen.token_left_url && seen.jobs >= 1 && seen.points > 0 && seen.canvases > 0 && !seen.page_errors.length;
process.exit(ok ? 0 : 1);
