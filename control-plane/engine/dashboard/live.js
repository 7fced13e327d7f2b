// live.js — keeps the current page fresh: the /api/v1/events stream plus a 15 s poll.
//
// Rules this module keeps:
// - One EventSource at a time (cookie auth, same origin). `change` and `activity` events only
//   say "something moved": the page re-fetches through the normal routes (debounced 300 ms).
// - The stream ends by design after 5 minutes: EventSource reconnects by itself; when it gives
//   up (the server refused it), we ask /api/v1/me — a 401 there means the session ended and
//   api.js sends the page to sign-in — else we reconnect with a growing backoff (1 s … 30 s).
// - A 15 s poll is the fallback when events do not arrive; it skips hidden tabs.
// - The indicator ([data-testid=live-status], aria-live=polite) says "Live" or "Reconnecting…".

import { get } from "./api.js";

const DEBOUNCE_MS = 300;
const POLL_MS = 15000;

let source = null;
let refreshCallback = () => {};
let indicator = null;
let debounceTimer = null;
let pollTimer = null;
let retryTimer = null;
let retryDelay = 1000;
let running = false;

/** Starts the stream; `onRefresh` is called (debounced) whenever data may have changed. */
export function startLive(statusElement, onRefresh) {
  indicator = statusElement;
  refreshCallback = onRefresh;
  if (running) return;
  running = true;
  connect();
  pollTimer = setInterval(() => {
    if (document.visibilityState === "visible") refreshCallback("poll");
  }, POLL_MS);
}

export function stopLive() {
  running = false;
  clearTimeout(debounceTimer);
  clearTimeout(retryTimer);
  clearInterval(pollTimer);
  if (source) source.close();
  source = null;
}

function setIndicator(state) {
  if (!indicator) return;
  const text = state === "live" ? "Live" : state === "connecting" ? "Connecting…" : "Reconnecting…";
  if (indicator.dataset.state !== state) {
    indicator.dataset.state = state;
    indicator.querySelector(".live-text").textContent = text;
  }
}

function connect() {
  if (!running) return;
  setIndicator(source ? "reconnecting" : "connecting");
  source = new EventSource("/api/v1/events", { withCredentials: true });
  source.addEventListener("open", () => {
    retryDelay = 1000;
    setIndicator("live");
  });
  const changed = () => scheduleRefresh();
  source.addEventListener("change", changed);
  source.addEventListener("activity", changed);
  source.addEventListener("error", () => {
    setIndicator("reconnecting");
    if (source && source.readyState === EventSource.CLOSED) {
      // The browser gave up (a non-200 answer): find out whether the session ended.
      source = null;
      get("/me").then(() => {
        retryTimer = setTimeout(connect, retryDelay);
        retryDelay = Math.min(30000, retryDelay * 2);
      }).catch(() => {
        // 401 → api.js navigates to sign-in (which stops us); other errors: retry later.
        retryTimer = setTimeout(connect, retryDelay);
        retryDelay = Math.min(30000, retryDelay * 2);
      });
    }
  });
}

/** Debounces refreshes (a burst of events makes one re-fetch). */
export function scheduleRefresh() {
  clearTimeout(debounceTimer);
  debounceTimer = setTimeout(() => refreshCallback("event"), DEBOUNCE_MS);
}
