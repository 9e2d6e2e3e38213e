//! Table-driven tests of loading and validation: every rule, with the key
//! and line each error must name.

use super::*;
use std::path::Path;
use std::time::Duration;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$JY4AKD9RcTjChNbtThTUMA$rk7JviL/djMbUfBfn9QJ+4YBCzeaGYZdmQYIM2Ei14M";

/// A small valid config the cases extend.
fn base() -> String {
    format!(
        r#"[system]
hostname = "relay.test"
default_server = "sys"

[[listener]]
address = "127.0.0.1:2525"
auth = "optional"

[server.sys]
host = "smtp.sys.test"

[server.own]
tenant = "t"
host = "smtp.t.test"

[tenant.t]
sender = "info@t.test"

[application.a]
tenant = "t"
auth_user = "a"
password_hash = "{HASH}"
primary = "own"
"#
    )
}

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str(text, "test.toml", Path::new("/nonexistent-base"))
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.0,
    }
}

/// (name, extra TOML appended to base, key the error names, part of the message, line or 0 for "any")
type Case = (&'static str, &'static str, &'static str, &'static str);

#[test]
fn base_is_valid() {
    let c = load(&base()).unwrap();
    assert_eq!(c.applications["a"].primary.as_deref(), Some("own"));
    assert_eq!(c.system.hostname, "relay.test");
}

