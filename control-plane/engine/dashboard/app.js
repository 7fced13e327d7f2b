// app.js — the shell and the router of the codexmesh dashboard.
//
// Rules this module keeps:
// - Routes are client-side under /ui/ (the server answers index.html for every /ui/ path):
//   same-origin link clicks become history.pushState, popstate re-routes, each page sets the
//   document title.
// - Who is signed in comes from GET /api/v1/me; a 401 anywhere goes to /ui/sign-in?next=…;
//   a session that may only set up TOTP sees only the TOTP page.
// - A page module exports {name, title, load(ctx), render(ctx, data, {first})}: load fetches
//   (in parallel), render builds or updates the DOM. The page root is
//   <section data-page=NAME data-renders=N data-ready> (the browser tests' hooks).
// - Live refreshes (events, 15 s poll) re-run load+render in place, keeping focus and the
//   horizontal scroll of tables; pages leave forms with unsaved input alone.
// - Viewers get no write controls: ctx.canWrite is false and pages render none.

import { get, del, onUnauthenticated, ApiError } from "./api.js";
import { startLive, stopLive } from "./live.js";
import { h, tickCountdowns, showError, statusArea } from "./ui.js";

import signIn from "./pages/signin.js";
import totpSetup from "./pages/totp.js";
import overview from "./pages/overview.js";
import pool from "./pages/pool.js";
import accounts from "./pages/accounts.js";
import keys from "./pages/keys.js";
import setup from "./pages/setup.js";
import envoys from "./pages/envoys.js";
import requests from "./pages/requests.js";
import audit from "./pages/audit.js";
import notFound from "./pages/notfound.js";
import alertsPage from "./pages/alerts.js";
import invites from "./pages/invites.js";

const ROUTES = [
  { pattern: /^\/ui\/?$/, page: overview },
  { pattern: /^\/ui\/sign-in\/?$/, page: signIn, open: true },
  { pattern: /^\/ui\/pools\/([^/]+)\/?$/, page: pool, keys: ["pool"] },
  { pattern: /^\/ui\/accounts\/?$/, page: accounts },
  { pattern: /^\/ui\/keys\/?$/, page: keys },
  { pattern: /^\/ui\/setup\/?$/, page: setup },
  { pattern: /^\/ui\/envoys\/?$/, page: envoys },
  { pattern: /^\/ui\/requests\/?$/, page: requests },
  { pattern: /^\/ui\/audit\/?$/, page: audit },
  { pattern: /^\/ui\/alerts\/?$/, page: alertsPage },
  { pattern: /^\/ui\/invites\/?$/, page: invites },
];

const NAV = [
  ["Overview", "/ui/"],
  ["Accounts", "/ui/accounts"],
  ["Keys", "/ui/keys"],
  ["Envoys", "/ui/envoys"],
  ["Requests", "/ui/requests"],
  ["Audit", "/ui/audit"],
  ["Setup", "/ui/setup"],
  ["Alerts", "/ui/alerts"],
  ["Invites", "/ui/invites"],
];

const main = document.getElementById("main");
const header = document.getElementById("app-header");

const state = {
  me: null,
  current: null, // {page, ctx}
  generation: 0,
  refreshing: null,
  refreshAgain: false,
};

// ---------------------------------------------------------------------------------------------
// Navigation

export function navigate(url, { replace = false, focus = true } = {}) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route({ focus });
}

function currentPath() {
  return location.pathname + location.search;
}

function goToSignIn() {
  if (location.pathname.startsWith("/ui/sign-in")) return;
  stopLive();
  state.me = null;
  const next = currentPath();
  navigate(`/ui/sign-in?next=${encodeURIComponent(next)}`, { replace: true });
}

onUnauthenticated(() => goToSignIn());

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest("a[href]");
  if (!link || link.target || link.hasAttribute("download")) return;
  const raw = link.getAttribute("href");
  if (raw.startsWith("#")) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui/") || url.pathname.startsWith("/ui/assets/")) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", () => route({ focus: false }));

// ---------------------------------------------------------------------------------------------
// Shell

