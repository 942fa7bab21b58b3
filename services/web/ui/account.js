"use strict";
// Accounts in the page (served at /ui/account.js, loaded before index.html's own script):
// the `api` wrapper every call goes through (the CSRF header on unsafe requests; a 401
// returns to the login form), the login form, the invite page (/invite#cvi_…), the
// account menu (API tokens, log out) and, for admins, the users panel.
// With ACCOUNTS=off, /api/auth/me answers the local admin (id null): no login UI at all.

const $ = (id) => document.getElementById(id);
const text = (s) => String(s ?? "");
function esc(s) { const d = document.createElement("div"); d.textContent = text(s); return d.innerHTML; }
const day = (iso) => (iso ? iso.replace("T", " ").replace("+00:00", " UTC") : "–");

const CSRF_COOKIE = "conveyor_csrf";
const SAFE = ["GET", "HEAD", "OPTIONS"];
const account = { me: null, running: false, start: () => {}, stop: () => {} };

function csrfToken() {
  const pair = document.cookie.split("; ").find((c) => c.startsWith(CSRF_COOKIE + "="));
  return pair ? decodeURIComponent(pair.slice(CSRF_COOKIE.length + 1)) : null;
}

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function errorText(res, body) {
  const wait = res.headers.get("Retry-After");
  if (res.status === 429 && wait) return `Too many attempts: try again in ${wait} s.`;
  let detail = (body && (body.detail || body.message)) || `HTTP ${res.status}`;
  const extra = body && Array.isArray(body.extra) ? body.extra.map((x) => x && x.message).filter(Boolean) : [];
  if (extra.length) detail += `: ${extra.join("; ")}`;
  return detail;
}

async function api(path, options = {}) {
  const method = (options.method || "GET").toUpperCase();
  const headers = new Headers(options.headers || {});
  const token = csrfToken();
  if (!SAFE.includes(method) && token) headers.set("x-csrf-token", token);
  const res = await fetch(path, { ...options, headers, credentials: "same-origin" });
  let body = null;
  try { body = res.status === 204 ? null : await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    if (res.status === 401 && account.me) signedOut();
    throw new ApiError(errorText(res, body), res.status);
  }
  return body;
}
const postJson = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

function show(view) {
  for (const id of ["app", "login-view", "invite-view"]) $(id).hidden = id !== view;
}
function say(id, message, kind) { $(id).className = "msg" + (kind ? " " + kind : ""); $(id).textContent = message; }

async function boot() {
  let me;
  try {
    me = await api("/api/auth/me");
  } catch (e) {
    if (e.status !== 401) { say("boot-msg", `Cannot reach the server: ${e.message}`, "bad"); setTimeout(boot, 3000); return; }
    if (location.pathname === "/invite") showInvite(); else { show("login-view"); $("login-email").focus(); }
    return;
  }
  say("boot-msg", "");
  if (location.pathname === "/invite" && me.id !== null) { showInvite(); return; }
  if (location.pathname === "/invite") history.replaceState(null, "", "/");
  signedIn(me);
}

function signedIn(me) {
  account.me = me;
  const local = me.id === null;  // ACCOUNTS=off: the local admin, nothing to log in to
  show("app");
  $("account").hidden = local;
  $("account-email").textContent = me.email;
  $("users-panel").hidden = local || me.role !== "admin";
  if (!$("users-panel").hidden) refreshUsers().catch((e) => say("users-msg", e.message, "bad"));
  if (!account.running) { account.running = true; account.start(); }
}

function signedOut() {  // a 401 on a later call: the session ended
  account.me = null;
  if (account.running) { account.running = false; account.stop(); }
  $("account").hidden = true;
  $("tokens-panel").hidden = true;
  show("login-view");
  say("login-msg", "Your session ended: log in again.");
}

function bootAccount(start, stop) {
  account.start = start; account.stop = stop;
  boot();
}

// ------------------------------------------------------------------------ login
$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  say("login-msg", "");
  $("login-submit").disabled = true;
  try {
    await postJson("/api/auth/login", { email: $("login-email").value.trim(), password: $("login-password").value });
    $("login-password").value = "";
    await boot();
  } catch (e) {
    say("login-msg", e.status === 401 ? "Wrong email or password." : e.message, "bad");
  } finally {
    $("login-submit").disabled = false;
  }
});