#[test]
fn validation_rules() {
    let cases: &[Case] = &[
        (
            "unknown key",
            "[server.x]\nhost = \"h\"\nhots = 1\n",
            "server.x.hots",
            "unknown field `hots`",
        ),
        ("unknown top-level key", "[sytem]\n", "sytem", "unknown key"),
        (
            "dkim key that is not a key",
            "[[dkim]]\ndomain = \"t.test\"\nselector = \"s1\"\nprivate_key = \"not a key\"\n",
            "dkim[0].private_key",
            "not a PEM private key",
        ),
        (
            "dkim key of an unknown tenant",
            "[[dkim]]\ndomain = \"t.test\"\nselector = \"s1\"\nprivate_key = \"x\"\ntenant = \"nobody\"\n",
            "dkim[0].tenant",
            "not defined",
        ),
        (
            "dkim domain that is not a domain",
            "[[dkim]]\ndomain = \"t test\"\nselector = \"s1\"\nprivate_key = \"x\"\n",
            "dkim[0].domain",
            "not a domain name",
        ),
        (
            "dkim missing key",
            "[[dkim]]\ndomain = \"t.test\"\nselector = \"s1\"\n",
            "dkim[0]",
            "missing field `private_key`",
        ),
        (
            "proxy protocol without trusted peers",
            "[[listener]]\naddress = \"127.0.0.1:2600\"\nproxy_protocol = true\n",
            "listener[1].proxy_trusted",
            "needs proxy_trusted",
        ),
        (
            "bad proxy_trusted network",
            "[[listener]]\naddress = \"127.0.0.1:2600\"\nproxy_protocol = true\nproxy_trusted = [\"10.0.0.0/33\"]\n",
            "listener[1].proxy_trusted[0]",
            "prefix length is too long",
        ),
        (
            "bad type",
            "[server.x]\nhost = \"h\"\nport = \"twenty-five\"\n",
            "server.x.port",
            "invalid type",
        ),
        (
            "bad size",
            "[limits]\nmax_message_size = \"25XB\"\n",
            "limits.max_message_size",
            "invalid size unit",
        ),
        (
            "bad duration",
            "[limits]\ncommand_timeout = \"5 minutes\"\n",
            "limits.command_timeout",
            "invalid duration",
        ),
        (
            "bad limit",
            "[server.x]\nhost = \"h\"\nlimit = \"5/month\"\n",
            "server.x.limit",
            "invalid limit",
        ),
        (
            "bad address",
            "[tenant.u]\nsender = \"not an address\"\n",
            "tenant.u.sender",
            "invalid address",
        ),
        (
            "bad cidr",
            "[application.b]\ntenant = \"t\"\nclient_ips = [\"10.0.0.1/8\"]\n",
            "application.b.client_ips[0]",
            "host bits",
        ),
        (
            "CR LF in display name",
            "[application.b]\ntenant = \"t\"\ndisplay_name = \"Shop\\r\\nBcc: x@y.test\"\n",
            "application.b.display_name",
            "control character",
        ),
        (
            "CR LF in subject prefix",
            "[tenant.u]\ntest_mode = { redirect_to = \"q@t.test\", subject_prefix = \"[T]\\n\" }\n",
            "tenant.u.test_mode.subject_prefix",
            "control character",
        ),
        (
            "missing server",
            "[application.b]\ntenant = \"t\"\nprimary = \"nope\"\n",
            "application.b.primary",
            "application \"b\" refers to server \"nope\", which is not defined",
        ),
        (
            "missing fallback server",
            "[application.b]\ntenant = \"t\"\nprimary = \"own\"\nfallback = \"gone\"\n",
            "application.b.fallback",
            "server \"gone\", which is not defined",
        ),
        (
            "missing tenant",
            "[application.b]\ntenant = \"nobody\"\n",
            "application.b.tenant",
            "tenant \"nobody\", which is not defined",
        ),
        (
            "application without tenant",
            "[application.b]\nprimary = \"sys\"\n",
            "application.b",
            "needs `tenant`",
        ),
        (
            "missing parent",
            "[tenant.u]\nparent = \"ghost\"\n",
            "tenant.u.parent",
            "parent \"ghost\"",
        ),
        (
            "missing tenant default server",
            "[tenant.u]\ndefault_server = \"nope\"\n",
            "tenant.u.default_server",
            "tenant \"u\" refers to server \"nope\"",
        ),
        (
            "missing listener application",
            "[[listener]]\naddress = \"127.0.0.1:2526\"\napplication = \"ghost\"\n",
            "listener[1].application",
            "application \"ghost\"",
        ),
        (
            "primary == fallback",
            "[application.b]\ntenant = \"t\"\nprimary = \"own\"\nfallback = \"own\"\n",
            "application.b.fallback",
            "must differ",
        ),
        (
            "fallback with system primary",
            "[application.b]\ntenant = \"t\"\nprimary = \"sys\"\nfallback = \"own\"\n",
            "application.b.fallback",
            "fallback is implied",
        ),
        (
            "parent cycle",
            "[tenant.u]\nparent = \"v\"\n[tenant.v]\nparent = \"u\"\n",
            "tenant.u.parent",
            "parent cycle: u -> v -> u",
        ),
        (
            "self parent",
            "[tenant.u]\nparent = \"u\"\n",
            "tenant.u.parent",
            "parent cycle: u -> u",
        ),
        (
            "duplicate auth_user",
            "[application.b]\ntenant = \"t\"\nauth_user = \"a\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$JY4AKD9RcTjChNbtThTUMA$rk7JviL/djMbUfBfn9QJ+4YBCzeaGYZdmQYIM2Ei14M\"\n",
            "application.b.auth_user",
            "used by application \"a\"",
        ),
        (
            "auth_user without hash",
            "[application.b]\ntenant = \"t\"\nauth_user = \"b\"\n",
            "application.b.auth_user",
            "no password_hash",
        ),
        (
            "hash not argon2id",
            "[application.b]\ntenant = \"t\"\nauth_user = \"b\"\npassword_hash = \"$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg\"\n",
            "application.b.password_hash",
            "expected argon2id",
        ),
        (
            "server of a tenant without own_servers",
            "[tenant.u]\nown_servers = false\n[server.us]\ntenant = \"u\"\nhost = \"h\"\n",
            "server.us.tenant",
            "own_servers = false",
        ),
        (
            "location inherits own_servers = false",
            "[tenant.u]\nown_servers = false\n[tenant.w]\nparent = \"u\"\n[server.ws]\ntenant = \"w\"\nhost = \"h\"\n",
            "server.ws.tenant",
            "own_servers = false",
        ),
        (
            "application uses system server without permission",
            "[tenant.u]\nuse_system_server = false\n[application.b]\ntenant = \"u\"\nprimary = \"sys\"\n",
            "application.b.primary",
            "may not use system servers",
        ),
        (
            "route uses system server without permission",
            "[tenant.u]\nuse_system_server = false\n[server.us]\ntenant = \"u\"\nhost = \"h\"\n[[route]]\nsender = \"@x.test\"\nserver = \"sys\"\ntenant = \"u\"\n",
            "route[0].server",
            "may not use system servers",
        ),
        (
            "application uses another tenant's server",
            "[tenant.u]\n[application.b]\ntenant = \"u\"\nprimary = \"own\"\n",
            "application.b.primary",
            "tenant \"u\" may use only its own",
        ),
        (
            "application with no server at all",
            "[tenant.u]\nuse_system_server = false\n[application.b]\ntenant = \"u\"\n",
            "application.b",
            "has no server",
        ),
        (
            "open relay: auth none, no binding, no client_ips",
            "[[listener]]\naddress = \"127.0.0.1:2526\"\nauth = \"none\"\n",
            "listener[1].auth",
            "cannot identify",
        ),
        (
            "open relay: client_ips that cannot reach a loopback listener",
            "[[listener]]\naddress = \"127.0.0.1:2526\"\nauth = \"none\"\n[application.b]\ntenant = \"t\"\nclient_ips = [\"10.0.0.0/8\"]\n",
            "listener[1].auth",
            "cannot identify",
        ),
        (
            "client_ips matching everything",
            "[application.b]\ntenant = \"t\"\nclient_ips = [\"0.0.0.0/0\"]\n",
            "application.b.client_ips[0]",
            "open relay",
        ),
        (
            "client_ips covering half the Internet",
            "[application.b]\ntenant = \"t\"\nclient_ips = [\"10.0.0.0/8\", \"128.0.0.0/1\"]\n",
            "application.b.client_ips[1]",
            "open relay",
        ),
        (
            "bound application on a wildcard listener without AUTH",
            "[[listener]]\naddress = \"0.0.0.0:2526\"\nauth = \"none\"\napplication = \"a\"\n",
            "listener[1].application",
            "open relay",
        ),
        (
            "bound application on a public address without AUTH",
            "[[listener]]\naddress = \"192.0.2.7:2526\"\nauth = \"optional\"\napplication = \"a\"\n",
            "listener[1].application",
            "open relay",
        ),
        (
            "networks of unrelated tenants overlap",
            "[tenant.u]\n[application.b]\ntenant = \"t\"\nclient_ips = [\"10.0.0.0/8\"]\n[application.c]\ntenant = \"u\"\nclient_ips = [\"10.9.0.0/16\"]\n",
            "application.c.client_ips[0]",
            "unrelated tenants",
        ),
        (
            "zero connect timeout",
            "[server.x]\nhost = \"h\"\nconnect_timeout = \"0s\"\n",
            "server.x.connect_timeout",
            "greater than zero",
        ),
        (
            "zero max_connections",
            "[server.x]\nhost = \"h\"\nmax_connections = 0\n",
            "server.x.max_connections",
            "at least 1",
        ),
        (
            "max_connections on a capture server",
            "[server.x]\nkind = \"capture\"\npath = \"o\"\nmax_connections = 2\n",
            "server.x.max_connections",
            "",
        ),
        (
            "cluster without redis",
            "[cluster]\non_redis_error = \"closed\"\n",
            "cluster.redis",
            "Redis URL",
        ),
        (
            "cluster with a URL that is not Redis",
            "[cluster]\nredis = \"http://127.0.0.1:6379\"\n",
            "cluster.redis",
            "not a Redis URL",
        ),
        (
            "unknown on_redis_error",
            "[cluster]\nredis = \"redis://127.0.0.1/\"\non_redis_error = \"open\"\n",
            "cluster.on_redis_error",
            "",
        ),
        (
            "absurd duration",
            "[limits]\ndata_timeout = \"200000000000000d\"\n",
            "limits.data_timeout",
            "longer than a year",
        ),
        (
            "the same network for two applications",
            "[application.b]\ntenant = \"t\"\nclient_ips = [\"10.0.0.0/8\"]\n[application.c]\ntenant = \"t\"\nclient_ips = [\"10.0.0.0/8\"]\n",
            "application.c.client_ips[0]",
            "ambiguous",
        ),
        (
            "TLS listener without [tls]",
            "[[listener]]\naddress = \"127.0.0.1:2526\"\ntls = \"implicit\"\n",
            "listener[1].tls",
            "needs a [tls] section",
        ),
        (
            "duplicate listener address",
            "[[listener]]\naddress = \"127.0.0.1:2525\"\n",
            "listener[1].address",
            "already used",
        ),
        (
            "bad admin address",
            "[admin]\naddress = \"nowhere\"\n",
            "admin.address",
            "invalid address \"nowhere\": expected IP:port",
        ),
        (
            "bad listener address",
            "[[listener]]\naddress = \"somewhere\"\n",
            "listener[1].address",
            "invalid address",
        ),
        (
            "capture without path",
            "[server.c]\nkind = \"capture\"\n",
            "server.c",
            "needs `path`",
        ),
        (
            "smtp key on capture",
            "[server.c]\nkind = \"capture\"\npath = \"o\"\nport = 25\n",
            "server.c.port",
            "does not apply",
        ),
        (
            "smtp without host",
            "[server.c]\nport = 25\n",
            "server.c",
            "needs `host`",
        ),
        (
            "password without username",
            "[server.c]\nhost = \"h\"\npassword = \"x\"\n",
            "server.c.password",
            "needs a username",
        ),
        (
            "secret from unset env",
            "[server.c]\nhost = \"h\"\nusername = \"u\"\npassword = { env = \"SMARTHOST_SURELY_UNSET_12345\" }\n",
            "server.c.password",
            "SMARTHOST_SURELY_UNSET_12345 is not set",
        ),
        (
            "secret from missing file",
            "[server.c]\nhost = \"h\"\nusername = \"u\"\npassword = { file = \"missing.pw\" }\n",
            "server.c.password",
            "cannot read secret file",
        ),
        (
            "graph needs its keys",
            "[server.g]\nkind = \"graph\"\n",
            "server.g",
            "needs tenant_id, client_id, client_secret, mailbox",
        ),
        (
            "graph authority must be https",
            "[server.g]\nkind = \"graph\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\nmailbox = \"m@x.example\"\nauthority = \"http://login.example\"\n",
            "server.g.authority",
            "expected https://",
        ),
        (
            "graph keys on an SMTP server",
            "[server.c]\nhost = \"h\"\nclient_id = \"c\"\n",
            "server.c.client_id",
            "does not apply",
        ),
        (
            "xoauth2 without oauth",
            "[server.c]\nhost = \"h\"\nusername = \"u\"\nauth = \"xoauth2\"\n",
            "server.c.auth",
            "needs `oauth",
        ),
        (
            "oauth without a grant",
            "[server.c]\nhost = \"h\"\nusername = \"u\"\nauth = \"xoauth2\"\noauth = { token_url = \"https://t.example/token\", client_id = \"c\", client_secret = \"s\" }\n",
            "server.c.oauth",
            "needs `scope`",
        ),
        (
            "oauth without xoauth2",
            "[server.c]\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\noauth = { token_url = \"https://t.example/token\", client_id = \"c\", client_secret = \"s\", scope = \"x\" }\n",
            "server.c.oauth",
            "only with auth",
        ),
        (
            "xoauth2 with a password",
            "[server.c]\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\nauth = \"xoauth2\"\noauth = { token_url = \"https://t.example/token\", client_id = \"c\", client_secret = \"s\", scope = \"x\" }\n",
            "server.c.password",
            "uses tokens",
        ),
        (
            "test mode without redirect",
            "[tenant.u]\ntest_mode = { subject_prefix = \"[T] \" }\n",
            "tenant.u.test_mode",
            "needs redirect_to",
        ),
        ("system default owned by a tenant", "", "", ""),
        (
            "route to missing server",
            "[[route]]\nsender = \"@x.test\"\nserver = \"nope\"\n",
            "route[0].server",
            "not defined",
        ),
        (
            "route with bad filter",
            "[[route]]\nsender = \"x y\"\nserver = \"sys\"\n",
            "route[0].sender",
            "invalid address",
        ),
        (
            "zero limit",
            "[limits]\nmax_recipients = 0\n",
            "limits.max_recipients",
            "greater than zero",
        ),
        (
            "short lines",
            "[limits]\nmax_line_length = 80\n",
            "limits.max_line_length",
            "at least 1000",
        ),
        (
            "bad log filter",
            "[log]\nlevel = \"info,[[[\"\n",
            "log.level",
            "invalid log filter",
        ),
    ];
    for (name, extra, key, msg) in cases {
        if key.is_empty() {
            continue;
        }
        let text = format!("{}\n{extra}", base());
        let errs = errors(&text);
        let found = errs
            .iter()
            .find(|e| e.key == *key && e.message.contains(msg));
        assert!(
            found.is_some(),
            "case {name:?}: want key {key:?} / {msg:?}, got:\n{}",
            errs.iter().map(|e| format!("  {e}\n")).collect::<String>()
        );
        let e = found.unwrap();
        assert_eq!(e.file, "test.toml", "case {name:?}");
        // The line must point into the appended part, where the key is.
        let first_extra_line = base().lines().count() + 2;
        assert!(
            e.line >= first_extra_line,
            "case {name:?}: line {} < {first_extra_line}: {e}",
            e.line
        );
        let line_text = text.lines().nth(e.line - 1).unwrap_or_default();
        assert!(
            !line_text.trim().is_empty(),
            "case {name:?}: line {} is blank",
            e.line
        );
    }
}