function renderShell() {
  const me = state.me;
  if (!me) {
    header.replaceChildren(h("div", { class: "header-inner" }, h("span", { class: "brand", text: "codexmesh" })));
    return;
  }
  const name = me.operator?.name || me.actor;
  const live = h("span", { class: "live-status", "data-testid": "live-status", "data-state": "connecting", "aria-live": "polite" },
    h("span", { class: "live-dot", "aria-hidden": "true" }), h("span", { class: "live-text", text: "Connecting…" }));
  const signOut = h("button", { type: "button", class: "button button-small", "data-testid": "sign-out", text: "Sign out", on: { click: signOutNow } });
  const nav = h("nav", { class: "main-nav", "aria-label": "Main" },
    h("ul", {}, NAV.map(([label, href]) => h("li", {}, h("a", { href, text: label })))));
  header.replaceChildren(h("div", { class: "header-inner" },
    h("a", { class: "brand", href: "/ui/", text: "codexmesh" }),
    nav,
    h("div", { class: "session" }, live,
      h("span", { class: "whoami", "data-testid": "whoami", text: `${name} (${me.role})` }),
      signOut)));
  if (!me.totp_setup_only) startLive(live, () => refreshCurrent());
}

function markCurrentNav() {
  for (const link of header.querySelectorAll(".main-nav a")) {
    const href = link.getAttribute("href");
    const here = href === "/ui/" ? location.pathname === "/ui/" || location.pathname.startsWith("/ui/pools/") : location.pathname.startsWith(href);
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function signOutNow() {
  try {
    await del("/session", { allow401: true });
  } catch {
    // Signed out either way: the cookie is gone or was already.
  }
  stopLive();
  state.me = null;
  renderShell();
  navigate("/ui/sign-in", { replace: true });
}

/** Re-reads who is signed in (after sign-in) and rebuilds the shell. */
export async function reloadIdentity() {
  state.me = await get("/me");
  renderShell();
  return state.me;
}

// ---------------------------------------------------------------------------------------------
// Pages

function match(pathname) {
  for (const r of ROUTES) {
    const m = pathname.match(r.pattern);
    if (m) {
      const params = {};
      (r.keys || []).forEach((k, i) => { params[k] = decodeURIComponent(m[i + 1]); });
      return { route: r, params };
    }
  }
  return { route: { page: notFound }, params: {} };
}

async function route({ focus = false } = {}) {
  const generation = ++state.generation;
  const { route: r, params } = match(location.pathname);
  if (r.page === signIn) {
    if (state.me && !state.me.totp_setup_only) {
      navigate(safeNext(new URLSearchParams(location.search).get("next")), { replace: true });
      return;
    }
    stopLive();
    state.me = null;
    renderShell();
    return mount(signIn, {}, generation, focus);
  }
  if (!state.me) {
    try {
      state.me = await get("/me", { allow401: true });
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return goToSignIn();
      return mountError(e, generation);
    }
    if (generation !== state.generation) return;
    renderShell();
  }
  if (state.me.totp_setup_only) return mount(totpSetup, {}, generation, focus);
  markCurrentNav();
  return mount(r.page, params, generation, focus);
}

/** Only same-app paths are followed after sign-in. */
export function safeNext(next) {
  if (typeof next === "string" && next.startsWith("/ui/") && !next.startsWith("//") && !next.startsWith("/ui/sign-in")) return next;
  return "/ui/";
}

function makeContext(page, params, root) {
  const me = state.me;
  return {
    root,
    params,
    me,
    canWrite: Boolean(me && (me.role === "owner" || me.role === "admin")),
    query: new URLSearchParams(location.search),
    navigate,
    refresh: () => refreshCurrent(),
    reloadIdentity,
    safeNext,
    setTitle: (text) => { document.title = `${text} · codexmesh`; },
    showNotFound: (title, message) => showNotFoundPage(title, message),
    rendered: () => {
      root.dataset.renders = String(Number(root.dataset.renders || 0) + 1);
      root.setAttribute("data-ready", "true");
    },
  };
}

async function mount(page, params, generation, focus) {
  const root = h("section", { "data-page": page.name, "data-renders": "0", class: `page page-${page.name}` });
  const ctx = makeContext(page, params, root);
  state.current = { page, ctx };
  ctx.setTitle(typeof page.title === "function" ? page.title(ctx) : page.title);
  main.replaceChildren(root);
  if (focus) window.scrollTo(0, 0);
  try {
    const data = await page.load(ctx);
    if (generation !== state.generation || state.current?.ctx !== ctx) return;
    page.render(ctx, data, { first: true });
    ctx.rendered();
  } catch (e) {
    if (generation !== state.generation) return;
    if (e instanceof ApiError && e.status === 401) return;
    if (page.notFound && e instanceof ApiError && (e.status === 404 || e.status === 403)) {
      return showNotFoundPage(page.notFound.title, page.notFound.message(ctx));
    }
    renderLoadError(ctx, e);
  }
  if (focus) {
    const heading = root.querySelector("h1");
    if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus({ preventScroll: true }); }
  }
}

function renderLoadError(ctx, error) {
  const area = statusArea();
  const retry = h("button", { type: "button", class: "button", text: "Try again", on: { click: () => route({ focus: false }) } });
  ctx.root.replaceChildren(h("h1", { text: document.title.split(" · ")[0] }), area, retry);
  showError(area, error);
  ctx.rendered();
}

function mountError(error, generation) {
  const root = h("section", { "data-page": "error", class: "page" });
  main.replaceChildren(root);
  const area = statusArea();
  root.append(h("h1", { text: "The dashboard cannot load" }), area,
    h("button", { type: "button", class: "button", text: "Try again", on: { click: () => route() } }));
  showError(area, error);
  void generation;
}

function showNotFoundPage(title, message) {
  const root = h("section", { "data-page": "not-found", "data-renders": "0", class: "page page-not-found" });
  const ctx = makeContext(notFound, { title, message }, root);
  state.current = { page: notFound, ctx };
  main.replaceChildren(root);
  notFound.render(ctx, null, { first: true });
  ctx.setTitle(title || "Not found");
  ctx.rendered();
}

/** Re-fetches and re-renders the current page in place (events, poll, after a change). */
export async function refreshCurrent() {
  const current = state.current;
  if (!current || !current.page.load || current.page.static) return;
  if (state.refreshing) { state.refreshAgain = true; return state.refreshing; }
  const run = async () => {
    do {
      state.refreshAgain = false;
      const { page, ctx } = current;
      if (!ctx.root.hasAttribute("data-ready")) return;
      let data;
      try {
        data = await page.load(ctx);
      } catch (e) {
        if (e instanceof ApiError && (e.status === 404 || e.status === 403) && page.notFound) {
          if (state.current === current) showNotFoundPage(page.notFound.title, page.notFound.message(ctx));
        }
        return; // A failed background refresh keeps what is shown.
      }
      if (state.current !== current) return;
      keepingFocus(ctx.root, () => page.render(ctx, data, { first: false }));
      ctx.rendered();
    } while (state.refreshAgain && state.current === current);
  };
  // .finally runs after the assignment even when run() finishes without awaiting.
  state.refreshing = run().finally(() => {
    state.refreshing = null;
    // Asked for while another page's refresh was running: refresh the page shown now.
    if (state.refreshAgain && state.current !== current) { state.refreshAgain = false; refreshCurrent(); }
  });
  return state.refreshing;
}

// ---------------------------------------------------------------------------------------------
// Focus and scroll preservation across re-renders

const ROW_KEYS = ["account", "key", "node", "request", "audit", "pool", "window", "tool"];

function focusKey(element, root) {
  if (!element || element === document.body || !root.contains(element)) return null;
  const parts = [element.tagName, element.id || "", element.getAttribute("name") || "", element.dataset.testid || "", element.textContent.trim().slice(0, 40)];
  for (let node = element.parentElement; node && node !== root; node = node.parentElement) {
    for (const k of ROW_KEYS) if (node.dataset && node.dataset[k] !== undefined) parts.push(`${k}=${node.dataset[k]}`);
  }
  return parts.join("|");
}

function keepingFocus(root, render) {
  const active = document.activeElement;
  const key = focusKey(active, root);
  const scrolls = [...root.querySelectorAll(".table-scroll")].map((e) => e.scrollLeft);
  const windowScroll = window.scrollY;
  render();
  [...root.querySelectorAll(".table-scroll")].forEach((e, i) => { if (scrolls[i]) e.scrollLeft = scrolls[i]; });
  if (key && !root.contains(active)) {
    const candidate = [...root.querySelectorAll(active.tagName)].find((e) => focusKey(e, root) === key);
    if (candidate) candidate.focus({ preventScroll: true });
  }
  if (Math.abs(window.scrollY - windowScroll) > 1) window.scrollTo(window.scrollX, windowScroll);
}

// ---------------------------------------------------------------------------------------------
// Boot

setInterval(tickCountdowns, 1000);
route({ focus: false });
