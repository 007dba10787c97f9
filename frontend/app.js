// The dashboard: sign-in, a hash router, and the four views (jobs, new job, job page, compare).
import { api, loadWords, signIn, signOut, token } from "./api.js";
import { el } from "./dom.js";
import { comparePage } from "./views/compare.js";
import { datasetsPage } from "./views/datasets.js";
import { logPage } from "./views/job_files.js";
import { jobPage } from "./views/job.js";
import { jobsPage } from "./views/jobs.js";
import { newJobPage } from "./views/new.js";
import { playgroundPage } from "./views/playground.js";
import { sweepsPage } from "./views/sweeps.js";
import { usagePage } from "./views/usage.js";
import { workersPage } from "./views/workers.js";

const view = document.getElementById("view");
let cleanup = () => {};

async function start() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("token");
  if (fromUrl) {
    history.replaceState(null, "", location.pathname + (location.hash || "#/jobs"));  // keep it out of history
    try {
      await signIn(fromUrl);
    } catch (err) {
      return showSignIn(`The token in the link was refused (${err.message}).`);
    }
  }
  if (!token()) return showSignIn("");
  try {
    const me = await api("/v1/session", { method: "POST" });
    showOwner(me.owner);
    await loadWords();
  } catch {
    return showSignIn("Your session has expired: sign in again.");
  }
  watchDemo();
  window.addEventListener("hashchange", route);
  route();
}

function showOwner(owner) {
  const who = document.getElementById("who");
  who.replaceChildren(el("span", { class: "muted" }, `signed in as ${owner}`), " ",
    el("button", { class: "link", onclick: async () => { await signOut(); location.reload(); } }, "sign out"));
}

// While `mol up` builds the demo model in the background, a banner shows GET /v1/demo's progress and ETA; when
// it turns ready, an open New job form (which could not offer it) is drawn again.
async function watchDemo(wasBuilding = false) {
  const banner = document.getElementById("demo-banner");
  let demo;
  try {
    demo = await api("/v1/demo");
  } catch {
    return setTimeout(() => watchDemo(wasBuilding), 10000);
  }
  const building = demo.state === "building";
  banner.hidden = !building && !(wasBuilding && demo.state === "ready") && demo.state !== "failed";
  banner.textContent = demo.message;
  if (building) return setTimeout(() => watchDemo(true), 3000);
  if (wasBuilding && demo.state === "ready") {
    if (location.hash.startsWith("#/new")) route();
    setTimeout(() => { banner.hidden = true; }, 8000);
  }
}

function showSignIn(message) {
  const form = document.getElementById("signin").content.cloneNode(true);
  view.replaceChildren(form);
  const error = document.getElementById("signin-error");
  error.textContent = message;
  document.getElementById("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await signIn(new FormData(e.target).get("token").trim());
      location.hash = "#/jobs";
      location.reload();
    } catch (err) {
      error.textContent = err.status === 401 ? "This token is not valid on this server." : err.message;
    }
  });
}

function route() {
  cleanup();
  cleanup = () => {};
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const parts = path.split("/").filter(Boolean);
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === parts[0]));
  const pages = {
    jobs: () => jobsPage(view),
    new: () => newJobPage(view, new URLSearchParams(query).get("from")),
    job: () => jobPage(view, parts[1]),
    compare: () => comparePage(view, new URLSearchParams(query).get("ids")?.split(",").filter(Boolean) ?? []),
    playground: () => playgroundPage(view, new URLSearchParams(query).get("model")),
    datasets: () => datasetsPage(view),
    sweeps: () => sweepsPage(view),
    workers: () => workersPage(view),
    usage: () => usagePage(view),
    log: () => logPage(view, parts[1]),
  };
  const page = pages[parts[0]] ?? pages.jobs;
  Promise.resolve(page()).then((stop) => { cleanup = stop ?? (() => {}); }).catch((err) => {
    view.replaceChildren(el("section", { class: "card" }, el("h1", {}, "Something went wrong"),
      el("p", { class: "error" }, err.message), el("p", {}, el("a", { href: "#/jobs" }, "Back to the jobs"))));
  });
}

start();