// ------------------------------------------------------------------------ invite page
function showInvite() {
  show("invite-view");
  const token = location.hash.slice(1);  // the fragment: never sent to the server in a URL
  $("invite-submit").disabled = !token;
  if (!token) say("invite-msg", "This invitation link is incomplete: ask for a new one.", "bad");
}
$("invite").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if ($("invite-password").value !== $("invite-password2").value) { say("invite-msg", "The two passwords differ.", "bad"); return; }
  say("invite-msg", "");
  $("invite-submit").disabled = true;
  try {
    await postJson("/api/auth/invites/redeem", { token: location.hash.slice(1), name: $("invite-name").value.trim(), password: $("invite-password").value });
    history.replaceState(null, "", "/");
    await boot();
  } catch (e) {
    say("invite-msg", e.message, "bad");
    $("invite-submit").disabled = false;
  }
});

// ------------------------------------------------------------------------ account menu
async function logout(path) {
  try { await api(path, { method: "POST" }); } catch (e) { alert(e.message); return; }
  location.replace("/");  // a fresh page: nothing of this user's stays in memory
}
$("logout").addEventListener("click", () => logout("/api/auth/logout"));
$("logout-all").addEventListener("click", () => logout("/api/auth/logout-all"));
$("menu-tokens").addEventListener("click", () => {
  $("account").open = false;
  $("tokens-panel").hidden = false;
  $("new-token").hidden = true;
  refreshTokens().catch((e) => say("tokens-msg", e.message, "bad"));
  $("tokens-panel").scrollIntoView();
});
$("tokens-close").addEventListener("click", () => { $("tokens-panel").hidden = true; $("new-token-value").textContent = ""; });

async function refreshTokens() {
  const rows = await api("/api/auth/tokens");
  $("tokens").innerHTML = rows.length ? rows.map((t) => `<tr><td><code>${esc(t.prefix)}…</code></td><td>${esc(t.name)}</td>
      <td class="muted">${esc(day(t.created_at))}</td><td class="muted">${t.last_used_at ? esc(day(t.last_used_at)) : "never"}</td>
      <td>${t.revoked_at ? `<span class="muted">revoked</span>` : `<button type="button" class="secondary" data-token="${esc(t.id)}">Revoke</button>`}</td></tr>`).join("")
    : `<tr><td colspan="5" class="muted">No API tokens yet.</td></tr>`;
}
$("token-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  say("tokens-msg", "");
  try {
    const t = await postJson("/api/auth/tokens", { name: $("token-name").value.trim() });
    $("token-name").value = "";
    $("new-token-value").textContent = t.token;
    $("new-token").hidden = false;
    await refreshTokens();
  } catch (e) { say("tokens-msg", e.message, "bad"); }
});
$("tokens").addEventListener("click", async (ev) => {
  const id = ev.target.dataset && ev.target.dataset.token;
  if (!id || !confirm("Revoke this token? Scripts using it stop working.")) return;
  try { await api(`/api/auth/tokens/${encodeURIComponent(id)}`, { method: "DELETE" }); await refreshTokens(); } catch (e) { say("tokens-msg", e.message, "bad"); }
});

// Copy buttons: data-copy names the element whose text to copy.
document.addEventListener("click", async (ev) => {
  const source = ev.target.dataset && ev.target.dataset.copy;
  if (!source) return;
  try {
    await navigator.clipboard.writeText($(source).textContent);
    ev.target.textContent = "Copied";
  } catch (e) {  // no clipboard access: select it for the user to copy
    getSelection().selectAllChildren($(source));
  }
});

// ------------------------------------------------------------------------ users (admins)
async function refreshUsers() {
  const rows = await api("/api/users");
  $("users").innerHTML = rows.map((u) => `<tr><td>${esc(u.email)}</td><td>${esc(u.name)}</td><td>${esc(u.role)}</td>
      <td class="muted">${u.disabled_at ? "disabled " + esc(day(u.disabled_at)) : "active"}</td>
      <td>${u.disabled_at || u.id === account.me.id ? "" : `<button type="button" class="secondary" data-user="${esc(u.id)}">Disable</button>`}</td></tr>`).join("");
}
$("invite-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  say("users-msg", "");
  try {
    const inv = await postJson("/api/users/invites", { email: $("invite-email").value.trim(), role: $("invite-role").value });
    $("invite-email").value = "";
    $("invite-link").textContent = location.origin + inv.link;
    $("invite-for").textContent = `For ${inv.email} (${inv.role}), valid until ${day(inv.expires_at)}. It is shown once: send it to them now.`;
    $("new-invite").hidden = false;
  } catch (e) { say("users-msg", e.message, "bad"); }
});
$("users").addEventListener("click", async (ev) => {
  const id = ev.target.dataset && ev.target.dataset.user;
  if (!id || !confirm("Disable this account? Its logins, sessions and API tokens stop working.")) return;
  try { await api(`/api/users/${encodeURIComponent(id)}`, { method: "DELETE" }); await refreshUsers(); } catch (e) { say("users-msg", e.message, "bad"); }
});