#[test]
fn system_default_must_be_a_system_server() {
    let text = base().replace("default_server = \"sys\"", "default_server = \"own\"");
    let errs = errors(&text);
    assert!(
        errs.iter().any(|e| e.key == "system.default_server"
            && e.line == 3
            && e.message.contains("must be a system server")),
        "{errs:?}"
    );
}

#[test]
fn every_error_is_collected() {
    let text = format!(
        "{}\n[server.x]\nhost = \"h\"\nport = \"bad\"\nhots = 1\nsecurity = \"tls\"\n[application.b]\ntenant = \"t\"\nprimary = \"own\"\nfallback = \"own\"\n[application.c]\ntenant = \"t\"\nprimary = \"missing\"\n",
        base()
    );
    let errs = errors(&text);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "server.x.port",
        "server.x.hots",
        "server.x.security",
        "application.b.fallback",
        "application.c.primary",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
}

#[test]
fn syntax_errors_name_the_line() {
    let errs = errors("[system]\nhostname = \"x\"\n\n[server.a\nhost = 1\n");
    assert!(
        errs.iter()
            .any(|e| e.line == 4 && e.message.contains("syntax")),
        "{errs:?}"
    );
}

#[test]
fn defaults_apply() {
    let c = load(&base()).unwrap();
    assert_eq!(c.limits.max_message_size, 25 << 20);
    assert_eq!(c.limits.max_recipients, 100);
    assert_eq!(c.limits.command_timeout.as_secs(), 300);
    let ServerKind::Smtp(s) = &c.servers["sys"].kind else {
        panic!()
    };
    assert_eq!((s.port, s.security), (587, Security::Auto));
    assert_eq!(s.helo_name, "relay.test");
    assert_eq!(c.system.delivery, DeliveryMode::Queue);
    assert_eq!(c.listeners[0].name, "127.0.0.1:2525");
}

