// The zns-gate dashboard: reads the /v1 API (scope `read`) and draws what it answers.
//
// Two views, chosen by the address's hash: `#/` lists every OA, `#/oa/<oa_id>` shows one.
// Everything is built with DOM calls (text is never parsed as HTML) and the charts are
// inline SVG, so the page runs under `Content-Security-Policy: default-src 'self'`.
// With API tokens configured the server answers 401; the page then asks for a token and
// keeps it in sessionStorage: this tab only, gone when the tab closes.
"use strict";

const TOKEN_KEY = "zns-gate-token";
const SVG = "http://www.w3.org/2000/svg";
const LEVELS = ["UNDEFINED", "LOW", "MEDIUM", "HIGH"];
const TOKEN_LOOKUPS = 100;

// --- the API -------------------------------------------------------------------------------

class Unauthenticated extends Error {}

/** An error answer of the API, with its machine-readable code. */
class ApiError extends Error {
  constructor(path, status, body) {
    const code = body && body.error ? body.error.code : `http_${status}`;
    super(`${path} answered ${status} ${code}${body && body.error ? `: ${body.error.message}` : ""}`);
    this.code = code;
  }
}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401 || response.status === 403) {
    throw new Unauthenticated(response.status === 403 ? "the token lacks the read scope" : "");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(path, response.status, body);
  return body;
}

/** The OA's Zalo token state: null when the service does not connect to Zalo
 * (`zalo_disabled`), undefined when it could not be read now. */
async function tokenState(oaId) {
  try {
    return await api(oaPath(oaId, "zalo/token"));
  } catch (error) {
    if (error instanceof Unauthenticated) throw error;
    return error.code === "zalo_disabled" ? null : undefined;
  }
}

const oaPath = (oaId, what) => `/v1/oas/${encodeURIComponent(oaId)}/${what}`;

// --- building the page ---------------------------------------------------------------------

/** An element with attributes and children (strings become text nodes). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  node.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

const number = (value) => (value === null || value === undefined ? "unlimited" : value.toLocaleString("en"));
const when = (iso) => (iso ? new Date(iso).toLocaleString("en-GB", { hour12: false }) : "—");
const level = (value) => el("span", { class: `level level-${(value || "UNDEFINED").toLowerCase()}` }, value || "—");

function panel(title, id, ...content) {
  return el("section", { class: "panel", id }, el("h2", {}, title), ...content);
}

function table(headings, rows, className = "") {
  return el(
    "table",
    { class: className },
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))),
  );
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.map(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

function show(...nodes) {
  document.getElementById("view").replaceChildren(...nodes);
}

function status(text, isError = false) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.classList.toggle("error", isError);
}

// --- the list of OAs -----------------------------------------------------------------------

function tokenCell(token) {
  if (token === undefined) return el("span", { class: "muted" }, "—");
  if (token === null) return el("span", { class: "muted" }, "off");
  return el("span", { class: `token token-${token.state}` }, token.state);
}

function negativesCell(oa) {
  const limit = oa.penalty_threshold_today;
  const text = limit === null ? `${oa.negatives_today} / none` : `${oa.negatives_today} / ${limit}`;
  const near = limit !== null && oa.negatives_today * 2 >= limit;
  return el("span", { class: near ? "warn" : "" }, text);
}

/** Each OA's token state (one request an OA, for the first TOKEN_LOOKUPS OAs); none at all
 * when the first answer says the service does not connect to Zalo (`zalo_disabled`). */
async function tokenStates(oas) {
  if (!oas.length) return [];
  const first = await tokenState(oas[0].oa_id);
  if (first === null) return oas.map(() => null);
  const rest = await Promise.all(oas.slice(1, TOKEN_LOOKUPS).map((oa) => tokenState(oa.oa_id)));
  return [first, ...rest];
}

async function listView(current) {
  const listing = await api("/v1/oas");
  const tokens = await tokenStates(listing.oas);
  const rows = listing.oas.map((oa, i) => [
    el("a", { href: `#/oa/${encodeURIComponent(oa.oa_id)}`, class: "oa-link" }, oa.oa_id),
    number(oa.daily_quota),
    number(oa.remaining_today),
    [level(oa.quality_48h), " ", level(oa.quality_7d)],
    negativesCell(oa),
    tokenCell(tokens[i]),
    oa.suspended ? el("span", { class: "bad" }, "suspended") : "",
  ]);
  const unreachable = listing.unreachable.length
    ? el("p", { class: "error" }, `Not answering: ${listing.unreachable.join(", ")}`)
    : null;
  if (!current()) return; // the operator has gone elsewhere meanwhile
  show(
    panel(
      `OAs (${listing.oas.length})`,
      "oas",
      unreachable,
      listing.oas.length
        ? table(
            ["OA", "Tier (daily quota)", "Remaining today", "Quality 48h / 7d", "Negatives / T", "Token", ""],
            rows,
            "oa-list",
          )
        : el("p", { class: "muted" }, "No OA has been seen yet."),
    ),
  );
  status(`Partitions ${listing.partitions.join(", ") || "none"} · ${new Date().toLocaleTimeString("en-GB")}`);
}

