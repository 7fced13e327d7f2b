// api.js — the one way the dashboard talks to the admin API (/api/v1, same origin).
//
// Rules this module keeps:
// - The session is the HttpOnly cookie; every non-GET request carries X-CSRF-Token (read from
//   the codexmesh_csrf cookie) and, with a body, Content-Type: application/json.
// - Every failure becomes an ApiError {status, kind, message, field?}: the server's error body
//   when there is one, else a plain description (network errors have status 0).
// - A 401 on any call but sign-in means the session ended: the page goes to sign-in with
//   ?next= pointing back here (onUnauthenticated, set by app.js).
// - Path segments are always encoded (encodeURIComponent); query strings go through
//   URLSearchParams.

export class ApiError extends Error {
  constructor({ status, kind, message, field = null }) {
    super(message);
    this.status = status;
    this.kind = kind;
    this.field = field;
  }
}

let unauthenticatedHandler = () => {};

/** Called by app.js: what to do when a call answers 401. */
export function onUnauthenticated(handler) {
  unauthenticatedHandler = handler;
}

export function csrfToken() {
  for (const pair of document.cookie.split(";")) {
    const [name, ...rest] = pair.trim().split("=");
    if (name === "codexmesh_csrf") return decodeURIComponent(rest.join("="));
  }
  return "";
}

/** `path` template helper: p`/pools/${name}/keys` encodes every interpolated segment. */
export function p(strings, ...values) {
  return strings.reduce((out, s, i) => out + s + (i < values.length ? encodeURIComponent(String(values[i])) : ""), "");
}

/** Adds a query string (skipping empty values). */
export function withQuery(path, params = {}) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") query.set(k, String(v));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * Calls /api/v1{path}. Options: method, body (object → JSON, string → sent as is, JSON type),
 * allow401 (sign-in: do not redirect). Returns the parsed JSON (or null for 204).
 */
export async function request(path, { method = "GET", body, allow401 = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = typeof body === "string" ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/api/v1${path}`, { method, headers, body: payload, credentials: "same-origin", signal });
  } catch (e) {
    if (e?.name === "AbortError") throw e;
    throw new ApiError({ status: 0, kind: "network", message: "Cannot reach the control plane (network error). Check the connection and try again." });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const detail = data && data.error ? data.error : null;
    const error = new ApiError({
      status: response.status,
      kind: detail?.kind || (response.status === 404 ? "not_found" : "http"),
      message: detail?.message || `The control plane answered ${response.status} ${response.statusText}.`,
      field: detail?.field || null,
    });
    if (response.status === 401 && !allow401) unauthenticatedHandler(error);
    throw error;
  }
  return data;
}

export const get = (path, options) => request(path, options);
export const post = (path, body, options = {}) => request(path, { ...options, method: "POST", body });
export const put = (path, body, options = {}) => request(path, { ...options, method: "PUT", body });
export const patch = (path, body, options = {}) => request(path, { ...options, method: "PATCH", body });
export const del = (path, options = {}) => request(path, { ...options, method: "DELETE" });

/** GET that answers `fallback` instead of failing on 404 (routes the server may not have yet). */
export async function getOptional(path, fallback = null) {
  try {
    return await get(path);
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return fallback;
    throw e;
  }
}
