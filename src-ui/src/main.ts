// The Lockstep window: connect, sign in, dashboard, settings, security, devices, activity,
// app lock. Plain DOM (no framework): views are functions of the state, and `morph` (dom.ts)
// updates the window in place; all decisions are the engine's, reached through `api`.

import { api, isError, onEvent, onSignOutAsked, uiState, type AccountDto, type EnrollmentDto, type EventReport, type HistoryDto, type LaunchDto, type SetAsideDto, type SettingDto, type StatusReport } from "./api.js";
import { h, morph, type Attrs } from "./dom.js";
import { ago, connectionNote, describe, effectiveTheme, groupedKey, historyNote, historyValue, lockNote, mask, move, pendingText, toggle, visibleWidgets, widgetLabel, type Widget } from "./format.js";

type View = "dashboard" | "settings" | "security" | "devices" | "activity";
const VIEWS: [View, string][] = [["dashboard", "Home"], ["settings", "Settings"], ["security", "Security"], ["devices", "Devices"], ["activity", "Activity"]];
const state = {
  view: "dashboard" as View,
  status: null as StatusReport | null,
  account: null as AccountDto | null,
  settings: [] as SettingDto[],
  /** Edits the server refused for good (kept aside until retried or dropped). */
  setAside: [] as SetAsideDto[],
  log: [] as string[],
  revealed: new Set<string>(),
  locked: false,
  lastActivity: Date.now(),
  /** Recovery codes just created: shown until the user is done with them (never stored). */
  recoveryCodes: null as string[] | null,
  /** The device being renamed (its id), if any. */
  renaming: null as string | null,
  /** The setting whose history is open (one at a time), and its versions, newest first. */
  history: null as { key: string; versions: HistoryDto[] } | null,
  /** The authenticator enrollment waiting for its first code (kept through wrong codes). */
  enrollment: null as EnrollmentDto | null,
  /** The user ticked "I have saved my recovery codes". */
  codesKept: false,
  /** A new password waiting for the second factor (a reset of a two-factor account). */
  newPassword: null as string | null,
  /** The account's recovery codes: how many are left, of how many. */
  recoveryStatus: null as { total: number; remaining: number } | null,
  /** How this window was launched (the profile, its server, the connect form's prefill). */
  launch: null as LaunchDto | null,
};

const root = () => document.getElementById("app") as HTMLElement;

/** Shows `nodes` as the window's content, updating what is there in place. */
function show(...nodes: (Node | null)[]): void {
  morph(root(), nodes.filter((n): n is Node => n !== null));
}

/** Puts the keyboard on `id` when a screen opens (focus that is already in the window stays). */
function focusIfNone(id: string): void {
  const active = document.activeElement;
  if (active && active !== document.body && root().contains(active)) return;
  document.getElementById(id)?.focus();
}

function message(e: unknown): string {
  if (isError(e)) return e.message;
  return e instanceof Error ? e.message : String(e);
}

/** An error in plain words, with its technical detail (if any) behind a disclosure. */
function explained(e: unknown): Node[] {
  const detail = isError(e) ? e.detail : null;
  const text = document.createTextNode(message(e));
  if (!detail) return [text];
  return [text, document.createTextNode(" "), h("details", { class: "detail" }, h("summary", {}, "Details"), h("code", {}, detail))];
}

/** A passing message; with `action` ([label, what it does]) a button too, and longer. */
function toast(text: string, action?: [string, () => void]): void {
  const region = document.getElementById("toasts");
  if (!region || !text) return;
  const item = h("div", { class: "toast", role: "status" }, text);
  if (action) {
    item.append(" ", h("button", { class: "toast-action", onclick: () => { item.remove(); action[1](); } }, action[0]));
  }
  region.append(item);
  setTimeout(() => item.remove(), action ? 15000 : 6000);
}

function applyTheme(): void {
  const choice = state.settings.find((s) => s.key === "appearance.theme")?.value;
  const dark = window.matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.dataset.theme = effectiveTheme(choice, dark);
}