// --- one OA --------------------------------------------------------------------------------

const CHART = { width: 720, height: 220, left: 44, right: 12, top: 14, bottom: 28 };

/** Delivered (bars) and negatives (line) per hour, 7 days; Zalo's levels as a strip. */
function historyChart(history) {
  const { width, height, left, right, top, bottom } = CHART;
  const hours = history.hours;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const most = Math.max(1, ...hours.map((h) => Math.max(h.delivered, h.negatives)));
  const x = (i) => left + (i * plotWidth) / hours.length;
  const y = (value) => top + plotHeight - (value * plotHeight) / most;
  const barWidth = Math.max(1, plotWidth / hours.length - 0.5);
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": "Delivered and negatives per hour, last 7 days",
  });
  chart.append(svg("line", { x1: left, x2: width - right, y1: y(0), y2: y(0), class: "axis" }));
  chart.append(svg("text", { x: left - 6, y: y(most) + 4, class: "tick", "text-anchor": "end" }, String(most)));
  chart.append(svg("text", { x: left - 6, y: y(0), class: "tick", "text-anchor": "end" }, "0"));
  hours.forEach((hour, i) => {
    if (hour.delivered > 0) {
      const bar = svg("rect", {
        x: x(i), y: y(hour.delivered), width: barWidth, height: y(0) - y(hour.delivered),
        class: "delivered", "data-hour": hour.at, "data-delivered": hour.delivered,
      });
      bar.append(svg("title", {}, `${when(hour.at)}: ${hour.delivered} delivered, ${hour.negatives} negatives`));
      chart.append(bar);
    }
    if (new Date(hour.at).getHours() === 0) {
      chart.append(svg("text", { x: x(i), y: height - 8, class: "tick" }, new Date(hour.at).toLocaleDateString("en-GB", { day: "2-digit", month: "short" })));
    }
  });
  const points = hours.map((h, i) => `${(x(i) + barWidth / 2).toFixed(1)},${y(h.negatives).toFixed(1)}`);
  chart.append(svg("polyline", { points: points.join(" "), class: "negatives" }));
  hours.forEach((h, i) => {
    if (h.negatives > 0) {
      chart.append(svg("circle", { cx: x(i) + barWidth / 2, cy: y(h.negatives), r: 2.5, class: "negative-point", "data-negatives": h.negatives }));
    }
  });
  return chart;
}

/** Zalo's two levels as they are now, on the same scale as the proxy's. */
function levelsStrip(history, quality) {
  const rows = [
    ["Zalo 48h", history.zalo.quality_48h],
    ["Zalo 7d", history.zalo.quality_7d],
    ["Proxy 48h", quality.proxy.quality_48h],
    ["Proxy 7d", quality.proxy.quality_7d],
  ];
  const left = 80;
  const full = CHART.width - left - CHART.right;
  const strip = svg("svg", { viewBox: `0 0 ${CHART.width} ${rows.length * 18 + 4}`, class: "levels", role: "img", "aria-label": "Quality levels" });
  rows.forEach(([name, value], row) => {
    // The bar's length is the level's rank: UNDEFINED a quarter, HIGH the whole width.
    const rank = Math.max(0, LEVELS.indexOf(value || "UNDEFINED"));
    const y = 2 + row * 18;
    strip.append(svg("text", { x: left - 6, y: y + 11, class: "tick", "text-anchor": "end" }, name));
    strip.append(svg("rect", { x: left, y, width: (full * (rank + 1)) / 4, height: 14, class: `bar-${(value || "UNDEFINED").toLowerCase()}` }));
    strip.append(svg("text", { x: left + 6, y: y + 11, class: "bar-label" }, value || "not read"));
  });
  return strip;
}

function decisionRows(decisions) {
  return decisions.map((d) => [when(d.at), d.kind, d.template_id || "", d.explanation]);
}

function tierPanel(quota, tierDecisions) {
  const rows = tierDecisions.map((d) => [when(d.at), `${number(d.before)} → ${number(d.after)}`, d.explanation]);
  return panel(
    "Tier",
    "tier",
    facts([
      ["Daily quota", el("strong", { class: "daily-quota" }, number(quota.daily_quota))],
      ["Remaining today", number(quota.remaining_today)],
      ["Resets at", when(quota.resets_at)],
      ["Tier changed", when(quota.tier_changed_at)],
      ["Allowed tags", quota.allowed_tags.join(", ") || "none"],
      ["Promotion this month", `${number(quota.promotion.remaining_month)} of ${number(quota.promotion.monthly_quota)}`],
    ]),
    el("h3", {}, "History"),
    rows.length ? table(["When", "Daily quota", "Why"], rows, "tier-history") : el("p", { class: "muted" }, "No change of tier recorded."),
  );
}

