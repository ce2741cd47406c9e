// View logic with no DOM and no IPC, so it is unit-tested with `node --test`.

import type { Connection } from "./bindings/Connection";
import type { EventReport } from "./bindings/EventReport";
import type { HistoryDto } from "./bindings/HistoryDto";
import type { SecurityEvent } from "./bindings/SecurityEvent";
import type { JsonValue } from "./bindings/serde_json/JsonValue";

/** "3 min ago", "just now", "2 h ago", or a date. */
export function ago(thenMs: number | null, nowMs: number): string {
  if (thenMs === null) return "never";
  const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
  if (s < 10) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(thenMs).toISOString().slice(0, 10);
}

/** An authenticator key in groups of four, for typing it in: `JBSW Y3DP EHPK 3PXP`. */
export function groupedKey(secret: string): string {
  return secret.replace(/\s+/g, "").replace(/(.{4})(?=.)/g, "$1 ");
}

/** What the lock screen says after a try that did not unlock. */
export function lockNote(outcome: { failures: number; retry_in_ms: number | null }): string {
  if (outcome.retry_in_ms !== null && outcome.retry_in_ms > 0) {
    const seconds = Math.ceil(outcome.retry_in_ms / 1000);
    const wait = seconds < 60 ? `${seconds} s` : `${Math.ceil(seconds / 60)} min`;
    return `Too many wrong codes: try again in ${wait}`;
  }
  return "That code is not valid (or was already used): try the next one";
}

/** A dashboard widget's name as the window shows it. */
export function widgetLabel(widget: string): string {
  switch (widget) {
    case "sync_status":
      return "Sync status";
    case "devices":
      return "Devices";
    case "security":
      return "Security";
    case "activity":
      return "Recent activity";
    case "settings":
      return "Settings";
    default:
      return widget.replaceAll("_", " ");
  }
}

/** The widgets a layout shows, in its order. */
export function visibleWidgets(layout: Widget[]): string[] {
  return layout.filter((w) => w.visible).map((w) => w.widget);
}

/** "1 change waiting", "3 changes waiting". */
export function pendingText(pending: number): string {
  return pending === 1 ? "1 change waiting" : `${pending} changes waiting`;
}

/** An API key shown masked: the last four characters only. */
export function mask(secret: string): string {
  if (secret.length <= 4) return "••••";
  return "••••••••" + secret.slice(-4);
}

export interface Widget {
  widget: string;
  visible: boolean;
}

/** The layout with widget `index` moved by `delta` (-1 up, +1 down); unchanged at the ends. */
export function move(layout: Widget[], index: number, delta: number): Widget[] {
  const target = index + delta;
  if (index < 0 || index >= layout.length || target < 0 || target >= layout.length) {
    return layout.slice();
  }
  const next = layout.slice();
  const [item] = next.splice(index, 1);
  next.splice(target, 0, item);
  return next;
}

/** The layout with widget `index` shown or hidden. */
export function toggle(layout: Widget[], index: number): Widget[] {
  return layout.map((w, i) => (i === index ? { ...w, visible: !w.visible } : w));
}

/** What the connection state means, for the status line; empty where its label says it all. */
export function connectionNote(connection: Connection): string {
  switch (connection) {
    case "shared":
      return "Another Lockstep window or \"lockstep watch\" holds this profile's connection; this window follows it";
    case "polling":
      return "No live connection: checking for changes regularly";
    case "offline":
      return "The server cannot be reached: your changes wait on this device";
    case "paused":
      return "Your changes wait on this device until you resume sync";
    case "connecting":
    case "live":
    case "step_up_required":
    case "signed_out":
      return "";
  }
}

/** A value from a setting's history as the list shows it: `(default)` for a reset. */
export function historyValue(value: JsonValue | null): string {
  if (value === null) return "(default)";
  if (value === true) return "on";
  if (value === false) return "off";
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

/** Where a version came from and when: "set here · 3 min ago", "arrived from Work laptop · just now". */
export function historyNote(version: HistoryDto, nowMs: number): string {
  const when = ago(Date.parse(version.changed_at), nowMs);
  switch (version.origin) {
    case "arrived":
      return `${version.origin_label} from ${version.changed_by} · ${when}`;
    case "here":
    case "device_only":
      return `${version.origin_label} · ${when}`;
  }
}

/** The theme to apply: `light` or `dark` (a `system` choice follows the OS). */
export function effectiveTheme(choice: unknown, systemDark: boolean): "light" | "dark" {
  if (choice === "light" || choice === "dark") return choice;
  return systemDark ? "dark" : "light";
}

/** A one-line description of an engine event for the in-app log (settings named by their
 * schema `label`, which the event carries with the key). Empty for a status change. */
export function describe(event: EventReport): string {
  switch (event.event) {
    case "remote_change":
      return `${event.label} changed${on(event.device_name)}`;
    case "superseded":
      return `Your ${event.label} ${historyValue(event.lost)} was replaced by ${historyValue(event.value)}${from(event.device_name ?? event.device_id)}`;
    case "security":
      return securityText(event);
    case "set_aside":
      return `The server refused your change to ${event.label}: ${event.reason}. It is kept aside; the rest keeps syncing`;
    case "problem":
      return event.message;
    case "status":
      return "";
  }
}

/** " from Work laptop" (where an action was taken), or nothing when unknown. */
function from(device: string | null): string {
  return device ? ` from ${device}` : "";
}

/** A security event as people say it. */
export function securityText(event: SecurityEvent): string {
  switch (event.kind) {
    case "email_verified":
      return "Your email address is verified";
    case "email_changed":
      return `Your email address is now ${event.email}`;
    case "mfa_enabled":
      return `Two-factor authentication was turned on${from(event.device_name)}`;
    case "mfa_disabled":
      return `An authenticator was removed${from(event.device_name)}`;
    case "mfa":
      return mfaText(event.action) + on(event.device_name);
    case "device_signed_in":
      return `${event.name} signed in`;
    case "device_revoked":
      return `${event.name} was signed out${by(event.by)}`;
    case "session_ended_here":
      return `This device's session was ended${by(event.by)}`;
    case "step_up_required":
      return "Enter a code from your authenticator to keep syncing";
    case "signed_out":
      return `This device was signed out${by(event.by)}`;
  }
}

const on = (device: string | null) => (device ? ` on ${device}` : "");
const by = (device: string | null) => (device ? ` by ${device}` : "");

/** A two-factor event (an audit action) as people say it. */
function mfaText(action: string): string {
  switch (action) {
    case "recovery_codes_generated":
      return "New recovery codes were created";
    case "recovery_code_used":
      return "A recovery code was used";
    case "recovery_codes_deleted":
      return "The recovery codes were deleted";
    case "mfa_verification_failed":
      return "A wrong two-factor code was entered";
    case "mfa_locked_out":
      return "Too many wrong codes: two-factor authentication is locked for a few minutes";
    case "mfa_secret_handed_over":
      return "The authenticator secret was copied to a device";
    default:
      return `Two-factor authentication: ${action}`;
  }
}
