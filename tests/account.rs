//! Account basics (issue 15) through the app's IPC commands under `tauri::test` (mock runtime,
//! no window), against a real lockstep-cloud on loopback: the emailed confirmation code and
//! its resend, a forgotten password, a device renamed elsewhere, and the recovery codes.
//! The harness is the one of `tests/commands.rs`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Cloud, Instance, totp_code, unique};

const PASSWORD: &str = "Correct horse 42";

fn credentials(email: &str, password: &str) -> Value {
    json!({"email": email, "password": password})
}

/// A 6-digit code that is not `right` (nor any of `also`).
fn wrong_code(right: &str, also: &[&str]) -> String {
    (0..10)
        .map(|d| d.to_string().repeat(6))
        .find(|c| c != right && !also.contains(&c.as_str()))
        .unwrap()
}

/// Issue 15: the sign-up mail offered a code that nothing could take, and there was no way to
/// have it sent again. The code confirms the address (a wrong or retired one is refused, in
/// words about a code); a resend mails a new code, but at most once per interval per address,
/// and answers the same either way; signed out, a resend takes the address.
#[test]
fn the_emailed_code_confirms_the_address_and_a_resend_mails_at_most_once_an_interval() {
    let cloud = Cloud::start_with(|c| c.rate_limits.email_interval_seconds = 3);
    let base = tempfile::tempdir().unwrap();
    let a = Instance::connected(base.path(), &unique("code-a"), &cloud, "Work laptop");
    let email = "code@example.com";
    a.ok("sign_up", credentials(email, PASSWORD));
    let signed_up = Instant::now();
    let first = cloud.wait_mail(email, 1);
    assert_eq!(a.ok("account", json!({}))["email_verified"], false);

    // Within the interval a resend mails nothing, and its answer does not tell.
    assert_eq!(a.ok("resend_confirmation", json!({})), Value::Null);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        cloud.mail_count(email),
        1,
        "a second mail within the interval"
    );

    // After it, a new mail with a new code; the first code is retired.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(signed_up.elapsed()));
    assert_eq!(a.ok("resend_confirmation", json!({})), Value::Null);
    let second = cloud.wait_mail(email, 2);

    let wrong = wrong_code(&second, &[&first]);
    let refused = a.refused("confirm_email_code", json!({"code": wrong}));
    assert_eq!(refused["code"], "refused", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("code"),
        "{refused}"
    );
    assert_eq!(refused["detail"], "otp_expired, HTTP 403", "{refused}");
    if first != second {
        let retired = a.refused("confirm_email_code", json!({"code": first}));
        assert_eq!(retired["code"], "refused", "{retired}");
    }
    assert_eq!(a.ok("account", json!({}))["email_verified"], false);

    // The right code, typed with a space, confirms the address for the signed-in account.
    let typed = format!("{} {}", &second[..3], &second[3..]);
    assert_eq!(
        a.ok("confirm_email_code", json!({"code": typed})),
        Value::Null
    );
    let account = a.ok("account", json!({}));
    assert_eq!(account["email_verified"], true, "{account}");
    assert_eq!(account["email"], email);
    // Nothing is left to confirm.
    let confirmed = a.refused("resend_confirmation", json!({}));
    assert_eq!(confirmed["code"], "invalid", "{confirmed}");

    // Signed out, a resend names the address, and answers alike for one without an account.
    let b = Instance::connected(base.path(), &unique("code-b"), &cloud, "Home desktop");
    assert_eq!(
        b.refused("resend_confirmation", json!({}))["code"],
        "signed_out"
    );
    assert_eq!(
        b.ok(
            "resend_confirmation",
            json!({"email": "nobody@example.com"})
        ),
        Value::Null
    );
    assert_eq!(
        b.ok("resend_confirmation", json!({"email": email})),
        Value::Null
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cloud.mail_count("nobody@example.com"), 0);
    assert_eq!(cloud.mail_count(email), 2, "the address is confirmed");
}