/// `[[listener]]` is declared once (raw.rs): defaults on the fields, the
/// name filled in from the address; a bad address is its only error (the
/// listener counts as defined, so no "no [[listener]]"), and a duplicate
/// address after it still names the right listener.
#[test]
fn listener_defaults_and_a_bad_address_alone() {
    let c = load(&format!(
        "{}\n[[listener]]\nname = \"\"\naddress = \"localhost:2526\"\n",
        base()
    ))
    .unwrap();
    let l = &c.listeners[1];
    assert_eq!(l.name, "127.0.0.1:2526");
    assert_eq!((l.tls, l.auth), (ListenerTls::None, ListenerAuth::Optional));
    assert!(!l.allow_plaintext_auth && !l.allow_bare_lf && !l.proxy_protocol);

    let only = base().replace("127.0.0.1:2525", "somewhere");
    let e = errors(&only);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].key, "listener[0].address");
    assert_eq!(e[0].line, 6);
    assert!(
        e[0].message.starts_with("invalid address \"somewhere\""),
        "{e:?}"
    );

    let e = errors(&format!(
        "{}\n[[listener]]\naddress = \"x\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n",
        base()
    ));
    let keys: Vec<_> = e
        .iter()
        .map(|e| (e.key.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            (
                "listener[1].address",
                "invalid address \"x\": expected IP:port such as \"127.0.0.1:2525\" or \"[::]:587\""
            ),
            (
                "listener[2].address",
                "address 127.0.0.1:2525 is already used by listener[0]"
            ),
        ]
    );
}

