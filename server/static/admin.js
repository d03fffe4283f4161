// The admin area. Signing in with an admin API key buys an HttpOnly session cookie; every admin call then goes
// WITHOUT the x-api-key header (so the cookie is what authenticates) and state-changing ones echo the CSRF
// token the login returned. Destructive actions (disable, new key, deducting minutes) ask first.

import { describeError, el, getKey, onSubmit, request, requestJson, setStatus, statusOf, withBusy } from "./api.js";
import { usageRows } from "./admin-usage.js";
import { copyText } from "./exports.js";
import { formatDate, formatMinutes } from "./format.js";

const loginCard = document.getElementById("admin-login-card");
const loginForm = document.getElementById("admin-login");
const consoleEl = document.getElementById("admin-console");
const createForm = document.getElementById("create-form");
const accountsCard = document.getElementById("card-accounts");
const accountsStatus = statusOf(accountsCard);
const tbody = document.querySelector("#accounts-table tbody");
const useKey = document.getElementById("admin-use-key");

let csrf = null;

const admin = (path, options = {}) => requestJson(path, { ...options, auth: false, csrf });

function showConsole(session) {
  csrf = session.csrfToken;
  document.getElementById("admin-who").textContent = session.accountId;
  loginCard.hidden = true;
  consoleEl.hidden = false;
  loadAccounts();
}

function showLogin() {
  csrf = null;
  consoleEl.hidden = true;
  loginCard.hidden = false;
  document.getElementById("new-key").hidden = true;
  document.getElementById("usage-panel").hidden = true;
  tbody.replaceChildren();
}

/** Called when the admin tab opens: resumes an existing cookie session if there is one. */
export async function checkSession() {
  try {
    showConsole(await requestJson("/admin/session", { auth: false }));
  } catch (err) {
    showLogin();
    if (err.status && err.status !== 401) setStatus(statusOf(loginCard), "error", describeError(err));
  }
}

/** The key bar's key is an admin key: offer to sign in with it rather than typing it again. */
export function setAdminKeyAvailable(yes) {
  useKey.hidden = !yes;
}

async function signIn(key) {
  const status = statusOf(loginCard);
  if (!key) throw new Error("Enter an admin API key.");
  setStatus(status, "busy", "Signing in…");
  const session = await requestJson("/admin/login", { method: "POST", json: { apiKey: key }, auth: false });
  document.getElementById("admin-key").value = "";
  setStatus(status, "", "");
  showConsole(session);
}

async function logout() {
  try {
    await request("/admin/logout", { method: "POST", auth: false, csrf });
  } finally {
    showLogin();
  }
}

/** The POST /accounts body: filled-in fields only, numbers as numbers, isAdmin as a boolean. */
export function accountBody(form) {
  const body = {};
  for (const input of form.querySelectorAll("input[name]")) {
    if (input.type === "checkbox") {
      body[input.name] = input.checked;
      continue;
    }
    const v = input.value.trim();
    if (!v) continue;
    body[input.name] = input.type === "number" ? Number(v) : v;
  }
  return body;
}

async function createAccount() {
  const status = statusOf(createForm);
  const box = document.getElementById("new-key");
  box.hidden = true;
  const created = await admin("/accounts", { method: "POST", json: accountBody(createForm) });
  document.getElementById("new-key-value").textContent = created.apiKey;
  box.hidden = false;
  const who = created.companyName || created.contactName || created.id;
  setStatus(status, "ok", `Account ${created.id} (${who}) created with ${formatMinutes(created.minutes)} minutes.`);
  await loadAccounts();
}

function nameOf(a) {
  return a.companyName || a.contactName || a.id;
}

/** Add (or, negative, deduct) minutes: a form per row, so Enter in the box submits it. */
function minutesForm(a) {
  const amount = el("input", { type: "number", step: "any", name: "minutes", placeholder: "± min", "data-action": "amount", "aria-label": `Minutes to add to ${nameOf(a)} (negative deducts)` });
  const form = el("form", { class: "acts minutes-form" }, amount,
    el("button", { type: "submit", class: "btn small", text: "Add", "data-action": "add", "aria-label": `Add minutes to ${nameOf(a)}` }));
  onSubmit(form, accountsStatus, async () => {
    const minutes = Number(amount.value);
    if (!amount.value.trim() || !Number.isFinite(minutes) || minutes === 0) throw new Error("Enter a number of minutes (negative to deduct).");
    if (minutes < 0 && !window.confirm(`Deduct ${formatMinutes(-minutes)} minutes from ${nameOf(a)}? They would have ${formatMinutes(Math.max(0, a.minutes + minutes))} left.`)) return;
    const r = await admin(`/accounts/${encodeURIComponent(a.id)}/minutes`, { method: "POST", json: { minutes } });
    setStatus(accountsStatus, "ok", `${nameOf(a)} now has ${formatMinutes(r.minutes)} minutes.`);
    await loadAccounts(a.id);
  });
  return form;
}