/// Issue 15: no "Forgot password". Asking for a reset answers the same for any address; the
/// emailed code (after a weak password and a wrong code are refused, neither using it up)
/// sets the new password and signs this device in, every other session ends, and only the new
/// password signs in afterwards.
#[test]
fn a_forgotten_password_is_reset_with_the_emailed_code_and_only_the_new_one_signs_in() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let email = "forgot@example.com";
    let new_password = "Battery staple 77";
    let a = Instance::connected(base.path(), &unique("forgot-a"), &cloud, "Work laptop");
    let b = Instance::connected(base.path(), &unique("forgot-b"), &cloud, "Home desktop");
    a.ok("sign_up", credentials(email, PASSWORD));
    assert_eq!(b.ok("sign_in", credentials(email, PASSWORD)), "done");
    b.wait_live("B live");
    a.ok("sign_out", json!({"scope": "this_device"}));
    cloud.wait_mail(email, 1);

    let known = a.ok("request_password_reset", json!({"email": email}));
    let unknown = a.ok(
        "request_password_reset",
        json!({"email": "nobody@example.com"}),
    );
    assert_eq!(known, unknown, "the answer tells nobody who has an account");
    assert_eq!(known, Value::Null);
    let code = cloud.wait_mail(email, 2);
    assert!(
        cloud.server.mail_to(email).unwrap()[0]
            .subject
            .contains("Reset"),
        "the newest mail is the reset"
    );
    assert_eq!(cloud.mail_count("nobody@example.com"), 0);

    let weak = a.refused(
        "reset_password",
        json!({"email": email, "code": code, "newPassword": "short"}),
    );
    assert_eq!(weak["code"], "invalid", "{weak}");
    let wrong = a.refused(
        "reset_password",
        json!({"email": email, "code": wrong_code(&code, &[]), "newPassword": new_password}),
    );
    assert_eq!(wrong["code"], "refused", "{wrong}");
    assert_eq!(
        a.refused("account", json!({}))["code"],
        "signed_out",
        "a refused reset signs nobody in"
    );

    assert_eq!(
        a.ok(
            "reset_password",
            json!({"email": email, "code": code, "newPassword": new_password}),
        ),
        "done"
    );
    assert_eq!(a.ok("account", json!({}))["email"], email, "signed in here");
    // The reset ended every other session.
    b.wait_event("B signed out", |e| {
        e["event"] == "security" && e["kind"] == "signed_out"
    });
    // The code was used up.
    a.ok("sign_out", json!({"scope": "this_device"}));
    let again = a.refused(
        "reset_password",
        json!({"email": email, "code": code, "newPassword": "Another one 99"}),
    );
    assert_eq!(again["code"], "refused", "{again}");

    let old = a.refused("sign_in", credentials(email, PASSWORD));
    assert_eq!(old["code"], "refused", "{old}");
    assert_eq!(a.ok("sign_in", credentials(email, new_password)), "done");
    assert_eq!(b.ok("sign_in", credentials(email, new_password)), "done");
}

/// Issue 15: a device renamed on another device kept its old name locally (and signing in
/// again named it back on the server). B takes the name A gives it within seconds, describes
/// itself by it when it signs in again, and keeps it across a restart; a device renamed by
/// itself takes the name at once.
#[test]
fn a_device_renamed_elsewhere_takes_the_new_name_here_and_keeps_it() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let email = "rename@example.com";
    let b_profile = unique("rename-b");
    let a = Instance::connected(base.path(), &unique("rename-a"), &cloud, "Work laptop");
    let b = Instance::connected(base.path(), &b_profile, &cloud, "Home desktop");
    a.ok("sign_up", credentials(email, PASSWORD));
    assert_eq!(b.ok("sign_in", credentials(email, PASSWORD)), "done");
    a.wait_live("A live");
    b.wait_live("B live");
    assert_eq!(b.ok("account", json!({}))["device_name"], "Home desktop");

    let devices = a.ok("devices", json!({}));
    let id_of = |current: bool| {
        devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["current"] == current)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a_id, b_id) = (id_of(true), id_of(false));
    a.ok("rename_device", json!({"deviceId": b_id, "name": "Den PC"}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.ok("account", json!({}))["device_name"] != "Den PC" {
        assert!(Instant::now() < deadline, "B never took its new name");
        std::thread::sleep(Duration::from_millis(50));
    }

    // B describes itself by its new name from now on: signing in again, it keeps it on the
    // server (it used to name itself back).
    b.ok("sign_out", json!({"scope": "this_device"}));
    assert_eq!(b.ok("sign_in", credentials(email, PASSWORD)), "done");
    let listed = a.ok("devices", json!({}));
    let b_listed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == b_id.as_str())
        .unwrap();
    assert_eq!(b_listed["name"], "Den PC", "{listed}");

    // Renamed by itself: at once.
    a.ok(
        "rename_device",
        json!({"deviceId": a_id, "name": "Office laptop"}),
    );
    assert_eq!(a.ok("account", json!({}))["device_name"], "Office laptop");

    // B starts again: the name was kept.
    drop(b);
    let b = Instance::start(base.path(), &b_profile);
    assert_eq!(b.ok("launch", json!({}))["connected"], true);
    assert_eq!(b.ok("account", json!({}))["device_name"], "Den PC");
    assert_eq!(b.ok("lock_screen", json!({}))["device_name"], "Den PC");
}