/// Server keys with a default on their field (raw.rs) are still refused
/// on a server of another kind, because `load` records the keys the file
/// set; a key refused for its value is not reported twice.
#[test]
fn server_defaults_and_keys_of_another_kind() {
    let c = load(&base()).unwrap();
    let ServerKind::Smtp(s) = &c.servers["sys"].kind else {
        panic!()
    };
    assert_eq!(s.connect_timeout, Duration::from_secs(10));
    assert_eq!(s.command_timeout, Duration::from_secs(60));
    assert_eq!(s.data_timeout, Duration::from_secs(600));
    assert_eq!(
        (s.pool_size, s.pool_idle_timeout),
        (100, Duration::from_secs(30))
    );
    assert!(!s.accept_invalid_certs);
    assert_eq!(c.servers["sys"].limit_counts, LimitCounts::Messages);

    let e = errors(&format!(
        "{}\n[server.c]\nkind = \"capture\"\npath = \"o\"\npool_size = 3\nca_file = \"x\"\nconnect_timeout = \"soon\"\n[server.g]\nhost = \"h\"\nauthority = \"https://a.test\"\n",
        base()
    ));
    let got: Vec<_> = e
        .iter()
        .map(|e| (e.key.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "server.c.pool_size",
                "`pool_size` does not apply to a server of kind capture"
            ),
            (
                "server.c.ca_file",
                "`ca_file` does not apply to a server of kind capture"
            ),
            (
                "server.c.connect_timeout",
                "invalid duration \"soon\": expected e.g. \"30s\", \"5m\", \"1h30m\""
            ),
            (
                "server.g.authority",
                "`authority` does not apply to a server of kind smtp"
            ),
        ]
    );

    let c = load(&format!(
        "{}\n[server.x]\nhost = \"h\"\nlimit_counts = \"messages\"\n",
        base()
    ))
    .unwrap();
    assert!(
        c.warnings.iter().any(|w| w.key == "server.x.limit_counts"),
        "{:?}",
        c.warnings
    );
}

/// `[server.NAME]` is read in two parts (`SmtpSettings` and the rest):
/// errors in both keep their line, an unknown key still lists every
/// server key, and a server that is not a table is one error.
#[test]
fn server_table_parts_keep_lines_and_the_key_list() {
    assert_eq!(
        raw::keys_of::<raw::SmtpSettings>(),
        [
            "security",
            "username",
            "password",
            "auth",
            "connect_timeout",
            "command_timeout",
            "data_timeout",
            "accept_invalid_certs",
            "pool_size",
            "pool_idle_timeout"
        ]
    );
    use raw::{RawServer, ServerKindName::*};
    assert_eq!(RawServer::kinds_of("pool_size"), Some(&[Smtp][..]));
    assert_eq!(RawServer::kinds_of("host"), Some(&[Smtp][..]));
    assert_eq!(RawServer::kinds_of("ca_file"), Some(&[Smtp, Graph][..]));
    assert_eq!(RawServer::kinds_of("path"), Some(&[Capture][..]));
    assert_eq!(RawServer::kinds_of("authority"), Some(&[Graph][..]));
    assert_eq!(RawServer::kinds_of("limit"), None);
    let text = format!(
        "{}\n[server.x]\nhost = \"h\"\nhots = \"h\"\npool_size = \"many\"\nport = \"x\"\n",
        base()
    );
    let line = |k: &str| text.lines().position(|l| l.starts_with(k)).unwrap() + 1;
    let e = errors(&text);
    let got: Vec<_> = e
        .iter()
        .map(|e| {
            (
                e.line,
                e.key.as_str(),
                e.message.split(", expected").next().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (line("hots"), "server.x.hots", "unknown field `hots`"),
            (
                line("pool_size"),
                "server.x.pool_size",
                "invalid type: string \"many\""
            ),
            (line("port"), "server.x.port", "invalid type: string \"x\""),
        ]
    );
    let expected = e[0].message.split_once("expected one of ").unwrap().1;
    for k in [
        "`kind`",
        "`host`",
        "`security`",
        "`pool_idle_timeout`",
        "`oauth`",
    ] {
        assert!(expected.contains(k), "{expected}");
    }

    let e = errors(&format!("{}\n[server]\nx = 5\n", base()));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].key, "server.x");
}

/// A test mode is checked as it is read (`TestModeSetting`): the error
/// names the `test_mode` table (its header line when written as one), and
/// the tenant stays defined, so its application adds no error.
#[test]
fn test_mode_without_redirect_is_one_error_at_its_table() {
    let text = format!(
        "{}\n[tenant.t.test_mode]\n\nsubject_prefix = \"[T] \"\n",
        base()
    );
    let header = text
        .lines()
        .position(|l| l == "[tenant.t.test_mode]")
        .unwrap()
        + 1;
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (e[0].key.as_str(), e[0].line),
        ("tenant.t.test_mode", header)
    );
    assert!(
        e[0].message.starts_with("test mode needs redirect_to"),
        "{e:?}"
    );

    let c = load(&format!(
        "{}\n[tenant.u]\ntest_mode = {{ enabled = false }}\n[tenant.v]\ntest_mode = {{ redirect_to = \"qa@t.test\" }}\n",
        base()
    ))
    .unwrap();
    assert_eq!(c.tenants["u"].test_mode, Some(TestModeSetting::Off));
    assert_eq!(c.tenants["u"].name, "u");
    assert!(
        matches!(&c.tenants["v"].test_mode, Some(TestModeSetting::On(t)) if t.redirect_to.as_str() == "qa@t.test")
    );
}

