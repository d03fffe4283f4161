// Entry point: the API key bar, the Demo/Admin tabs (from the URL hash), and the capabilities of the key in
// use handed to every card, so that each offers only what this key can do here.

import { capabilities, clearCapabilities, loadCapabilities, onCapabilities } from "./account.js";
import { checkSession, initAdmin, setAdminKeyAvailable } from "./admin.js";
import { describeError, getKey, setKey, setStatus, statusOf, withBusy } from "./api.js";
import { forgetAll, renderHistory } from "./history.js";
import * as realtime from "./realtime.js";
import * as stt from "./stt.js";
import * as subtitle from "./subtitle.js";
import * as tts from "./tts.js";

const accountCard = document.getElementById("card-account");
const accountStatus = statusOf(accountCard);
const keyInput = document.getElementById("api-key");
const adminTab = document.getElementById("tab-admin");

/** The Admin tab is offered to admin keys (and stays while an admin session is open or #admin is asked for). */
function syncAdminTab(caps) {
  const admin = Boolean(caps && caps.isAdmin);
  adminTab.hidden = !(admin || location.hash === "#admin");
  setAdminKeyAvailable(admin);
}

/** Reloads what depends on the key; a bad key shows in the account card and leaves the cards empty. */
async function refreshAll() {
  renderHistory();
  const key = getKey();
  if (!key) {
    clearCapabilities();
    setStatus(accountStatus, "", "No API key yet: enter one at the top of the page.");
    return;
  }
  const button = document.getElementById("caps-refresh");
  button.setAttribute("aria-busy", "true");
  let caps;
  try {
    caps = await loadCapabilities();
    setStatus(accountStatus, "", "");
  } catch (err) {
    if (key === getKey()) {
      clearCapabilities();
      setStatus(accountStatus, "error", describeError(err));
    }
    return;
  } finally {
    button.removeAttribute("aria-busy");
  }
  if (caps.tts && caps.tts.configured && key === getKey()) {
    await withBusy(document.getElementById("speeches-refresh"), statusOf(document.getElementById("tts-form")), tts.loadHistory);
  }
}

function initKeyBar() {
  keyInput.value = getKey();
  document.getElementById("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey(keyInput.value.trim());
    tts.clearHistory();
    refreshAll();
  });
  document.getElementById("key-clear").addEventListener("click", () => {
    forgetAll(); // this key's local results go with it
    keyInput.value = "";
    setKey("");
    tts.clearHistory();
    refreshAll();
  });
}

function showView() {
  const view = location.hash === "#admin" ? "admin" : "demo";
  for (const v of ["demo", "admin"]) {
    document.getElementById(`view-${v}`).hidden = v !== view;
    const tab = document.getElementById(`tab-${v}`);
    tab.classList.toggle("active", v === view);
    if (v === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  syncAdminTab(capabilities());
  if (view === "admin") checkSession();
}

onCapabilities((caps) => {
  tts.setCapabilities(caps);
  stt.setCapabilities(caps);
  subtitle.setCapabilities(caps);
  realtime.setCapabilities(caps);
  syncAdminTab(caps);
});
initKeyBar();
tts.initTts();
stt.initStt();
subtitle.initSubtitle();
realtime.initRealtime();
initAdmin();
document.getElementById("caps-refresh").addEventListener("click", refreshAll);
// Minutes change after every billed call: keep the account card current without a manual refresh.
document.addEventListener("minutes-changed", () => getKey() && loadCapabilities().catch(() => {}));
window.addEventListener("hashchange", showView);
showView();
refreshAll();
