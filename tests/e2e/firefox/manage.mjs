// /docs and /redoc offline, and managing jobs (filters, clone with a dataset preview, delete after confirming), in
// headless Firefox (Debian's firefox-esr over WebDriver BiDi, via puppeteer-core), against a live API with no worker.
// Usage: node manage.mjs BASE_URL TOKEN SHOTS_DIR OPERATIONS CLONE_JOB_ID DELETE_JOB_ID
// Prints one JSON line of what it saw; the test asserts on it.
import puppeteer from "puppeteer-core";

const [base, token, shots, operations, cloneId, deleteId] = process.argv.slice(2);
const firefox = process.env.FIREFOX || "/usr/bin/firefox-esr";
const loopback = new Set(["127.0.0.1", "localhost", "[::1]"]);
const seen = { offsite: [], page_errors: [], csp_blocked: [] };
const count = (sel) => page.$$eval(sel, (els) => els.length);
const rows = (n) => page.waitForFunction((k) => document.querySelectorAll("table.jobs tbody tr").length === k, {}, n);

const browser = await puppeteer.launch({ browser: "firefox", executablePath: firefox, headless: true });
const page = await browser.newPage();
try {
  await page.setViewport({ width: 1400, height: 1000 });
  page.setDefaultTimeout(60_000);
  page.on("pageerror", (err) => {  // Firefox reports what the Content-Security-Policy blocked as a page error
    const csp = String(err).includes("Content-Security-Policy");
    (csp ? seen.csp_blocked : seen.page_errors).push(String(err));
  });
  page.on("request", (request) => {  // nothing may leave this machine (no network here either: a CDN would fail)
    const url = new URL(request.url());
    if (!["data:", "blob:"].includes(url.protocol) && !loopback.has(url.hostname)) seen.offsite.push(url.href);
  });

  await page.goto(`${base}/docs`);
  await page.waitForFunction((n) => document.querySelectorAll(".opblock").length === n, {}, +operations);
  seen.swagger_operations = await count(".opblock");
  seen.swagger_authorize = await count("button.authorize");
  await page.screenshot({ path: `${shots}/firefox-docs-swagger.png` });
  await page.goto(`${base}/redoc`);
  await page.waitForFunction((n) => document.querySelectorAll("[data-section-id^='operation/']").length === n, {},
    +operations);
  seen.redoc_operations = await count("[data-section-id^='operation/']");
  seen.redoc_title = await page.$eval("h1", (el) => el.textContent);
  await page.screenshot({ path: `${shots}/firefox-docs-redoc.png` });

  await page.goto(`${base}/?token=${token}#/jobs`);
  await rows(5);
  await page.select(".filters select[name=method]", "mol");
  await rows(4);
  await page.type(".filters input[name=q]", "LEGAL");
  await rows(2);
  await page.select(".filters select[name=status]", "succeeded");
  await rows(1);
  seen.filtered = await page.$$eval("table.jobs tbody tr td:nth-child(2)", (els) => els.map((el) => el.textContent));
  await page.screenshot({ path: `${shots}/firefox-jobs-filters.png`, fullPage: true });

  await page.evaluate((id) => { location.hash = `#/job/${id}`; }, cloneId);
  await page.waitForSelector("[data-action=clone]");
  await page.locator("[data-action=clone]").click();  // a locator retries when the page re-renders under it
  await page.waitForFunction(() => document.querySelector("#new-job input[name=name]")?.value.endsWith("(copy)"));
  seen.clone_name = await page.$eval("#new-job input[name=name]", (el) => el.value);
  seen.clone_method = await page.$eval("input[name=method]:checked", (el) => el.value);
  await page.locator("[data-preview-link=domain_data]").click();
  await page.waitForSelector("[data-preview-for=domain_data] pre.document");
  seen.preview = await page.$$eval("[data-preview-for=domain_data] pre.document", (els) => els.map((el) => el.textContent));
  await page.screenshot({ path: `${shots}/firefox-clone-preview.png`, fullPage: true });

  await page.evaluate((id) => { location.hash = `#/job/${id}`; }, deleteId);
  await page.waitForSelector("[data-action=delete]");
  const answer = (accept) => page.once("dialog", (dialog) => (accept ? dialog.accept() : dialog.dismiss()));
  answer(false);
  await page.locator("[data-action=delete]").click();
  await page.waitForFunction(() => !document.querySelector("[data-action=delete]")?.disabled);
  seen.after_dismiss = await page.evaluate(() => location.hash);
  answer(true);
  await page.locator("[data-action=delete]").click();
  await rows(4);
  seen.after_delete = await page.$$eval("table.jobs tbody tr td:nth-child(2)", (els) => els.map((el) => el.textContent));
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