/** A form whose submit runs `action`, showing its error inline. */
function form(title: string, fields: HTMLElement[], submit: string, action: (data: FormData) => Promise<void>): HTMLElement {
  const id = `form-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  const submitted = async (e: Event) => {
    e.preventDefault();
    const f = e.currentTarget as HTMLFormElement;
    const error = f.querySelector(".error") as HTMLElement;
    error.textContent = "";
    try {
      await action(new FormData(f));
    } catch (err) {
      error.replaceChildren(...explained(err));
    }
  };
  return h("form", { class: "card", "aria-label": title, id, onsubmit: submitted },
    h("h2", {}, title), ...fields, h("p", { class: "error", role: "alert", "data-keep": true }), h("button", { type: "submit" }, submit));
}

function field(name: string, text: string, type = "text", value = "", extra: Attrs = {}): HTMLElement {
  const id = typeof extra.id === "string" ? extra.id : `f-${name}`;
  return h("p", {}, h("label", { for: id }, text), h("input", { name, type, value, required: true, ...extra, id }));
}

// ---- screens before the main window ----

function connectScreen(prefill: { server_url: string | null; anon_key: string | null; device_name: string | null }): void {
  // A view still being read must not paint over this screen.
  rendering++;
  show(
    form(
      "Connect to your Lockstep server",
      [
        field("server", "Server URL", "url", prefill.server_url ?? "http://127.0.0.1:54321"),
        field("anon", "Anon key", "text", prefill.anon_key ?? ""),
        field("device", "Name this device", "text", prefill.device_name ?? ""),
      ],
      "Connect",
      async (d) => {
        await api.connect(String(d.get("server")), String(d.get("anon")), String(d.get("device")));
        await start();
      },
    ),
  );
  focusIfNone("f-server");
}

/** The server a signed-out profile uses, with a way to another one. */
function serverNote(): HTMLElement | null {
  const launch = state.launch;
  if (!launch?.server) return null;
  return h("p", { class: "muted server-note", id: "server-note" }, `Server: ${launch.server} `,
    h("button", { id: "change-server", onclick: () => connectScreen({ ...launch, server_url: launch.server }) }, "Change server"));
}

function authScreen(): void {
  // A view still being read must not paint over this screen.
  rendering++;
  // Each form's fields get their own ids (`f-signin-email`, `f-signup-email`, …).
  const fields = (prefix: string) => [
    field("email", "Email", "email", "", { autocomplete: "username", id: `f-${prefix}-email` }),
    field("password", "Password", "password", "", { autocomplete: prefix === "signup" ? "new-password" : "current-password", id: `f-${prefix}-password`, ...(prefix === "signup" ? { "aria-describedby": "password-rule" } : {}) }),
  ];
  show(
    h("div", { class: "pair", id: "auth-screen" },
      form("Sign in", fields("signin"), "Sign in", async (d) => {
        const outcome = await api.signIn(String(d.get("email")), String(d.get("password")));
        if (outcome === "code_needed") codeScreen();
        else await enterMain();
      }),
      form("Create an account", [
        ...fields("signup"),
        h("p", { class: "muted", id: "password-rule" }, state.launch?.password_rule ?? ""),
        field("confirm", "Password again", "password", "", { autocomplete: "new-password", id: "f-signup-confirm" }),
      ], "Sign up", async (d) => {
        if (d.get("password") !== d.get("confirm")) throw new Error("The two passwords differ: type the same one twice");
        await api.signUp(String(d.get("email")), String(d.get("password")));
        await enterMain();
      }),
    ),
    h("p", { class: "center" }, h("button", { id: "forgot-password", onclick: () => resetScreen(null) }, "Forgot your password?")),
    serverNote(),
  );
  focusIfNone("f-signin-email");
}

/** "Forgot your password?": the address first, then the code from the mail and a new password. */
function resetScreen(email: string | null): void {
  // A view still being read must not paint over this screen.
  rendering++;
  if (email === null) {
    show(h("div", { class: "pair", id: "reset-screen" },
      form("Reset your password", [field("email", "Email", "email", "", { autocomplete: "username", id: "f-reset-email" })], "Mail me a code", async (d) => {
        const address = String(d.get("email"));
        await api.requestPasswordReset(address);
        resetScreen(address);
      }),
      h("p", { class: "center" }, h("button", { onclick: () => authScreen() }, "Back to sign in"))));
    focusIfNone("f-reset-email");
    return;
  }
  show(h("div", { class: "pair", id: "reset-screen" },
    form("Choose a new password", [
      h("p", {}, `If ${email} has an account, a code is on its way there.`),
      field("code", "Code from the email", "text", "", { autocomplete: "one-time-code", id: "f-reset-code" }),
      field("password", "New password", "password", "", { autocomplete: "new-password", id: "f-reset-password", "aria-describedby": "reset-rule" }),
      h("p", { class: "muted", id: "reset-rule" }, state.launch?.password_rule ?? ""),
      field("confirm", "New password again", "password", "", { autocomplete: "new-password", id: "f-reset-confirm" }),
    ], "Set the new password", async (d) => {
      const password = String(d.get("password"));
      if (password !== d.get("confirm")) throw new Error("The two passwords differ: type the same one twice");
      const outcome = await api.resetPassword(email, String(d.get("code")), password);
      if (outcome === "code_needed") {
        state.newPassword = password;
        codeScreen();
      } else {
        toast("Your new password is set");
        await enterMain();
      }
    }),
    h("p", { class: "center" }, h("button", { onclick: () => authScreen() }, "Back to sign in"))));
  focusIfNone("f-reset-code");
}

/** After a second factor: a new password waiting for it (a reset) is set now. */
async function afterSecondFactor(): Promise<void> {
  const password = state.newPassword;
  if (password) {
    state.newPassword = null;
    await api.changePassword(password);
    toast("Your new password is set");
  }
  await enterMain();
}

function codeScreen(): void {
  // A view still being read must not paint over this screen.
  rendering++;
  show(
    h("div", { class: "pair", id: "code-screen" },
      form("Two-factor authentication", [field("code", "Code from your authenticator app", "text", "", { inputmode: "numeric", autocomplete: "one-time-code", id: "f-code" })], "Verify", async (d) => {
        await api.verifyCode(String(d.get("code")));
        await afterSecondFactor();
      }),
      form("Lost your authenticator?", [field("recovery", "Recovery code")], "Use recovery code", async (d) => {
        await api.verifyRecoveryCode(String(d.get("recovery")));
        await afterSecondFactor();
      }),
    ),
  );
  focusIfNone("f-code");
}

/** The lock screen: the only thing a locked window shows. The shell refuses every command but
 * unlock and sign-out while locked, so nothing behind it works even over IPC. */
async function lockScreen(): Promise<void> {
  // A view still being read must not paint over this screen.
  rendering++;
  state.locked = true;
  const info = await api.lockScreen().catch(() => null);
  const who = info ? `${info.email ?? `profile ${info.profile}`} on ${info.device_name}` : "";
  const wait = h("p", { class: "muted", id: "lock-wait" }, info?.retry_in_ms ? lockNote({ failures: 0, retry_in_ms: info.retry_in_ms }) : "");
  const tryUnlock = (recovery: boolean) => async (d: FormData) => {
    const outcome = await api.unlock(String(d.get(recovery ? "recovery" : "code")), recovery);
    if (outcome.unlocked) {
      state.locked = false;
      state.lastActivity = Date.now();
      await refresh();
    } else {
      throw new Error(lockNote(outcome));
    }
  };
  show(
    h("div", { class: "pair", id: "lock-screen" },
      h("div", { class: "card" },
        h("h1", {}, "Lockstep is locked"),
        who ? h("p", { id: "lock-account" }, who) : null,
        wait,
        form("Unlock", [field("code", "Code from your authenticator app", "text", "", { inputmode: "numeric", autocomplete: "one-time-code", id: "f-unlock-code" })], "Unlock", tryUnlock(false))),
      form("Lost your authenticator?", [field("recovery", "Recovery code", "text", "", { id: "f-unlock-recovery" })], "Unlock with a recovery code", tryUnlock(true)),
      h("div", { class: "card" },
        h("h2", {}, "Not you?"),
        h("button", { class: "danger", id: "lock-sign-out", onclick: () => void signOutFlow() }, "Sign out of this device"))),
  );
  document.getElementById("f-unlock-code")?.focus();
}

/** Signs this device out after a confirmation; with edits that have not reached the server,
 * says how many and offers to sync first. */
async function signOutFlow(): Promise<void> {
  if (!(await confirmDialog("Sign out of this device?", "Lockstep stops syncing here and forgets this device's copy of your settings.", "Sign out"))) return;
  try {
    await api.signOut("this_device", false);
  } catch (e) {
    if (!isError(e) || e.code !== "unsynced") {
      toast(message(e));
      return;
    }
    const choice = await choiceDialog("Changes not synced yet", e.message, [["sync", "Sync first"], ["discard", "Sign out anyway"]]);
    if (choice === "sync") {
      await api.syncNow().catch(() => undefined);
      toast("Syncing: sign out again once \"All changes synced\" shows");
      return;
    }
    if (choice !== "discard") return;
    await api.signOut("this_device", true);
  }
  state.locked = false;
  authScreen();
}

/** A modal dialog asking to confirm `action`; resolves with the answer. Keyboard: Escape
 * cancels, focus starts on Cancel. */
function confirmDialog(title: string, text: string, action: string): Promise<boolean> {
  return choiceDialog(title, text, [["ok", action]]).then((c) => c === "ok");
}

/** A modal dialog with a Cancel button and `choices` ([value, label]); resolves with the value
 * chosen, or null. */
function choiceDialog(title: string, text: string, choices: [string, string][]): Promise<string | null> {
  return new Promise((resolve) => {
    const dialog = h("dialog", { "aria-labelledby": "dialog-title", "aria-describedby": "dialog-text", class: "card" }) as HTMLDialogElement;
    const close = (value: string | null) => { dialog.close(); dialog.remove(); resolve(value); };
    const cancel = h("button", { onclick: () => close(null) }, "Cancel");
    dialog.append(
      h("h2", { id: "dialog-title" }, title),
      h("p", { id: "dialog-text" }, text),
      h("p", { class: "actions" }, cancel, ...choices.map(([value, label]) => h("button", { "data-choice": value, class: value === "discard" || value === "ok" ? "danger" : "", onclick: () => close(value) }, label))));
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); close(null); });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

// ---- the main window ----

/** Counts reads of the whole state: only the newest one started is shown. */
let refreshes = 0;
/** Counts status events: a read that began before one must not put back the status it read. */
let statusEvents = 0;

/** Reads the whole state again and shows it. Reads overlap (each event starts one) and answer
 * in any order: what an older read brings is dropped, and so is a status older than the newest
 * status event (issue 15: a read that began before "Paused" or "Code needed" arrived put the
 * old status back, over the code screen). */
async function refresh(): Promise<void> {
  const ticket = ++refreshes;
  const seen = statusEvents;
  const keepStatus = (status: StatusReport) => {
    if (statusEvents === seen) state.status = status;
  };
  try {
    const [status, account, settings, setAside] = await Promise.all([api.status(), api.account(), api.settings(), api.setAside()]);
    if (ticket !== refreshes) return;
    keepStatus(status);
    state.setAside = setAside;
    state.account = account;
    state.settings = settings;
    // The engine's state wins over whatever view was asked for.
    const connection = state.status?.connection;
    if (connection === "step_up_required") return codeScreen();
    if (connection === "signed_out") return authScreen();
  } catch (e) {
    if (ticket !== refreshes) return;
    if (isError(e) && e.code === "locked") return void (await lockScreen());
    if (isError(e) && e.code === "signed_out") return authScreen();
    if (isError(e) && e.code === "code_needed") return codeScreen();
    if (isError(e) && e.code === "offline") {
      const [settings, status] = await Promise.all([api.settings(), api.status()]);
      if (ticket !== refreshes) return;
      state.settings = settings;
      keepStatus(status);
    } else throw e;
  }
  await loadHistory();
  if (ticket !== refreshes) return;
  applyTheme();
  render();
}

/** Reads the open history again (after an edit here or a change elsewhere). */
async function loadHistory(): Promise<void> {
  const open = state.history;
  if (!open) return;
  try {
    const versions = await api.settingHistory(open.key);
    if (state.history?.key === open.key) state.history = { key: open.key, versions };
  } catch (e) {
    toast(message(e));
    if (state.history?.key === open.key) state.history = null;
  }
}

/** Opens the history of `key` (closing any other), or closes it if open. */
async function toggleHistory(key: string): Promise<void> {
  state.history = state.history?.key === key ? null : { key, versions: [] };
  await loadHistory();
  render();
}

/** Sets a setting back to a version from its history: a new edit, which syncs. */
async function restoreVersion(s: SettingDto, version: HistoryDto): Promise<void> {
  try {
    const restored = await api.restoreSetting(s.key, version.version);
    toast(`${s.label} is back to ${historyValue(restored.value)}`);
  } catch (e) {
    toast(message(e));
  }
  await refresh();
}

async function enterMain(): Promise<void> {
  await refresh();
}

/** Locks now ("Lock now", Ctrl+L, or after inactivity). */
async function lockNow(): Promise<void> {
  try {
    await api.lockNow();
    await lockScreen();
  } catch (e) {
    toast(message(e));
  }
}

function header(): HTMLElement {
  const s = state.status;
  const paused = s?.connection === "paused";
  // Another Lockstep process on this profile syncs it; this window follows what it writes.
  const shared = s?.connection === "shared";
  const note = s ? connectionNote(s.connection) : "";
  return h("header", {},
    h("strong", { class: "brand" }, "Lockstep"),
    h("span", { class: `pill ${s?.live ? "live" : shared ? "shared" : ""}`, id: "connection", "aria-live": "polite", title: note }, s?.label ?? "…"),
    note ? h("span", { id: "connection-note", class: "muted" }, note) : null,
    h("span", { id: "pending" }, s && s.pending > 0 ? pendingText(s.pending) : "All changes synced"),
    h("span", { id: "last-synced" }, `Last synced ${ago(s?.last_synced_ms ?? null, Date.now())}`),
    h("button", { onclick: () => void api.syncNow(), disabled: shared, title: shared ? "The other Lockstep process syncs this profile" : "" }, "Sync now"),
    h("button", { id: "pause-sync", onclick: async () => { await api.pauseSync(!paused); await refresh(); } }, paused ? "Resume sync" : "Pause sync"),
    state.account?.offline_codes ? h("button", { id: "lock-now", title: "Ctrl+L", "aria-keyshortcuts": "Control+L", onclick: () => void lockNow() }, "Lock now") : null,
  );
}

function banner(): HTMLElement | null {
  if (!state.account || state.account.email_verified) return null;
  const email = state.account.email;
  const confirm = async (e: Event) => {
    e.preventDefault();
    const f = e.currentTarget as HTMLFormElement;
    const error = f.querySelector(".error") as HTMLElement;
    error.textContent = "";
    try {
      await api.confirmEmailCode(String(new FormData(f).get("code")));
      toast("Your email address is confirmed");
      await refresh();
    } catch (err) {
      error.replaceChildren(...explained(err));
    }
  };
  return h("div", { class: "banner", id: "verify-banner", role: "region", "aria-label": "Confirm your email" },
    h("p", {}, `Confirm your email: we sent a link and a code to ${email}.`),
    h("form", { class: "inline-form", id: "form-email-code", "aria-label": "Enter the code from the email", onsubmit: confirm },
      h("label", { for: "f-email-code" }, "Code from the email"),
      h("input", { id: "f-email-code", name: "code", type: "text", autocomplete: "one-time-code", required: true }),
      h("button", { type: "submit" }, "Confirm"),
      h("button", { type: "button", id: "resend", onclick: () => void api.resendConfirmation(null).then(() => toast(`Sent again to ${email}`), (e) => toast(message(e))) }, "Resend"),
      h("span", { class: "error", role: "alert", "data-keep": true })));
}

/** The edits the server refused: what, why, and a way to send them again or let them go. */
function refusedBanner(): HTMLElement | null {
  if (state.setAside.length === 0) return null;
  const n = state.setAside.length;
  return h("div", { class: "banner", id: "set-aside", role: "alert" },
    h("strong", {}, n === 1 ? "1 change could not be synced" : `${n} changes could not be synced`),
    h("ul", {}, ...state.setAside.map((e) => h("li", {}, `${e.label}: ${e.reason}`))),
    h("button", { id: "set-aside-retry", onclick: async () => { await guard(api.retrySetAside(null)); } }, "Try again"),
    h("button", { id: "set-aside-drop", onclick: async () => { await guard(api.dropSetAside(null)); } }, "Discard"),
  );
}

/** Goes to `view` (and remembers it for the next start). */
function go(view: View): void {
  state.view = view;
  void uiState.set("view", view).catch(() => undefined);
  void render();
}

/** The views as tabs, following the WAI-ARIA tabs pattern: one tab in the Tab order (the
 * selected one), arrow keys, Home and End move between tabs and select them. */
function nav(): HTMLElement {
  const keys = (e: Event) => {
    const key = (e as KeyboardEvent).key;
    const at = VIEWS.findIndex(([view]) => view === state.view);
    const to = key === "ArrowRight" ? (at + 1) % VIEWS.length
      : key === "ArrowLeft" ? (at + VIEWS.length - 1) % VIEWS.length
      : key === "Home" ? 0
      : key === "End" ? VIEWS.length - 1
      : -1;
    if (to < 0) return;
    e.preventDefault();
    go(VIEWS[to][0]);
    document.getElementById(`tab-${VIEWS[to][0]}`)?.focus();
  };
  return h("nav", { role: "tablist", "aria-label": "Views", id: "views", onkeydown: keys },
    ...VIEWS.map(([view, text]) => {
      const selected = state.view === view;
      return h("button", { role: "tab", id: `tab-${view}`, "aria-selected": String(selected), "aria-controls": `panel-${view}`, tabindex: selected ? "0" : "-1", onclick: () => go(view) }, text);
    }));
}

function provenance(s: SettingDto): HTMLElement {
  const who = s.changed_by ? `${s.changed_by}, ${s.changed_at ? ago(Date.parse(s.changed_at), Date.now()) : ""}` : "default";
  return h("small", { class: "muted" }, s.pending ? "waiting to sync" : `Last changed: ${who}`);
}

function deviceOnlyToggle(s: SettingDto): HTMLElement {
  const id = `only-${s.key}`;
  return h("span", { class: "only" },
    h("input", { type: "checkbox", id, checked: s.device_only, onchange: async (e) => { await guard(api.setDeviceOnly(s.key, (e.target as HTMLInputElement).checked)); } }),
    h("label", { for: id }, "This device only"));
}

async function guard(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (isError(e) && e.code === "locked") return void (await lockScreen());
    toast(message(e));
  }
  await refresh();
}

function settingRow(s: SettingDto): HTMLElement {
  const id = `setting-${s.key}`;
  let control: HTMLElement;
  if (s.key === "appearance.theme") {
    control = h("select", { id, onchange: (e) => void guard(api.setSetting(s.key, (e.target as HTMLSelectElement).value)) },
      ...["system", "light", "dark"].map((v) => h("option", { value: v, selected: s.value === v }, v[0].toUpperCase() + v.slice(1))));
  } else if (typeof s.value === "boolean") {
    control = h("input", { id, type: "checkbox", checked: s.value, onchange: (e) => void guard(api.setSetting(s.key, (e.target as HTMLInputElement).checked)) });
  } else if (typeof s.value === "number") {
    control = h("input", { id, type: "number", min: "0", max: "1440", value: String(s.value), onchange: (e) => void guard(api.setSetting(s.key, Number((e.target as HTMLInputElement).value))) });
  } else if (s.sensitive) {
    const shown = state.revealed.has(s.key);
    control = h("span", {},
      h("code", { id }, shown ? String(s.value) : mask(String(s.value ?? ""))),
      h("button", { onclick: () => { if (shown) state.revealed.delete(s.key); else state.revealed.add(s.key); render(); } }, shown ? "Hide" : "Reveal"),
      h("button", { onclick: async () => {
        if (await confirmDialog(`Remove ${s.label}?`, "The key is removed from every device.", "Remove")) await guard(api.resetSetting(s.key));
      } }, "Remove"));
  } else if (s.key === "dashboard.layout") {
    control = layoutEditor(s);
  } else {
    control = h("code", { id }, JSON.stringify(s.value));
  }
  const versions = state.history?.key === s.key ? state.history.versions : null;
  const historyButton = h("button", { id: `history-${s.key}`, "aria-expanded": String(versions !== null), "aria-controls": `history-list-${s.key}`, onclick: () => void toggleHistory(s.key) }, versions ? "Hide history" : "History");
  return h("div", { class: "setting" }, h("label", { for: id, title: s.description }, s.label), control, deviceOnlyToggle(s), provenance(s), historyButton, versions ? historyList(s, versions) : null);
}

/** The values a setting had on this device, newest (current) first, each but the current with
 * a way back to it. */
function historyList(s: SettingDto, versions: HistoryDto[]): HTMLElement {
  const id = `history-list-${s.key}`;
  if (versions.length === 0) return h("p", { id, class: "history muted" }, "No changes on this device yet");
  const now = Date.now();
  return h("ol", { id, class: "history", "aria-label": `History of ${s.label}` },
    ...versions.map((v, i) => h("li", { "data-version": String(v.version) },
      h("code", {}, historyValue(v.value)),
      h("small", { class: "muted", title: new Date(v.changed_at).toLocaleString() }, historyNote(v, now)),
      i === 0
        ? h("span", { class: "pill" }, "Current")
        : h("button", { "data-restore": String(v.version), "aria-label": `Restore ${s.label} to ${historyValue(v.value)}`, onclick: () => void restoreVersion(s, v) }, "Restore"))));
}

function layoutEditor(s: SettingDto): HTMLElement {
  const layout = (s.value as Widget[] | null) ?? [];
  const save = (next: Widget[]) => void guard(api.setSetting(s.key, next));
  return h("ol", { id: `setting-${s.key}`, class: "layout" },
    ...layout.map((w, i) => h("li", {},
      h("input", { type: "checkbox", id: `w-${w.widget}`, checked: w.visible, onchange: () => save(toggle(layout, i)) }),
      h("label", { for: `w-${w.widget}` }, widgetLabel(w.widget)),
      h("button", { "aria-label": `Move ${w.widget} up`, disabled: i === 0, onclick: () => save(move(layout, i, -1)) }, "↑"),
      h("button", { "aria-label": `Move ${w.widget} down`, disabled: i === layout.length - 1, onclick: () => save(move(layout, i, 1)) }, "↓"))));
}

function settingsView(): HTMLElement {
  const addKey = form("Add an integration API key", [field("name", "Integration (e.g. github)"), field("key", "API key", "password")], "Save", async (d) => {
    await api.setSetting(`integrations.${String(d.get("name"))}`, String(d.get("key")));
    await refresh();
  });
  return h("section", { "aria-label": "Settings" }, ...state.settings.filter((s) => !s.key.startsWith("custom.")).map(settingRow), addKey);
}

async function securityView(): Promise<HTMLElement> {
  const section = h("section", { "aria-label": "Security" });
  const account = state.account;
  if (!account) return section;
  state.recoveryStatus = account.mfa_enabled ? await api.recoveryCodesStatus().catch(() => null) : null;
  section.append(h("div", { class: "card", id: "account-card" },
    h("h2", {}, "Account"),
    h("p", {}, `Signed in as ${account.email} on ${account.device_name}`),
    h("p", { class: "muted", id: "account-server" }, `Server: ${account.server_url}`)));
  const codes = state.recoveryCodes;
  if (codes) {
    const kept = h("input", { type: "checkbox", id: "codes-kept", checked: state.codesKept, onchange: (e) => { state.codesKept = (e.target as HTMLInputElement).checked; void render(); } });
    const done = h("button", { id: "codes-done", disabled: !state.codesKept, onclick: () => { state.recoveryCodes = null; state.codesKept = false; void render(); } }, "Done");
    section.append(h("div", { class: "card", id: "recovery-card" },
      h("h2", {}, "Your recovery codes"),
      h("p", {}, "Keep them somewhere safe: each works once, if you lose your authenticator. They are shown only now."),
      h("pre", { id: "recovery-codes" }, codes.join("\n")),
      h("button", { onclick: () => void navigator.clipboard.writeText(codes.join("\n")).then(() => toast("Recovery codes copied")) }, "Copy"),
      h("button", { id: "save-codes", onclick: () => void api.saveRecoveryCodes(codes).then((path) => { if (path) toast(`Saved to ${path} (readable by you alone)`); }, (e) => toast(message(e))) }, "Save to a file…"),
      h("p", {}, kept, h("label", { for: "codes-kept", class: "inline" }, "I have saved my recovery codes")),
      done));
  }
  if (!account.mfa_enabled) {
    const enrollment = state.enrollment;
    const body: (HTMLElement | null)[] = [];
    if (!enrollment) {
      body.push(h("button", { id: "enable-mfa", onclick: async () => {
        try {
          state.enrollment = await api.enrollTotp("Authenticator app");
          await render();
        } catch (e) {
          toast(message(e));
        }
      } }, "Turn on two-factor authentication"));
    } else {
      const qr = h("div", { class: "qr", role: "img", "aria-label": "QR code for your authenticator app", "data-raw": true });
      qr.innerHTML = enrollment.qr_svg; // SVG markup rendered by the server's qrcode crate
      body.push(
        h("p", {}, "Scan this with your authenticator app, or type the key in:"), qr,
        h("p", {}, h("code", { id: "totp-secret", "data-secret": enrollment.secret }, groupedKey(enrollment.secret)), " ",
          h("button", { id: "copy-secret", onclick: () => void navigator.clipboard.writeText(enrollment.secret).then(() => toast("Key copied")) }, "Copy key")),
        form("Confirm with a code", [field("code", "Code from the app", "text", "", { inputmode: "numeric", autocomplete: "one-time-code", id: "f-confirm-code" })], "Turn on", async (d) => {
          // A wrong code throws: the form shows it, and the same key stays for the next code.
          state.recoveryCodes = await api.confirmEnrollment(String(d.get("code")));
          state.enrollment = null;
          await refresh();
        }));
    }
    section.append(h("div", { class: "card" }, h("h2", {}, "Two-factor authentication is off"), ...body));
  } else {
    section.append(h("div", { class: "card" },
      h("h2", {}, "Two-factor authentication is on"),
      h("p", {}, account.offline_codes ? "This device can check codes offline (app lock)." : "This device does not hold the authenticator secret."),
      h("p", { id: "recovery-left" }, state.recoveryStatus ? `${state.recoveryStatus.remaining} of ${state.recoveryStatus.total} recovery codes left` : ""),
      form("Make new recovery codes", [field("code", "Code from your authenticator app (or a recovery code)", "text", "", { autocomplete: "one-time-code", id: "f-regenerate-code" })], "Make new codes", async (d) => {
        state.recoveryCodes = await api.regenerateRecoveryCodes(String(d.get("code")));
        state.codesKept = false;
        await refresh();
      }),
      form("Turn it off", [field("code", "Code from your authenticator app", "text", "", { inputmode: "numeric", id: "f-disable-code" })], "Turn off", async (d) => {
        if (!(await confirmDialog("Turn off two-factor authentication?", "Signing in will need only your password, on every device.", "Turn off"))) return;
        await api.disableMfa(String(d.get("code")));
        await refresh();
      })));
  }
  return section;
}

async function devicesView(): Promise<HTMLElement> {
  const list = await api.devices();
  return h("section", { "aria-label": "Devices" },
    h("ul", { class: "devices" }, ...list.map((d) => h("li", { "data-device": d.id },
      h("strong", {}, d.name), d.current ? h("span", { class: "pill" }, "This device") : null,
      h("span", { class: "muted" }, ` ${d.platform || "unknown"} · last seen ${ago(Date.parse(d.last_seen_at), Date.now())}`),
      state.renaming === d.id
        ? form(`Rename ${d.name}`, [field("device-name", "New name", "text", d.name, { id: `rename-${d.id}` })], "Save", async (data) => {
            await api.renameDevice(d.id, String(data.get("device-name")));
            state.renaming = null;
            await render();
          })
        : h("button", { onclick: () => { state.renaming = d.id; render(); } }, "Rename"),
      d.current ? null : h("button", { class: "danger", "data-revoke": d.id, onclick: async () => {
        if (!(await confirmDialog(`Sign out ${d.name}?`, `${d.name} stops syncing at once and forgets this account.`, "Revoke"))) return;
        await guard(api.revokeDevice(d.id));
        render();
      } }, "Revoke")))),
    h("button", { id: "sign-out-others", onclick: async () => {
      if (!(await confirmDialog("Sign out everywhere else?", "Every other device stops syncing until it signs in again.", "Sign out the others"))) return;
      await guard(api.signOut("others", false));
      render();
    } }, "Sign out everywhere else"),
    h("button", { class: "danger", id: "sign-out", onclick: () => void signOutFlow() }, "Sign out"));
}

async function activityView(): Promise<HTMLElement> {
  const entries = await api.activity();
  return h("section", { "aria-label": "Activity" },
    h("ul", { class: "activity" }, ...entries.map((e) => h("li", {},
      h("strong", {}, e.label), ` ${e.device_name ?? ""} `, h("small", { class: "muted" }, `${e.ip_address} · ${new Date(e.created_at).toLocaleString()}`)))),
    h("h3", {}, "On this device"), h("ul", { id: "event-log" }, ...state.log.map((l) => h("li", {}, l))));
}

/** The home view: the widgets of `dashboard.layout`, in its order, those it shows. */
async function dashboardView(): Promise<HTMLElement> {
  const layout = (state.settings.find((s) => s.key === "dashboard.layout")?.value as Widget[] | null) ?? [];
  const shown = visibleWidgets(layout);
  const [devices, activity] = await Promise.all([
    shown.includes("devices") ? api.devices().catch(() => null) : Promise.resolve(null),
    shown.includes("activity") ? api.activity().catch(() => null) : Promise.resolve(null),
  ]);
  const now = Date.now();
  const s = state.status;
  const account = state.account;
  const widget = (name: string, ...body: (Node | string | null)[]) =>
    h("section", { class: "widget card", id: `widget-${name}`, "data-widget": name, "aria-labelledby": `widget-${name}-title` },
      h("h2", { id: `widget-${name}-title` }, widgetLabel(name)), ...body);
  const widgets = shown.map((name) => {
    switch (name) {
      case "sync_status":
        return widget(name,
          h("p", {}, s?.label ?? "…"),
          h("p", { class: "muted" }, s && s.pending > 0 ? pendingText(s.pending) : "All changes synced"),
          h("p", { class: "muted" }, `Last synced ${ago(s?.last_synced_ms ?? null, now)}`));
      case "devices":
        return widget(name, devices
          ? h("ul", {}, ...devices.map((d) => h("li", {}, d.name, d.current ? " (this device)" : "", h("small", { class: "muted" }, ` · seen ${ago(Date.parse(d.last_seen_at), now)}`))))
          : h("p", { class: "muted" }, "Not available offline"),
          h("button", { onclick: () => go("devices") }, "Manage devices"));
      case "security":
        return widget(name,
          h("p", {}, account?.mfa_enabled ? "Two-factor authentication is on" : "Two-factor authentication is off"),
          h("p", { class: "muted" }, account?.email_verified ? "Email verified" : "Email not verified yet"),
          h("button", { onclick: () => go("security") }, "Security settings"));
      case "activity":
        return widget(name, activity
          ? h("ul", {}, ...activity.slice(0, 5).map((e) => h("li", {}, e.label, e.device_name ? ` · ${e.device_name}` : "", h("small", { class: "muted" }, ` · ${ago(Date.parse(e.created_at), now)}`))))
          : h("p", { class: "muted" }, "Not available offline"),
          h("button", { onclick: () => go("activity") }, "All activity"));
      default:
        return widget(name,
          h("ul", {}, ...state.settings.filter((x) => !x.sensitive && !x.key.startsWith("custom.") && x.key !== "dashboard.layout").slice(0, 6)
            .map((x) => h("li", {}, `${x.label}: ${x.spoken ?? "set"}`, x.pending ? h("small", { class: "muted" }, " · waiting to sync") : null))),
          h("button", { onclick: () => go("settings") }, "All settings"));
    }
  });
  return h("section", { "aria-label": "Home", class: "dashboard", id: "dashboard" },
    ...(widgets.length > 0 ? widgets : [h("p", { class: "muted" }, "Every widget is hidden: show some under Settings, Dashboard layout.")]));
}

let rendering = 0;
async function render(): Promise<void> {
  if (state.locked) return;
  const ticket = ++rendering;
  let body: HTMLElement;
  try {
    body = state.view === "dashboard" ? await dashboardView() : state.view === "settings" ? settingsView() : state.view === "security" ? await securityView() : state.view === "devices" ? await devicesView() : await activityView();
  } catch (e) {
    if (isError(e) && e.code === "locked") return void (await lockScreen());
    body = h("p", { class: "error" }, message(e));
  }
  // The lock may have come on while the view was read: it wins.
  if (ticket !== rendering || state.locked) return;
  show(header(), banner(), refusedBanner(), nav(), h("main", { role: "tabpanel", id: `panel-${state.view}`, "aria-labelledby": `tab-${state.view}`, tabindex: "0" }, body));
}

function onEngineEvent(event: EventReport): void {
  if (event.event === "status") {
    const before = state.status;
    statusEvents++;
    state.status = event;
    if (event.connection === "signed_out") return authScreen();
    if (event.connection === "step_up_required") return codeScreen();
    if (state.locked) return;
    // The queue changed (an edit sent, or acknowledged): the rows' "waiting to sync" markers
    // follow it, so read the settings again; otherwise the status line is all that changed.
    if (before && (before.pending !== event.pending || before.set_aside !== event.set_aside)) return void refresh();
    const shown = document.querySelector("header");
    if (shown) morph(shown, Array.from(header().childNodes));
    return;
  }
  const text = describe(event);
  if (text) {
    state.log.unshift(text);
    state.log = state.log.slice(0, 50);
    if (event.event === "superseded" && !state.settings.find((x) => x.key === event.key)?.sensitive) {
      // The value that lost, back as a new edit (which wins, being newer).
      const { key, lost } = event;
      toast(text, ["Keep mine", () => void guard(api.setSetting(key, lost))]);
    } else if (event.event !== "remote_change") toast(text);
  }
  void refresh();
}

async function start(): Promise<void> {
  const launch = await api.launch();
  state.launch = launch;
  document.title = `Lockstep (${launch.profile})`;
  uiState.open(launch.profile);
  const lastView = await uiState.get<View>("view").catch(() => null);
  if (VIEWS.some(([view]) => view === lastView)) state.view = lastView as View;
  for (const p of launch.problems) toast(p);
  if (!launch.connected) return connectScreen(launch);
  if (launch.locked) return void (await lockScreen());
  try {
    await api.account();
    await enterMain();
  } catch (e) {
    if (isError(e) && e.code === "locked") await lockScreen();
    else if (isError(e) && e.code === "code_needed") codeScreen();
    else if (isError(e) && e.code === "offline") await enterMain();
    else authScreen();
  }
}

// The app lock: after `security.lock_after_minutes` without input, if this device holds the
// authenticator secret.
for (const type of ["keydown", "pointerdown", "wheel"]) {
  window.addEventListener(type, () => (state.lastActivity = Date.now()), { passive: true });
}
setInterval(() => {
  const minutes = Number(state.settings.find((s) => s.key === "security.lock_after_minutes")?.value ?? 0);
  if (!state.locked && state.account?.offline_codes && minutes > 0 && Date.now() - state.lastActivity > minutes * 60_000) {
    void lockNow();
  }
}, 5_000);
window.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "l" && !state.locked && state.account?.offline_codes) {
    e.preventDefault();
    void lockNow();
  }
});
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
// Relative times ("2 min ago") move on by themselves.
setInterval(() => {
  if (!state.locked && document.querySelector("header")) void render();
}, 30_000);

/** Shows an error the window could not recover from, instead of a blank window. */
function fatal(e: unknown): void {
  show(h("div", { class: "card", role: "alert", id: "fatal" }, h("h2", {}, "Something went wrong"), h("p", { class: "error" }, message(e))));
}

window.addEventListener("unhandledrejection", (e) => fatal(e.reason));
try {
  onEvent(onEngineEvent);
  onSignOutAsked(() => void signOutFlow());
  start().catch(fatal);
} catch (e) {
  fatal(e);
}