/// Issue 15: the recovery codes' count and renewal. The count drops by one when a code is
/// used; a new set needs a fresh second factor (a wrong code changes nothing), and the old
/// codes stop working. Every new command is refused while the app lock is on.
#[test]
fn recovery_codes_count_down_and_a_new_set_retires_the_old_one() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let email = "codes@example.com";
    let a_profile = unique("codes-a");
    let a = Instance::connected(base.path(), &a_profile, &cloud, "Work laptop");
    a.ok("sign_up", credentials(email, PASSWORD));
    a.ok(
        "confirm_email_code",
        json!({"code": cloud.wait_mail(email, 1)}),
    );
    let status = |instance: &Instance| instance.ok("recovery_codes_status", json!({}));
    assert_eq!(status(&a), json!({"total": 0, "remaining": 0}));

    let enrollment = a.ok("enroll_totp", json!({"friendlyName": "Phone"}));
    let secret = enrollment["secret"].as_str().unwrap().to_owned();
    let old = a.ok("confirm_enrollment", json!({"code": totp_code(&secret, 0)}));
    let old: Vec<String> = serde_json::from_value(old).unwrap();
    assert_eq!(old.len(), 10);
    assert_eq!(status(&a), json!({"total": 10, "remaining": 10}));

    // B signs in with a recovery code: one fewer left.
    let b = Instance::connected(base.path(), &unique("codes-b"), &cloud, "Home desktop");
    assert_eq!(b.ok("sign_in", credentials(email, PASSWORD)), "code_needed");
    b.ok("verify_recovery_code", json!({"code": old[0]}));
    assert_eq!(status(&a), json!({"total": 10, "remaining": 9}));
    assert_eq!(status(&b), json!({"total": 10, "remaining": 9}));

    // A new set needs a fresh code: a wrong one changes nothing.
    let valid: Vec<String> = (-1..=2).map(|step| totp_code(&secret, step)).collect();
    let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
    let wrong = a.refused(
        "regenerate_recovery_codes",
        json!({"code": wrong_code(valid[1], &valid)}),
    );
    assert_eq!(wrong["code"], "refused", "{wrong}");
    assert_eq!(status(&a), json!({"total": 10, "remaining": 9}));
    // A code of a later step than the one used to enroll (a code is accepted once).
    let new = a.ok(
        "regenerate_recovery_codes",
        json!({"code": totp_code(&secret, 1)}),
    );
    let new: Vec<String> = serde_json::from_value(new).unwrap();
    assert_eq!(new.len(), 10);
    assert!(new.iter().all(|c| !old.contains(c)), "a new set");
    assert_eq!(status(&a), json!({"total": 10, "remaining": 10}));

    // The old codes stop working; the new ones work.
    b.ok("sign_out", json!({"scope": "this_device"}));
    assert_eq!(b.ok("sign_in", credentials(email, PASSWORD)), "code_needed");
    let stale = b.refused("verify_recovery_code", json!({"code": old[1]}));
    assert_eq!(stale["code"], "refused", "{stale}");
    b.ok("verify_recovery_code", json!({"code": new[0]}));
    assert_eq!(status(&a), json!({"total": 10, "remaining": 9}));

    // Without the phone, a recovery code is the fresh proof (and is used up by it).
    let newest = a.ok("regenerate_recovery_codes", json!({"code": new[1]}));
    let newest: Vec<String> = serde_json::from_value(newest).unwrap();
    assert!(newest.iter().all(|c| !new.contains(c)), "a new set");
    assert_eq!(status(&a), json!({"total": 10, "remaining": 10}));

    // Locked: none of the new commands answers, not even those that work signed out.
    a.ok(
        "set_setting",
        json!({"key": "security.require_code_on_unlock", "value": true}),
    );
    drop(a);
    let a = Instance::start(base.path(), &a_profile);
    assert_eq!(a.ok("launch", json!({}))["locked"], true);
    let reset = json!({"email": email, "code": "123456", "newPassword": "Battery staple 77"});
    for (cmd, args) in [
        ("resend_confirmation", json!({"email": email})),
        ("confirm_email_code", json!({"code": "123456"})),
        ("request_password_reset", json!({"email": email})),
        ("reset_password", reset),
        (
            "change_password",
            json!({"newPassword": "Battery staple 77"}),
        ),
        ("recovery_codes_status", json!({})),
        ("regenerate_recovery_codes", json!({"code": newest[0]})),
    ] {
        let error = a.refused(cmd, args);
        assert_eq!(error["code"], "locked", "{cmd}: {error}");
    }
}