function actionCell(a) {
  const who = nameOf(a);
  const toggle = el("button", { type: "button", class: "btn small" + (a.disabled ? "" : " danger"), text: a.disabled ? "Enable" : "Disable", "data-action": "toggle", "aria-label": `${a.disabled ? "Enable" : "Disable"} ${who}` });
  toggle.addEventListener("click", () => withBusy(toggle, accountsStatus, async () => {
    if (!a.disabled && !window.confirm(`Disable ${who}? Its API key stops working until you enable the account again.`)) return;
    await admin(`/accounts/${encodeURIComponent(a.id)}`, { method: "PATCH", json: { disabled: !a.disabled } });
    setStatus(accountsStatus, "ok", `${who} ${a.disabled ? "enabled" : "disabled"}.`);
    await loadAccounts(a.id);
  }));
  const rotate = el("button", { type: "button", class: "btn small ghost", text: "New key", "data-action": "rotate", "aria-label": `New key for ${who}` });
  rotate.addEventListener("click", () => withBusy(rotate, accountsStatus, async () => {
    if (!window.confirm(`Replace the API key of ${who}? The old key stops working at once.`)) return;
    const r = await admin(`/accounts/${encodeURIComponent(a.id)}/rotate-key`, { method: "POST", json: {} });
    setStatus(accountsStatus, "ok", "");
    accountsStatus.append(`New API key for ${who} (shown once): `, el("code", { class: "rotated-key", text: r.apiKey }));
    await loadAccounts(a.id, false);
  }));
  const usage = el("button", { type: "button", class: "btn small ghost", text: "Usage", "data-action": "usage", "aria-label": `Usage of ${who}` });
  usage.addEventListener("click", () => withBusy(usage, accountsStatus, () => loadUsage(a)));
  return el("div", { class: "acts" }, minutesForm(a), toggle, rotate, usage);
}

function accountRow(a) {
  const state = [];
  if (a.isAdmin) state.push(el("span", { class: "pill accent", text: "admin" }));
  state.push(el("span", { class: a.disabled ? "pill off" : "pill ok", text: a.disabled ? "disabled" : "active" }));
  // One element per cell: on a phone each cell is a two-column grid (its column name, then this).
  const cell = (label, cls, ...children) => el("td", { "data-label": label, class: cls }, el("div", {}, ...children));
  return el(
    "tr",
    { class: a.disabled ? "disabled" : "", "data-id": a.id },
    cell("Account", null, el("code", { text: a.id }), el("div", { class: "sub", text: formatDate(a.createdAt) })),
    cell("Company", null, el("div", { text: a.companyName || "—" }), el("div", { class: "sub", text: a.contactName || "" })),
    cell("Key", null, el("code", { text: a.keyPrefix ? `${a.keyPrefix}…` : "" })),
    cell("Balance", "num", `${formatMinutes(a.minutes)} min`),
    cell("Engines", null, el("div", { text: `STT: ${a.sttApiKey || "default"}` }), el("div", { class: "sub", text: `TTS: ${a.ttsApiKey || "default"}` })),
    cell("State", null, el("div", { class: "acts" }, ...state)),
    cell("Actions", null, actionCell(a)),
  );
}

/** Reloads the table; in `focusId`'s row the control that was used gets focus back (the rows are new). */
async function loadAccounts(focusId, clearStatus = true) {
  const action = document.activeElement?.dataset?.action;
  try {
    const data = await admin("/accounts?limit=1000");
    tbody.replaceChildren(...(data.accounts || []).map(accountRow));
    if (clearStatus && accountsStatus.classList.contains("error")) setStatus(accountsStatus, "", "");
  } catch (err) {
    if (err.status === 401) return showLogin(); // the session expired
    setStatus(accountsStatus, "error", describeError(err));
    return;
  }
  const row = focusId && tbody.querySelector(`tr[data-id="${CSS.escape(focusId)}"]`);
  if (row && action) row.querySelector(`[data-action="${action}"]`).focus();
}

async function loadUsage(a) {
  const data = await admin(`/accounts/${encodeURIComponent(a.id)}/usage?limit=100`);
  document.getElementById("usage-who").textContent = nameOf(a);
  document.querySelector("#usage-table tbody").replaceChildren(...usageRows(data.usage || []));
  document.getElementById("usage-panel").hidden = false;
}

export function initAdmin() {
  onSubmit(loginForm, statusOf(loginCard), () => signIn(document.getElementById("admin-key").value.trim()));
  useKey.addEventListener("click", () => withBusy(useKey, statusOf(loginCard), () => signIn(getKey())));
  onSubmit(createForm, statusOf(createForm), createAccount);
  document.getElementById("admin-logout").addEventListener("click", logout);
  const refresh = document.getElementById("accounts-refresh");
  refresh.addEventListener("click", () => withBusy(refresh, accountsStatus, () => loadAccounts()));
  document.getElementById("new-key-copy").addEventListener("click", async (e) => {
    const ok = await copyText(document.getElementById("new-key-value").textContent);
    e.target.textContent = ok ? "Copied" : "Select and copy";
  });
}
