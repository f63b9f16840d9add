// The console's entry: which key, what it may do, and the two views.

import { probe, storeKey, storedKey } from "./api.js";
import { $ } from "./dom.js";
import { Overview } from "./overview.js";
import { Playground } from "./playground.js";

let overview = null;
let playground = null;

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  $("#overview").hidden = view !== "overview";
  $("#playground").hidden = view !== "playground";
  if (view === "overview") overview?.start();
  else overview?.stop();
  sessionStorage.setItem("gateway-console-view", view);
}

function signIn(message) {
  overview?.stop();
  overview = null;
  playground = null;
  $("#tabs").hidden = true;
  $("#who").hidden = true;
  $("#overview").hidden = true;
  $("#playground").hidden = true;
  $("#sign-in").hidden = false;
  $("#key-error").textContent = message || "";
  $("#key-input").value = "";
  $("#key-input").focus();
}

async function start() {
  let session;
  try {
    session = await probe();
  } catch (error) {
    $("#key-error").textContent = `The gateway did not answer: ${error.message}`;
    $("#sign-in").hidden = false;
    return;
  }
  if (session.refused) {
    const had = storedKey();
    storeKey("");
    signIn(had ? "That key was refused." : "");
    return;
  }
  $("#sign-in").hidden = true;
  $("#tabs").hidden = false;
  $("#who").hidden = !session.keys_required;
  const named = session.key_id && session.key_id !== "anonymous";
  const roles = [session.models && "models", session.admin && "admin"].filter(Boolean).join(" and ");
  $("#who-text").textContent = named ? `Key “${session.key_id}”: ${roles}` : session.admin ? "Admin key" : roles;
  overview = new Overview(session, () => signIn("The key is no longer accepted."));
  playground = new Playground(session);
  const playTab = document.querySelector('.tab[data-view="playground"]');
  playTab.hidden = !session.models;
  const wanted = sessionStorage.getItem("gateway-console-view");
  show(wanted === "playground" && session.models ? "playground" : "overview");
}

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  storeKey($("#key-input").value.trim());
  start();
});
$("#sign-out").addEventListener("click", () => {
  storeKey("");
  signIn("");
});
for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));

start();
