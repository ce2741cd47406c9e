// View logic with no DOM and no IPC, so it is unit-tested with `node --test`.
/** "3 min ago", "just now", "2 h ago", or a date. */
export function ago(thenMs, nowMs) {
    if (thenMs === null)
        return "never";
    const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
    if (s < 10)
        return "just now";
    if (s < 60)
        return `${s} s ago`;
    if (s < 3600)
        return `${Math.floor(s / 60)} min ago`;
    if (s < 86400)
        return `${Math.floor(s / 3600)} h ago`;
    return new Date(thenMs).toISOString().slice(0, 10);
}
/** An API key shown masked: the last four characters only. */
export function mask(secret) {
    if (secret.length <= 4)
        return "••••";
    return "••••••••" + secret.slice(-4);
}
/** The layout with widget `index` moved by `delta` (-1 up, +1 down); unchanged at the ends. */
export function move(layout, index, delta) {
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
export function toggle(layout, index) {
    return layout.map((w, i) => (i === index ? { ...w, visible: !w.visible } : w));
}
/** The theme to apply: `light` or `dark` (a `system` choice follows the OS). */
export function effectiveTheme(choice, systemDark) {
    if (choice === "light" || choice === "dark")
        return choice;
    return systemDark ? "dark" : "light";
}
/** A one-line description of an engine event for the in-app log (settings named by their
 * schema `label`, which the shell sends with the key). */
export function describe(event) {
    const on = (d) => (typeof d === "string" && d ? ` on ${d}` : "");
    switch (event.kind) {
        case "remote_change":
            return `${String(event.label)} changed${on(event.device_name)}`;
        case "superseded":
            return `Your change to ${String(event.label)} was replaced by a newer one${on(event.winner_device)}`;
        case "security":
            return securityText(String(event.event), event.device_name, event.detail);
        case "set_aside":
            return `The server refused your change to ${String(event.label)}: ${String(event.reason)}. It is kept aside; the rest keeps syncing`;
        case "problem":
            return String(event.message);
        default:
            return "";
    }
}
export function securityText(name, device, detail) {
    const on = device ? ` on ${device}` : "";
    const by = device ? ` by ${device}` : "";
    switch (name) {
        case "email_verified":
            return "Your email address is verified";
        case "email_changed":
            return `Your email address is now ${detail ?? ""}`;
        case "mfa_enabled":
            return `Two-factor authentication was turned on${on}`;
        case "mfa_disabled":
            return `An authenticator was removed${on}`;
        case "device_signed_in":
            return `${device ?? "A new device"} signed in`;
        case "device_revoked":
            return `${detail ?? "A device"} was signed out${by}`;
        case "step_up_required":
            return "Enter a code from your authenticator to keep syncing";
        case "signed_out":
            return `This device was signed out${by}`;
        case "mfa":
            return mfaText(detail) + on;
        default:
            return detail ? `${name}: ${detail}` : name;
    }
}
/** A two-factor event (an audit action) as people say it. */
function mfaText(action) {
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
            return `Two-factor authentication: ${action ?? "changed"}`;
    }
}
