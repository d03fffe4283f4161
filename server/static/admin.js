// The admin area. Signing in with an admin API key buys an HttpOnly session cookie; every admin call then goes
// WITHOUT the x-api-key header (so the cookie is what authenticates) and state-changing ones echo the CSRF
// token the login returned.

import { describeError, el, formatDate, formatMinutes, request, requestJson, setStatus, statusOf, withBusy } from "./api.js";

const loginCard = document.getElementById("admin-login-card");
const loginForm = document.getElementById("admin-login");
const consoleEl = document.getElementById("admin-console");
const createForm = document.getElementById("create-form");
const accountsCard = document.getElementById("card-accounts");
const tbody = document.querySelector("#accounts-table tbody");

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

async function login(event) {
  event.preventDefault();
  const status = statusOf(loginCard);
  const keyInput = document.getElementById("admin-key");
  await withBusy(loginForm.querySelector("button"), status, async () => {
    const key = keyInput.value.trim();
    if (!key) throw new Error("Enter an admin API key.");
    setStatus(status, "busy", "Signing in…");
    const session = await requestJson("/admin/login", { method: "POST", json: { apiKey: key }, auth: false });
    keyInput.value = "";
    setStatus(status, "", "");
    showConsole(session);
  });
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

async function createAccount(event) {
  event.preventDefault();
  const status = statusOf(createForm);
  const box = document.getElementById("new-key");
  box.hidden = true;
  await withBusy(createForm.querySelector("button[type=submit]"), status, async () => {
    const created = await admin("/accounts", { method: "POST", json: accountBody(createForm) });
    document.getElementById("new-key-value").textContent = created.apiKey;
    box.hidden = false;
    const who = created.companyName || created.contactName || created.id;
    setStatus(status, "ok", `Account ${created.id} (${who}) created with ${formatMinutes(created.minutes)} minutes.`);
    await loadAccounts();
  });
}

function engines(a) {
  return el("div", {}, el("div", { text: `STT: ${a.sttApiKey || "default"}` }), el("div", { class: "sub", text: `TTS: ${a.ttsApiKey || "default"}` }));
}

function actionCell(a) {
  const status = statusOf(accountsCard);
  const amount = el("input", { type: "number", step: "any", placeholder: "+min", "aria-label": `Minutes to add to ${a.id}` });
  const add = el("button", { type: "button", class: "btn small", text: "Add" });
  add.addEventListener("click", () => withBusy(add, status, async () => {
    const minutes = Number(amount.value);
    if (!amount.value.trim() || !Number.isFinite(minutes)) throw new Error("Enter a number of minutes (negative to deduct).");
    const r = await admin(`/accounts/${encodeURIComponent(a.id)}/minutes`, { method: "POST", json: { minutes } });
    setStatus(status, "ok", `${a.id} now has ${formatMinutes(r.minutes)} minutes.`);
    await loadAccounts();
  }));
  const toggle = el("button", { type: "button", class: "btn small" + (a.disabled ? "" : " danger"), text: a.disabled ? "Enable" : "Disable" });
  toggle.addEventListener("click", () => withBusy(toggle, status, async () => {
    await admin(`/accounts/${encodeURIComponent(a.id)}`, { method: "PATCH", json: { disabled: !a.disabled } });
    setStatus(status, "ok", `${a.id} ${a.disabled ? "enabled" : "disabled"}.`);
    await loadAccounts();
  }));
  const rotate = el("button", { type: "button", class: "btn small ghost", text: "New key" });
  rotate.addEventListener("click", () => withBusy(rotate, status, async () => {
    if (!window.confirm(`Replace the API key of ${a.id}? The old key stops working at once.`)) return;
    const r = await admin(`/accounts/${encodeURIComponent(a.id)}/rotate-key`, { method: "POST", json: {} });
    setStatus(status, "ok", "");
    status.append(`New API key for ${a.id} (shown once): `, el("code", { class: "rotated-key", text: r.apiKey }));
    await loadAccounts(false);
  }));
  const usage = el("button", { type: "button", class: "btn small ghost", text: "Usage" });
  usage.addEventListener("click", () => withBusy(usage, status, () => loadUsage(a.id)));
  return el("div", { class: "acts" }, amount, add, toggle, rotate, usage);
}

function accountRow(a) {
  const state = [];
  if (a.isAdmin) state.push(el("span", { class: "pill accent", text: "admin" }));
  state.push(el("span", { class: a.disabled ? "pill off" : "pill ok", text: a.disabled ? "disabled" : "active" }));
  return el(
    "tr",
    { class: a.disabled ? "disabled" : "", "data-id": a.id },
    el("td", {}, el("code", { text: a.id }), el("div", { class: "sub", text: formatDate(a.createdAt) })),
    el("td", {}, el("div", { text: a.companyName || "—" }), el("div", { class: "sub", text: a.contactName || "" })),
    el("td", {}, el("code", { text: a.keyPrefix ? `${a.keyPrefix}…` : "" })),
    el("td", { class: "num" }, el("div", { text: formatMinutes(a.minutes) }), el("div", { class: "sub", text: `of ${formatMinutes(a.startingMinutes)}` })),
    el("td", {}, engines(a)),
    el("td", {}, el("div", { class: "acts" }, ...state)),
    el("td", {}, actionCell(a)),
  );
}

async function loadAccounts(clearStatus = true) {
  const status = statusOf(accountsCard);
  try {
    const data = await admin("/accounts?limit=1000");
    tbody.replaceChildren(...(data.accounts || []).map(accountRow));
    if (clearStatus && status.classList.contains("error")) setStatus(status, "", "");
  } catch (err) {
    if (err.status === 401) return showLogin(); // the session expired
    setStatus(status, "error", describeError(err));
  }
}

async function loadUsage(id) {
  const data = await admin(`/accounts/${encodeURIComponent(id)}/usage?limit=100`);
  document.getElementById("usage-who").textContent = id;
  const rows = (data.usage || []).map((u) =>
    el("tr", {},
      el("td", { text: formatDate(u.createdAt) }), el("td", { text: u.kind }), el("td", { text: u.status }),
      el("td", { class: "num", text: formatMinutes(u.minutes) }), el("td", { class: "num", text: (u.audioSeconds || 0).toFixed(1) }),
      el("td", { text: u.note || u.reference || "" })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", class: "sub", text: "No usage yet." })));
  document.querySelector("#usage-table tbody").replaceChildren(...rows);
  document.getElementById("usage-panel").hidden = false;
}

export function initAdmin() {
  loginForm.addEventListener("submit", login);
  createForm.addEventListener("submit", createAccount);
  document.getElementById("admin-logout").addEventListener("click", logout);
  const refresh = document.getElementById("accounts-refresh");
  refresh.addEventListener("click", () => withBusy(refresh, statusOf(accountsCard), () => loadAccounts()));
  document.getElementById("new-key-copy").addEventListener("click", async (e) => {
    const text = document.getElementById("new-key-value").textContent;
    try {
      await navigator.clipboard.writeText(text);
      e.target.textContent = "Copied";
    } catch {
      e.target.textContent = "Select and copy";
    }
  });
}