/// `[application.NAME]` is declared once: its name comes from the table
/// key; a missing `tenant` is "needs `tenant`", a bad one only its own
/// error, an empty one "not defined" (as before the merge of the twins).
#[test]
fn application_tenant_missing_bad_or_empty() {
    let c = load(&base()).unwrap();
    assert_eq!(c.applications["a"].name, "a");
    assert_eq!(c.applications["a"].tenant, "t");
    for (tenant, want) in [
        ("", "application \"b\" needs `tenant`"),
        (
            "tenant = 5\n",
            "invalid type: integer `5`, expected a string",
        ),
        (
            "tenant = \"\"\n",
            "application \"b\" names tenant \"\", which is not defined",
        ),
    ] {
        let e = errors(&format!(
            "{}\n[application.b]\n{tenant}primary = \"sys\"\n",
            base()
        ));
        let got: Vec<_> = e.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(got, [want], "{tenant:?}");
    }
}

/// Sections declared with `section!` (raw.rs): a key left out takes the
/// default written beside it, whether the table is absent or present with
/// other keys; a key that is set wins; an unknown key is still refused.
#[test]
fn declared_sections_default_each_missing_key() {
    let absent = load(&base()).unwrap();
    assert_eq!(absent.health.failures, 3);
    assert_eq!(absent.health.cooldown, Duration::from_secs(30));
    assert_eq!(absent.reload.interval, Duration::from_secs(2));
    assert!(absent.reload.watch && absent.reload.probe);
    assert_eq!(absent.log.level, "info");
    assert_eq!(absent.log.format, LogFormat::Text);
    assert_eq!(absent.queue.concurrency, 100);
    assert_eq!(absent.limits.max_session_time, Duration::from_secs(3600));
    // [system] is present in base() with other keys.
    assert!(absent.system.enabled);
    assert_eq!(absent.system.blacklist_action, BlacklistAction::Drop);
    assert_eq!(absent.system.spool, Path::new("/nonexistent-base/spool"));
    assert_eq!(absent.system.worker_threads, None);
    assert!(absent.admin.is_none());
    let admin = load(&format!("{}\n[admin]\naddress = \"localhost:0\"\n", base())).unwrap();
    let admin = admin.admin.unwrap();
    assert!(!admin.status_public && admin.token.is_none());

    let partial = load(&format!(
        "{}\n[health]\nfailures = 7\n[limits]\nmax_recipients = 5\n[log]\nformat = \"json\"\n",
        base()
    ))
    .unwrap();
    assert_eq!(partial.health.failures, 7);
    assert_eq!(partial.health.cooldown, Duration::from_secs(30));
    assert_eq!(partial.limits.max_recipients, 5);
    assert_eq!(partial.limits.max_message_size, 25 << 20);
    assert_eq!(partial.limits.unidentified_timeout, Duration::from_secs(20));
    assert_eq!(partial.log.format, LogFormat::Json);
    assert_eq!(partial.log.level, "info");

    let e = errors(&format!("{}\n[health]\nfailure = 7\n", base()));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].key, "health.failure");
    assert!(e[0].message.starts_with("unknown field `failure`"), "{e:?}");
}

#[test]
fn microsoft_365_servers() {
    let text = format!(
        "{}\n[server.g]\nkind = \"graph\"\ntenant_id = \"tid\"\nclient_id = \"cid\"\nclient_secret = \"sec\"\nmailbox = \"relay@acme.example\"\ngraph_url = \"https://graph.example/\"\n\n[server.x]\nhost = \"smtp.office365.com\"\nauth = \"xoauth2\"\nusername = \"relay@acme.example\"\noauth = {{ token_url = \"https://login.example/t/token\", client_id = \"c\", client_secret = \"s\", refresh_token = \"r\" }}\n",
        base()
    );
    let c = load(&text).unwrap();
    let g = &c.servers["g"];
    let ServerKind::Graph(gs) = &g.kind else {
        panic!()
    };
    assert_eq!(
        gs.oauth.token_url,
        "https://login.microsoftonline.com/tid/oauth2/v2.0/token"
    );
    assert_eq!(gs.graph_url, "https://graph.example");
    assert_eq!(
        gs.oauth.grant,
        super::OAuthGrant::ClientCredentials {
            scope: "https://graph.example/.default".into()
        }
    );
    assert_eq!(
        g.sender.as_ref().map(ToString::to_string).as_deref(),
        Some("relay@acme.example"),
        "the mailbox is the fixed sender"
    );
    let ServerKind::Smtp(x) = &c.servers["x"].kind else {
        panic!()
    };
    let o = x.oauth.as_ref().unwrap();
    assert!(
        matches!(&o.grant, super::OAuthGrant::RefreshToken { scope: None, refresh_token } if refresh_token.expose() == "r")
    );
    assert_eq!(x.auth, Some(UpstreamAuth::Xoauth2));
}