function forecastPanel(quality) {
  const ahead = quality.forecast;
  return panel(
    "Forecast",
    "forecast",
    facts([
      ["Next evaluation", when(ahead.next_evaluation_at)],
      ["Projected daily quota", el("strong", { class: "projected" }, number(ahead.projected_daily_quota))],
      ["Negatives today / T", `${ahead.negatives_today} / ${quality.thresholds.penalty_threshold_today ?? "none"}`],
      ["Negatives before the penalty", ahead.negatives_before_penalty ?? "no limit"],
      ["Quality (effective) 48h / 7d", [level(quality.quality_48h), " ", level(quality.quality_7d)]],
      ["Tier judged on", quality.tier_basis],
    ]),
    el("ul", { class: "explanation" }, quality.explanation.map((line) => el("li", {}, line))),
  );
}

function limitsPanel(quota) {
  const rows = quota.penalties.map((p) => [p.kind, p.template_id || (p.tag ? `tag ${p.tag}` : ""), p.reason || "", p.until ? `until ${when(p.until)}` : p.remaining !== undefined ? `remaining ${number(p.remaining)}` : ""]);
  return panel(
    "Governor: limits and pauses",
    "limits",
    facts(Object.entries(quota.by_tag).map(([tag, left]) => [`Tag ${tag} may still get`, number(left)])),
    rows.length ? table(["Kind", "On", "Reason", ""], rows, "penalties") : el("p", { class: "muted" }, "No limit or pause in force."),
  );
}

function templatesPanel(templates) {
  const rows = templates.map((t) => [
    t.template_id, t.tag ?? "?", t.status || "unknown", level(t.zalo_quality), level(t.proxy_quality_7d),
    t.disabled_by_gate ? "disabled" : t.paused ? `paused until ${when(t.paused_until)}` : "sendable",
    `${t.counts.negatives_7d} / ${t.counts.delivered_7d}`,
  ]);
  return panel(
    "Templates",
    "templates",
    rows.length ? table(["Template", "Tag", "Status", "Zalo quality", "Proxy 7d", "Pause", "Negatives / delivered 7d"], rows) : el("p", { class: "muted" }, "No template seen yet."),
  );
}

async function oaView(oaId, current) {
  document.getElementById("where").textContent = oaId;
  const [quota, quality, history, templates, decisions, tiers, token] = await Promise.all([
    api(oaPath(oaId, "quota")),
    api(oaPath(oaId, "quality")),
    api(oaPath(oaId, "history")),
    api(oaPath(oaId, "templates")),
    api(`${oaPath(oaId, "decisions")}?limit=30`),
    api(`${oaPath(oaId, "decisions")}?kind=tier,penalty&limit=50`),
    tokenState(oaId),
  ]);
  if (!current()) return; // the operator has gone elsewhere meanwhile
  show(
    el("p", {}, el("a", { href: "#/" }, "← every OA")),
    el("h1", {}, `OA ${oaId}`, " ", quota.suspended ? el("span", { class: "bad" }, "suspended") : "", " ", tokenCell(token)),
    el("div", { class: "grid" }, tierPanel(quota, tiers.decisions), forecastPanel(quality)),
    panel("Last 7 days, per hour", "history", historyChart(history), el("p", { class: "legend" }, el("span", { class: "key-delivered" }, "delivered"), " ", el("span", { class: "key-negatives" }, "negatives"), ` · Zalo's levels read ${when(history.zalo.as_of)}`), levelsStrip(history, quality)),
    el("div", { class: "grid" }, limitsPanel(quota), templatesPanel(templates.templates)),
    panel(
      "Last decisions",
      "decisions",
      decisions.decisions.length ? table(["When", "Kind", "Template", "Explanation"], decisionRows(decisions.decisions), "decision-list") : el("p", { class: "muted" }, "No decision yet."),
    ),
  );
  status(`Read ${new Date().toLocaleTimeString("en-GB")}`);
}

// --- routing and the token prompt ----------------------------------------------------------

function askForToken(message) {
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("view").replaceChildren();
  const error = document.getElementById("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  document.getElementById("token").focus();
  status("");
}

let routes = 0;
/** Each hash change starts a view; a slower earlier one must not draw over a later one. */
async function route() {
  const mine = ++routes;
  const current = () => mine === routes;
  document.getElementById("login").hidden = true;
  document.getElementById("forget").hidden = !sessionStorage.getItem(TOKEN_KEY);
  document.getElementById("where").textContent = "";
  const match = location.hash.match(/^#\/oa\/(.+)$/);
  status("Loading…");
  try {
    if (match) await oaView(decodeURIComponent(match[1]), current);
    else await listView(current);
  } catch (error) {
    if (error instanceof Unauthenticated) {
      const had = sessionStorage.getItem(TOKEN_KEY);
      askForToken(error.message || (had ? "That token was refused." : ""));
    } else {
      status(String(error.message || error), true);
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    document.getElementById("token").value = "";
    route();
  });
  document.getElementById("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
