//! Config errors that do not cascade, in file order, through the real
//! `check-config`: an entity with a bad key still counts as defined, so
//! its references and its neighbours' own errors come out as they are,
//! and nothing is reported that only repeats an earlier error.

use std::process::Command;

/// The exact stderr of `check-config` for `toml` (file `c.toml`), with
/// the list after "expected one of" cut off (other keys get added).
fn errors(toml: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["check-config", "--config", "c.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(|l| match l.split_once(", expected one of") {
            Some((head, _)) => head.to_owned(),
            None => l.to_owned(),
        })
        .collect()
}

const HEAD: &str = r#"[system]
hostname = "relay.test"
default_server = "out"

[[listener]]
address = "127.0.0.1:2525"
auth = "none"

[server.out]
kind = "capture"
path = "outbox"
"#;

#[test]
fn a_bad_tenant_value_does_not_hide_its_applications() {
    let toml = format!(
        r#"{HEAD}
[server.b]
kind = "capture"
path = "b"

[tenant.t3]
sender = "s@relay.test"
display_name = "Bad\rName"

[application.a1]
tenant = "t3"
client_ips = ["127.0.0.1/32"]
primary = "b"
fallback = "b"

[application.a2]
tenant = "t3"
auth_user = "u"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$lNk2UO7CQcwBk9zQ8hlNXA$T9HyHENESuJe5oqz5Cobuqf9NzVKn+2ghNMzqAflZBI"

[application.a3]
tenant = "t3"
auth_user = "u"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$lNk2UO7CQcwBk9zQ8hlNXA$T9HyHENESuJe5oqz5Cobuqf9NzVKn+2ghNMzqAflZBI"
"#
    );
    assert_eq!(
        errors(&toml),
        [
            "c.toml:19: tenant.t3.display_name: contains the control character '\\r'; header values may not hold CR, LF, NUL or other control characters",
            "c.toml:25: application.a1.fallback: application \"a1\": primary and fallback are both \"b\"; they must differ",
            "c.toml:34: application.a3.auth_user: auth_user \"u\" is used by application \"a2\" (c.toml:29) and \"a3\"",
            "smarthost: 3 error(s); configuration refused",
        ]
    );
}

#[test]
fn an_unknown_key_in_the_only_listener_is_one_error() {
    let toml = HEAD.replace("auth = \"none\"\n", "auth = \"none\"\nbogus = 1\n")
        + "[tenant.t]\nsender = \"s@relay.test\"\n[application.a]\ntenant = \"t\"\nclient_ips = [\"127.0.0.1/32\"]\n";
    assert_eq!(
        errors(&toml),
        [
            "c.toml:8: listener[0].bogus: unknown field `bogus`",
            "smarthost: 1 error(s); configuration refused",
        ]
    );
    // A listener whose required address is invalid: one error, not also
    // "missing field" and "no [[listener]] is configured".
    let toml = toml
        .replace("address = \"127.0.0.1:2525\"", "address = 5")
        .replace("bogus = 1\n", "");
    assert_eq!(
        errors(&toml),
        [
            "c.toml:6: listener[0].address: invalid type: integer `5`, expected a string",
            "smarthost: 1 error(s); configuration refused",
        ]
    );
}

#[test]
fn errors_come_in_file_order() {
    // The unknown application key is found while reading, the bad
    // reference while validating; the report follows the file.
    let toml = format!(
        r#"{HEAD}
[tenant.t]
sender = "s@relay.test"

[application.first]
tenant = "nobody"
client_ips = ["127.0.0.1/32"]

[application.second]
tenant = "t"
colour = "blue"
"#
    );
    assert_eq!(
        errors(&toml),
        [
            "c.toml:17: application.first.tenant: application \"first\" names tenant \"nobody\", which is not defined",
            "c.toml:22: application.second.colour: unknown field `colour`",
            "smarthost: 2 error(s); configuration refused",
        ]
    );
}

#[test]
fn a_syntax_error_is_reported_alone() {
    let toml = HEAD.to_owned() + "[server.out]\nkind = \"capture\"\n";
    let e = errors(&toml);
    // Only the syntax errors: no "no [[listener]] is configured".
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].starts_with("c.toml:12: : TOML syntax error"), "{e:#?}");
    assert!(e[1].starts_with("c.toml:13: : TOML syntax error"), "{e:#?}");
}

#[test]
fn a_tenant_named_system_is_refused() {
    let toml = HEAD.to_owned()
        + "[tenant.system]\nsender = \"s@relay.test\"\n[application.a]\ntenant = \"system\"\nclient_ips = [\"127.0.0.1/32\"]\n";
    assert_eq!(
        errors(&toml),
        [
            "c.toml:12: tenant.system: the tenant name \"system\" is reserved (it names the system blacklist in metrics and the admin API); choose another name",
            "smarthost: 1 error(s); configuration refused",
        ]
    );
}
