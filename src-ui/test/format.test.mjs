// Unit tests of the window's view logic (compiled by `npm test` first).
import { test } from "node:test";
import assert from "node:assert/strict";
import { ago, connectionNote, describe, effectiveTheme, groupedKey, historyNote, historyValue, lockNote, mask, move, toggle } from "../dist/js/format.js";

test("times read as people say them", () => {
  const now = 1_000_000_000;
  assert.equal(ago(null, now), "never");
  assert.equal(ago(now - 2_000, now), "just now");
  assert.equal(ago(now - 90_000, now), "1 min ago");
  assert.equal(ago(now - 3 * 3_600_000, now), "3 h ago");
});

test("API keys are masked but for their last four characters", () => {
  assert.equal(mask("ghp_abcdef1234"), "••••••••1234");
  assert.equal(mask("abc"), "••••");
});

test("dashboard widgets move and hide", () => {
  const layout = [
    { widget: "sync_status", visible: true },
    { widget: "devices", visible: true },
    { widget: "security", visible: true },
  ];
  assert.deepEqual(move(layout, 1, -1).map((w) => w.widget), ["devices", "sync_status", "security"]);
  assert.deepEqual(move(layout, 0, -1), layout, "the first cannot move up");
  assert.deepEqual(move(layout, 2, 1), layout, "the last cannot move down");
  assert.equal(toggle(layout, 1)[1].visible, false);
  assert.equal(layout[1].visible, true, "the input is not changed");
});

test("the theme follows the choice, or the system", () => {
  assert.equal(effectiveTheme("dark", false), "dark");
  assert.equal(effectiveTheme("light", true), "light");
  assert.equal(effectiveTheme("system", true), "dark");
  assert.equal(effectiveTheme(undefined, false), "light");
});

test("events are described with the device", () => {
  assert.equal(
    describe({ event: "remote_change", key: "appearance.theme", label: "Theme", old: null, new: "dark", device_name: "Work laptop" }),
    "Theme changed on Work laptop",
  );
  assert.equal(
    describe({ event: "security", kind: "signed_out", by: "Desk" }),
    "This device was signed out by Desk",
  );
  assert.equal(
    describe({ event: "security", kind: "mfa", action: "recovery_code_used", device_name: "Desk" }),
    "A recovery code was used on Desk",
  );
});

test("a superseded edit names the device that won, or its id", () => {
  const lost = { event: "superseded", key: "appearance.theme", label: "Theme", lost: "light", value: "dark", device_id: "d-2" };
  assert.equal(describe({ ...lost, device_name: "Laptop" }), "Your Theme light was replaced by dark from Laptop");
  assert.equal(describe({ ...lost, device_name: null }), "Your Theme light was replaced by dark from d-2");
});

test("an ended session and a status change read as people say them", () => {
  assert.equal(describe({ event: "security", kind: "session_ended_here", by: null }), "This device's session was ended");
  assert.equal(describe({ event: "status", connection: "live", label: "Live", live: true, pending: 0, set_aside: 0, last_synced_ms: null }), "");
});

test("a refused edit says what was refused, why, and that the rest syncs", () => {
  const text = describe({ event: "set_aside", key: "appearance.theme", label: "Theme", reason: "hlc is too far ahead" });
  assert.match(text, /Theme/);
  assert.match(text, /too far ahead/);
  assert.match(text, /rest keeps syncing/);
});

test("a shared connection says who holds it; plain states need no note", () => {
  assert.match(connectionNote("shared"), /Another Lockstep window or "lockstep watch" holds/);
  assert.match(connectionNote("offline"), /cannot be reached/);
  assert.equal(connectionNote("live"), "");
  assert.equal(connectionNote("signed_out"), "");
});

test("history values read as people say them, a reset as the default", () => {
  assert.equal(historyValue(null), "(default)");
  assert.equal(historyValue("dark"), "dark");
  assert.equal(historyValue(true), "on");
  assert.equal(historyValue(false), "off");
  assert.equal(historyValue(15), "15");
  assert.equal(historyValue("••••••"), "••••••");
  assert.equal(historyValue([{ widget: "devices", visible: true }]), '[{"widget":"devices","visible":true}]');
});

test("a version says where it came from and when", () => {
  const now = Date.parse("2026-03-01T12:00:00Z");
  const version = { version: 7, key: "appearance.theme", value: "dark", changed_at: "2026-03-01T11:57:00Z" };
  assert.equal(
    historyNote({ ...version, origin: "arrived", origin_label: "arrived", changed_by: "Work laptop" }, now),
    "arrived from Work laptop · 3 min ago",
  );
  assert.equal(historyNote({ ...version, origin: "here", origin_label: "set here", changed_by: "this device" }, now), "set here · 3 min ago");
  assert.equal(
    historyNote({ ...version, origin: "device_only", origin_label: "this device only", changed_by: "this device" }, now),
    "this device only · 3 min ago",
  );
});

test("an authenticator key reads in groups of four", () => {
  assert.equal(groupedKey("JBSWY3DPEHPK3PXP"), "JBSW Y3DP EHPK 3PXP");
  assert.equal(groupedKey("JBSWY3DPEH"), "JBSW Y3DP EH");
  assert.equal(groupedKey(" JBSW Y3DP "), "JBSW Y3DP");
});

test("the lock screen says why a code did not unlock", () => {
  assert.equal(lockNote({ failures: 2, retry_in_ms: null }), "That code is not valid (or was already used): try the next one");
  assert.equal(lockNote({ failures: 5, retry_in_ms: 14_200 }), "Too many wrong codes: try again in 15 s");
  assert.equal(lockNote({ failures: 9, retry_in_ms: 240_000 }), "Too many wrong codes: try again in 4 min");
});

test("a two-factor change names the device it came from, without \"on on\"", () => {
  assert.equal(describe({ event: "security", kind: "mfa_enabled", device_name: "Device 1" }), "Two-factor authentication was turned on from Device 1");
  assert.equal(describe({ event: "security", kind: "mfa_disabled", device_name: null }), "An authenticator was removed");
});

test("a replaced edit names the value that lost and the one that won", () => {
  const event = { event: "superseded", key: "appearance.theme", label: "Theme", lost: "dark", value: "light", device_id: "d1", device_name: "Work laptop" };
  assert.equal(describe(event), "Your Theme dark was replaced by light from Work laptop");
});