/// `[admin]` and `[cluster]` hold their `Secret`s as written and read
/// them in place, relative to the config file: a `{ file }` secret is read
/// and watched, a missing one is an error at its key and line.
#[test]
fn admin_and_cluster_secrets_are_read_in_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    std::fs::write(dir.path().join("redis"), "redis://127.0.0.1:6379/\n").unwrap();
    let text = format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = {{ file = \"token\" }}\n[cluster]\nredis = {{ file = \"redis\" }}\n",
        base()
    );
    std::fs::write(dir.path().join("main.toml"), &text).unwrap();
    let c = load_file(&dir.path().join("main.toml")).unwrap();
    let admin = c.admin.as_ref().unwrap();
    assert_eq!(admin.token.as_ref().map(|t| t.expose()), Some("t0ken"));
    assert_eq!(format!("{:?}", admin.token), "Some(<redacted>)");
    let cluster = c.cluster.as_ref().unwrap();
    assert_eq!(cluster.redis.expose(), "redis://127.0.0.1:6379/");
    assert_eq!(cluster.on_redis_error, OnRedisError::Local);
    for f in ["token", "redis"] {
        assert!(
            c.referenced.contains(&dir.path().join(f)),
            "{:?}",
            c.referenced
        );
    }

    let text = format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = {{ env = \"SMARTHOST_TEST_NO_SUCH_VAR\" }}\n[cluster]\nredis = {{ file = \"nothing-here\" }}\n",
        base()
    );
    let line = |k: &str| text.lines().position(|l| l.starts_with(k)).unwrap() + 1;
    let e = errors(&text);
    let got: Vec<_> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (line("token"), "admin.token"),
            (line("redis"), "cluster.redis")
        ]
    );
    assert!(
        e[0].message
            .contains("SMARTHOST_TEST_NO_SUCH_VAR is not set"),
        "{e:?}"
    );
    assert!(e[1].message.starts_with("cannot read secret file"), "{e:?}");
}

#[test]
fn includes_follow_ownership_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    let main = format!("include = [\"tenants/*.toml\"]\n{}", base());
    std::fs::write(dir.path().join("main.toml"), &main).unwrap();
    std::fs::write(
        dir.path().join("tenants/good.toml"),
        "[tenant.g]\nparent = \"t\"\n[server.gs]\ntenant = \"g\"\nhost = \"h\"\n[application.ga]\ntenant = \"g\"\nprimary = \"gs\"\nfallback = \"own\"\n[[route]]\nsender = \"@g.test\"\nserver = \"gs\"\n",
    )
    .unwrap();
    let c = load_file(&dir.path().join("main.toml")).unwrap();
    assert!(c.applications.contains_key("ga"));
    assert_eq!(c.files.len(), 2);

    std::fs::write(
        dir.path().join("tenants/bad.toml"),
        "[system]\nenabled = false\n[server.stolen]\ntenant = \"t\"\nhost = \"h\"\n[server.sysx]\nhost = \"h\"\n[application.ba]\ntenant = \"t\"\n[server.own]\ntenant = \"t\"\nhost = \"h\"\n",
    )
    .unwrap();
    let errs = load_file(&dir.path().join("main.toml")).unwrap_err().0;
    let bad = dir.path().join("tenants/bad.toml").display().to_string();
    let want = [
        ("system", 1, "only allowed in the main config file"),
        ("server.stolen.tenant", 4, "which this file does not define"),
        (
            "server.sysx",
            6,
            "included files may only define their own tenants' servers",
        ),
        (
            "application.ba.tenant",
            9,
            "which this file does not define",
        ),
        ("server.own", 10, "defined twice"),
    ];
    for (key, line, msg) in want {
        assert!(
            errs.iter().any(|e| e.file == bad
                && e.key == key
                && e.line == line
                && e.message.contains(msg)),
            "want {key}:{line} {msg:?} in\n{}",
            errs.iter().map(|e| format!("  {e}\n")).collect::<String>()
        );
    }
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let c = load_file(&path).unwrap_or_else(|e| panic!("{:#?}", e.0));
    assert_eq!(c.applications.len(), 3);
    assert!(c.tls.is_some());
    assert!(c.tenants["acme-berlin"].parent.as_deref() == Some("acme"));
}

#[test]
fn the_embedded_default_is_valid() {
    let c = load_default().unwrap();
    assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:2525");
    assert!(matches!(c.servers["outbox"].kind, ServerKind::Capture(_)));
    assert!(c.application_by_ip("127.0.0.1".parse().unwrap()).is_some());
    assert!(c.application_by_ip("10.0.0.1".parse().unwrap()).is_none());
}

#[test]
fn secrets_never_show_in_debug_output() {
    let text = format!(
        "{}\n[server.p]\nhost = \"h\"\nusername = \"u\"\npassword = \"SENTINEL-PASSWORD-4711\"\n",
        base()
    );
    let c = load(&text).unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("SENTINEL-PASSWORD-4711"));
    assert!(dump.contains("<redacted>"));
}

#[test]
fn source_hash_matches_the_loaded_hash_and_sees_includes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    let main = dir.path().join("main.toml");
    std::fs::write(&main, format!("include = [\"tenants/*.toml\"]\n{}", base())).unwrap();
    std::fs::write(dir.path().join("tenants/a.toml"), "[tenant.a]\n").unwrap();
    let c = load_file(&main).unwrap();
    assert_eq!(source_hash(&main), c.hash);
    // A new included file changes it; so does an edit that breaks the file.
    std::fs::write(dir.path().join("tenants/b.toml"), "[tenant.b]\n").unwrap();
    let with_b = source_hash(&main);
    assert_ne!(with_b, c.hash);
    assert_eq!(load_file(&main).unwrap().hash, with_b);
    std::fs::write(&main, "[broken").unwrap();
    assert_ne!(source_hash(&main), with_b);
}

