// pages/filters.js — the filter form shared by the Requests and Audit pages.
//
// Rules this module keeps: a filter form (data-filter) reflects its values in the page URL
// (submitting navigates, so Back works); empty values are left out; paging ("before") is
// dropped when the filters change; "Older" appears only when the page came back full.

import { h, field } from "../ui.js";
import { withQuery } from "../api.js";

/**
 * `fields`: [{name, label, type: "text"|"number"|"select", options?: [[value, label]], hint?}].
 * Returns the form; on submit it navigates to `basePath` with the values.
 */
export function filterForm(ctx, basePath, fields) {
  const controls = fields.map((f) => {
    const value = ctx.query.get(f.name) || "";
    const control = f.type === "select"
      ? h("select", { name: f.name }, f.options.map(([v, label]) => h("option", { value: v, text: label, selected: v === value })))
      : h("input", { name: f.name, type: f.type || "text", value, autocomplete: "off", spellcheck: "false", min: f.type === "number" ? "1" : null, placeholder: f.placeholder });
    return [f, control];
  });
  const submit = h("button", { type: "submit", class: "button button-primary", text: "Apply" });
  const clear = h("a", { class: "button", href: basePath, text: "Clear" });
  const form = h("form", { class: "card filters", "data-testid": "filters", "data-filter": "", "aria-label": "Filters" },
    h("div", { class: "form-grid form-grid-tight" }, controls.map(([f, control]) => field(f.label, control, f.hint))),
    h("div", { class: "actions" }, submit, clear));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = {};
    for (const [f, control] of controls) params[f.name] = control.value.trim();
    ctx.navigate(withQuery(basePath, params));
  });
  return form;
}

/** The current page's query with one value replaced (paging links). */
export function pageLink(basePath, query, changes) {
  const params = Object.fromEntries(query.entries());
  Object.assign(params, changes);
  return withQuery(basePath, params);
}

/**
 * The paging links of a log page newest first: "Newest" when paged back, "Older" (rows before
 * the last one shown) when the page holds `limit` rows.
 */
export function pagingLinks(basePath, query, rows, limit) {
  const links = [];
  if (query.get("before")) links.push(h("a", { class: "button", href: pageLink(basePath, query, { before: "" }), text: "Newest" }));
  if (rows.length >= limit && rows.length > 0) {
    links.push(h("a", { class: "button", href: pageLink(basePath, query, { before: rows[rows.length - 1].id }), "data-testid": "older", text: "Older" }));
  }
  return links;
}