#[test]
fn a_config_without_listeners_is_refused() {
    // An empty file (for example one read while it is being rewritten)
    // must never become a relay that accepts nothing.
    for text in ["", "[system]\nhostname = \"x\"\n"] {
        let errs = errors(text);
        assert!(
            errs.iter()
                .any(|e| e.key == "listener" && e.message.contains("no [[listener]]")),
            "{errs:?}"
        );
    }
}

#[test]
fn private_bindings_and_nested_networks_of_one_tenant_are_fine() {
    let text = format!(
        "{}\n[[listener]]\naddress = \"10.0.0.5:2526\"\nauth = \"none\"\napplication = \"a\"\n[tenant.w]\nparent = \"t\"\n[application.b]\ntenant = \"t\"\nclient_ips = [\"10.0.0.0/8\"]\n[application.c]\ntenant = \"w\"\nclient_ips = [\"10.9.0.0/16\", \"fd00::/8\"]\n",
        base()
    );
    let c = load(&text).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.key == "listener[1].application")
    );
}

/// An Ed25519 key in PEM, made with ring.
fn ed25519_pem() -> String {
    use base64::Engine;
    let der =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    )
}

#[test]
fn dkim_keys_in_included_files_belong_to_their_tenants() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    std::fs::write(dir.path().join("g.pem"), ed25519_pem()).unwrap();
    let main = format!(
        "include = [\"tenants/*.toml\"]\n{}\n[[dkim]]\ndomain = \"T.test\"\nselector = \"sys\"\nprivate_key = {{ file = \"g.pem\" }}\n",
        base()
    );
    std::fs::write(dir.path().join("main.toml"), &main).unwrap();
    let key = "private_key = { file = \"../g.pem\" }";
    std::fs::write(
        dir.path().join("tenants/good.toml"),
        format!("[tenant.g]\nparent = \"t\"\n[[dkim]]\ndomain = \"g.test\"\nselector = \"s1\"\n{key}\ntenant = \"g\"\n"),
    )
    .unwrap();
    let c = load_file(&dir.path().join("main.toml")).unwrap();
    let keys: Vec<(&str, Option<&str>)> = c
        .dkim
        .iter()
        .map(|k| (k.domain.as_str(), k.tenant.as_deref()))
        .collect();
    assert_eq!(keys, [("t.test", None), ("g.test", Some("g"))]);
    // The key file is watched for reloads.
    assert!(c.referenced.iter().any(|p| p.ends_with("g.pem")));

    std::fs::write(
        dir.path().join("tenants/bad.toml"),
        format!("[tenant.b]\n[[dkim]]\ndomain = \"b.test\"\nselector = \"s1\"\n{key}\n[[dkim]]\ndomain = \"t.test\"\nselector = \"s2\"\n{key}\ntenant = \"t\"\n"),
    )
    .unwrap();
    let errs = load_file(&dir.path().join("main.toml")).unwrap_err().0;
    let bad = dir.path().join("tenants/bad.toml").display().to_string();
    for (key, line) in [("dkim[0].tenant", 2), ("dkim[1].tenant", 10)] {
        assert!(
            errs.iter().any(|e| e.file == bad
                && e.key == key
                && e.line == line
                && e.message.contains("must name a tenant that file defines")),
            "want {key}:{line} in\n{}",
            errs.iter().map(|e| format!("  {e}\n")).collect::<String>()
        );
    }
}

#[test]
fn the_watcher_hash_ignores_files_it_cannot_read_now() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    let main = dir.path().join("main.toml");
    std::fs::write(&main, format!("include = [\"tenants/*.toml\"]\n{}", base())).unwrap();
    std::fs::write(dir.path().join("tenants/a.toml"), "[tenant.a]\n").unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "x").unwrap();
    let c = load_file(&main).unwrap();
    let h = watch_hash(&main, std::slice::from_ref(&cert)).unwrap();
    assert!(h.starts_with(&c.hash));
    // A missing file is a change (it may appear); a file that cannot be
    // read (here a directory: EISDIR, as EMFILE would be) is not.
    assert!(watch_hash(&main, &[dir.path().join("missing.pem")]).is_some());
    assert!(watch_hash(&main, &[dir.path().join("tenants")]).is_none());
    std::fs::create_dir(dir.path().join("tenants/b.toml")).unwrap();
    assert!(watch_hash(&main, std::slice::from_ref(&cert)).is_none());
}

#[test]
fn a_missing_literal_include_is_an_error_a_glob_may_match_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main.toml");
    std::fs::write(&main, format!("include = [\"tenants/*.toml\"]\n{}", base())).unwrap();
    assert!(load_file(&main).is_ok());
    std::fs::write(&main, format!("include = [\"tenant.toml\"]\n{}", base())).unwrap();
    let errs = load_file(&main).unwrap_err().0;
    assert!(
        errs.iter()
            .any(|e| e.key == "include" && e.message.contains("does not exist")),
        "{errs:?}"
    );
}
