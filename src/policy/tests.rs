//! Table-driven tests of identification, inheritance, blacklist, test mode
//! and chain building.

use super::*;
use crate::config::{Config, load_str};
use std::path::Path;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$JY4AKD9RcTjChNbtThTUMA$rk7JviL/djMbUfBfn9QJ+4YBCzeaGYZdmQYIM2Ei14M";

fn cfg() -> Config {
    let text = format!(
        r#"
[system]
hostname = "relay.test"
default_server = "sys"
fallback_server = "sys2"
default_sender = "noreply@relay.test"
blacklist = ["@blocked.test", "dropme@x.test"]
blacklist_action = "drop"

[[listener]]
name = "bound"
address = "127.0.0.1:2526"
auth = "none"
application = "pos"

[[listener]]
name = "open"
address = "0.0.0.0:2525"

[server.sys]
host = "sys.test"
sender = "fixed@provider.test"

[server.sys2]
host = "sys2.test"

[server.hq]
tenant = "hq"
host = "hq.test"

[server.hq-billing]
tenant = "hq"
host = "billing.hq.test"

[server.store-own]
tenant = "store"
host = "store.test"

[server.other]
tenant = "other"
host = "other.test"

[tenant.hq]
sender = "info@hq.test"
display_name = "HQ"
reply_to = "service@hq.test"
default_server = "hq"
blacklist = ["Former@Example.com", "@competitor.test"]
blacklist_action = "drop"

[tenant.store]
parent = "hq"
display_name = "HQ Store"
blacklist = ["@rejected.test"]
blacklist_action = "reject"
test_mode = {{ redirect_to = "qa@hq.test", subject_prefix = "[TEST] ", allow = ["@hq.test", "boss@partner.test"] }}

[tenant.closed]
use_system_server = false
enabled = false
default_server = "closed-own"

[server.closed-own]
tenant = "closed"
host = "closed.test"

[tenant.other]

[application.shop]
tenant = "hq"
auth_user = "shop"
password_hash = "{HASH}"
primary = "hq"
fallback = "sys"
display_name = "HQ Shop"
sender = "shop@hq.test"

[application.pos]
tenant = "store"

[application.kiosk]
tenant = "store"
client_ips = ["10.0.0.0/8"]
primary = "store-own"
test_mode = {{ enabled = false }}

[application.kiosk-lab]
tenant = "store"
client_ips = ["10.9.0.0/16"]

[application.closed-app]
tenant = "closed"

[application.other-app]
tenant = "other"
client_ips = ["192.0.2.0/24"]

[[route]]
sender = "@billing.hq.test"
server = "hq-billing"

[[route]]
sender = "@billing.hq.test"
server = "other"
"#
    );
    load_str(&text, "policy.toml", Path::new("/")).unwrap_or_else(|e| panic!("{:#?}", e.0))
}

#[test]
fn identification_order() {
    let c = cfg();
    let bound = &c.listeners[0];
    let open = &c.listeners[1];
    let ip = |s: &str| s.parse().unwrap();
    type Case<'a> = (
        Option<&'a crate::config::Listener>,
        Option<&'a str>,
        &'a str,
        Option<(&'a str, IdentifiedBy)>,
    );
    let cases: &[Case<'_>] = &[
        // AUTH wins over the listener binding and the address.
        (
            Some(bound),
            Some("shop"),
            "10.1.1.1",
            Some(("shop", IdentifiedBy::AuthUser)),
        ),
        // The listener binding wins over the address.
        (
            Some(bound),
            None,
            "10.1.1.1",
            Some(("pos", IdentifiedBy::Listener)),
        ),
        (
            Some(open),
            None,
            "10.1.1.1",
            Some(("kiosk", IdentifiedBy::ClientIp)),
        ),
        // Longest prefix wins.
        (
            Some(open),
            None,
            "10.9.1.1",
            Some(("kiosk-lab", IdentifiedBy::ClientIp)),
        ),
        (
            Some(open),
            None,
            "::ffff:10.9.1.1",
            Some(("kiosk-lab", IdentifiedBy::ClientIp)),
        ),
        (Some(open), None, "203.0.113.1", None),
        // An AUTH user that maps to nothing is not re-identified by address.
        (Some(open), Some("ghost"), "10.1.1.1", None),
    ];
    for (l, user, addr, want) in cases {
        let got = identify(&c, *l, *user, ip(addr)).map(|(a, by)| (a.name.as_str(), by));
        assert_eq!(got, *want, "{user:?} from {addr}");
    }
}

#[test]
fn inheritance() {
    let c = cfg();
    // (app, sender, display name, reply-to, test mode redirect)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let cases: &[Case<'_>] = &[
        (
            "shop",
            Some("shop@hq.test"),
            Some("HQ Shop"),
            Some("service@hq.test"),
            None,
        ),
        (
            "pos",
            Some("info@hq.test"),
            Some("HQ Store"),
            Some("service@hq.test"),
            Some("qa@hq.test"),
        ),
        // The application switches the inherited test mode off.
        (
            "kiosk",
            Some("info@hq.test"),
            Some("HQ Store"),
            Some("service@hq.test"),
            None,
        ),
        // Nothing set anywhere but the system default sender.
        ("other-app", Some("noreply@relay.test"), None, None, None),
    ];
    for (app, sender, name, reply, tm) in cases {
        let e = resolve(&c, &c.applications[*app]);
        assert_eq!(e.sender.map(|s| s.as_str()), *sender, "{app} sender");
        assert_eq!(e.display_name, *name, "{app} display name");
        assert_eq!(e.reply_to.map(|s| s.as_str()), *reply, "{app} reply-to");
        assert_eq!(
            e.test_mode.map(|t| t.redirect_to.as_str()),
            *tm,
            "{app} test mode"
        );
    }
    let pos = resolve(&c, &c.applications["pos"]);
    assert_eq!(
        pos.tenant_chain
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["store", "hq"]
    );
}

#[test]
fn switches() {
    let mut c = cfg();
    let shop = resolve(&c, &c.applications["shop"]);
    assert_eq!(check_mail(&c, &shop), Ok(()));
    let closed = resolve(&c, &c.applications["closed-app"]);
    assert_eq!(check_mail(&c, &closed), Err(Refusal::TenantDisabled));
    c.system.enabled = false;
    let shop = resolve(&c, &c.applications["shop"]);
    assert_eq!(check_mail(&c, &shop), Err(Refusal::SystemDisabled));
}

#[test]
fn blacklist_and_test_mode() {
    let c = cfg();
    let shop = resolve(&c, &c.applications["shop"]);
    let pos = resolve(&c, &c.applications["pos"]);
    let sys = || ListOrigin::System;
    let t = |n: &str| ListOrigin::Tenant(n.into());
    let redirect = || RcptVerdict::Redirect {
        to: "qa@hq.test".into(),
    };
    let cases: Vec<(&Effective<'_>, &str, RcptVerdict)> = vec![
        (&shop, "customer@example.com", RcptVerdict::Deliver),
        // System list, domain entry, case-insensitive.
        (
            &shop,
            "Someone@BLOCKED.test",
            RcptVerdict::Drop {
                list: sys(),
                entry: "@blocked.test".into(),
            },
        ),
        (
            &shop,
            "dropme@x.test",
            RcptVerdict::Drop {
                list: sys(),
                entry: "dropme@x.test".into(),
            },
        ),
        // Tenant list, normalised on load.
        (
            &shop,
            "former@example.com",
            RcptVerdict::Drop {
                list: t("hq"),
                entry: "former@example.com".into(),
            },
        ),
        (
            &shop,
            "<FORMER@example.com>",
            RcptVerdict::Drop {
                list: t("hq"),
                entry: "former@example.com".into(),
            },
        ),
        // Only listed recipients are affected; subdomains are not the domain.
        (&shop, "x@sub.competitor.test", RcptVerdict::Deliver),
        // A location gets its parent's list and its own.
        (
            &pos,
            "a@competitor.test",
            RcptVerdict::Drop {
                list: t("hq"),
                entry: "@competitor.test".into(),
            },
        ),
        (
            &pos,
            "a@rejected.test",
            RcptVerdict::Reject {
                list: t("store"),
                entry: "@rejected.test".into(),
            },
        ),
        // The rejecting location list is not applied to the head office.
        (&shop, "a@rejected.test", RcptVerdict::Deliver),
        // Test mode: redirected unless allowed; blacklist first.
        (&pos, "customer@example.com", redirect()),
        (&pos, "boss@hq.test", RcptVerdict::Deliver),
        (&pos, "Boss@Partner.test", RcptVerdict::Deliver),
        (&pos, "other@partner.test", redirect()),
    ];
    for (eff, rcpt, want) in cases {
        assert_eq!(
            check_rcpt(&c, eff, rcpt),
            want,
            "{} -> {rcpt}",
            eff.app.name
        );
    }
}

#[test]
fn reject_wins_over_drop() {
    let text = r#"
[system]
default_server = "s"
blacklist = ["x@y.test"]
blacklist_action = "drop"
[[listener]]
address = "127.0.0.1:2525"
[server.s]
host = "s.test"
[tenant.t]
blacklist = ["x@y.test"]
blacklist_action = "reject"
[application.a]
tenant = "t"
client_ips = ["127.0.0.1"]
"#;
    let c = load_str(text, "t.toml", Path::new("/")).unwrap();
    let e = resolve(&c, &c.applications["a"]);
    assert!(matches!(
        check_rcpt(&c, &e, "x@y.test"),
        RcptVerdict::Reject { .. }
    ));
}

fn names(chain: &[&crate::config::Server]) -> Vec<String> {
    chain.iter().map(|s| s.name.clone()).collect()
}

#[test]
fn chains() {
    let c = cfg();
    let cases: &[(&str, &str, &[&str])] = &[
        // primary, fallback (= system default, not repeated), tenant default already in, system fallback.
        ("shop", "a@legacy.test", &["hq", "sys", "sys2"]),
        // A route comes first; the route to another tenant's server is skipped.
        (
            "shop",
            "invoice@billing.hq.test",
            &["hq-billing", "hq", "sys", "sys2"],
        ),
        // A location: its own primary, the head office's default, the system servers.
        (
            "kiosk",
            "a@legacy.test",
            &["store-own", "hq", "sys", "sys2"],
        ),
        // Routes apply to the head office's locations too.
        (
            "kiosk",
            "x@billing.hq.test",
            &["hq-billing", "store-own", "hq", "sys", "sys2"],
        ),
        // No system servers when the tenant may not use them.
        ("closed-app", "a@legacy.test", &["closed-own"]),
        // The other tenant's route target is its own; the hq route is out of scope.
        ("other-app", "x@billing.hq.test", &["other", "sys", "sys2"]),
    ];
    for (app, from, want) in cases {
        let eff = resolve(&c, &c.applications[*app]);
        assert_eq!(
            names(&server_chain(&c, &eff, from)),
            *want,
            "{app} from {from}"
        );
    }
}

#[test]
fn plan_and_rewrite_spec_per_hop() {
    let c = Arc::new(cfg());
    let eff = resolve(&c, &c.applications["pos"]);
    let rcpts = [
        "customer@example.com",
        "second@example.com",
        "boss@hq.test",
        "a@competitor.test",
    ]
    .iter()
    .map(|r| RecipientPlan {
        original: r.to_string(),
        verdict: check_rcpt(&c, &eff, r),
    })
    .collect();
    let p = plan(&c, &eff, "pos@legacy.test", rcpts);
    // Two redirects collapse into one test address; the drop is left out.
    assert_eq!(p.deliver_to, ["qa@hq.test", "boss@hq.test"]);
    assert_eq!(p.redirected, ["customer@example.com", "second@example.com"]);
    assert_eq!(names(&p.chain()), ["hq", "sys", "sys2"]);
    let on_hq = p.rewrite_spec(p.chain()[0]);
    assert_eq!(on_hq.sender.as_deref(), Some("info@hq.test"));
    assert_eq!(on_hq.subject_prefix.as_deref(), Some("[TEST] "));
    assert_eq!(on_hq.original_recipients, p.redirected);
    // The system server has a fixed sender: failing over changes the rewrite.
    let on_sys = p.rewrite_spec(p.chain()[1]);
    assert_eq!(on_sys.sender.as_deref(), Some("fixed@provider.test"));
    assert_eq!(on_sys.display_name.as_deref(), Some("HQ Store"));
}

#[test]
fn identity_sources_and_route_kept_sender() {
    let c = Arc::new(cfg());
    let shop = || resolve(&c, &c.applications["shop"]);
    // The shop's own values, then the tenant's Reply-To.
    let p = plan(&c, &shop(), "orders@legacy.test", Vec::new());
    assert_eq!(p.kept_sender, None);
    let id = p.identity(&c.servers["hq"]);
    let src = |s: &Option<Sourced>| s.as_ref().map(|s| (s.value.clone(), s.source.clone()));
    assert_eq!(
        src(&id.sender),
        Some(("shop@hq.test".into(), Source::Application("shop".into())))
    );
    assert_eq!(
        src(&id.reply_to),
        Some(("service@hq.test".into(), Source::Tenant("hq".into())))
    );
    // A server's fixed sender wins.
    let id = p.identity(&c.servers["sys"]);
    assert_eq!(
        src(&id.sender),
        Some(("fixed@provider.test".into(), Source::Server("sys".into())))
    );
    // A route that matched the client's own sender keeps it: the rewrite
    // leaves it alone; the display name still applies.
    let p = plan(&c, &shop(), "Invoices@Billing.hq.test", Vec::new());
    assert_eq!(names(&p.chain())[0], "hq-billing");
    assert_eq!(p.kept_sender.as_deref(), Some("@billing.hq.test"));
    let spec = p.rewrite_spec(&c.servers["hq-billing"]);
    assert_eq!(spec.sender, None);
    assert_eq!(spec.display_name.as_deref(), Some("HQ Shop"));
    assert_eq!(
        src(&p.identity(&c.servers["hq-billing"]).sender),
        Some((
            "Invoices@Billing.hq.test".into(),
            Source::Route("@billing.hq.test".into())
        ))
    );
    // ...but not on a hop whose server has a fixed sender.
    assert_eq!(
        p.rewrite_spec(&c.servers["sys"]).sender.as_deref(),
        Some("fixed@provider.test")
    );
    // Each tenant's own route keeps it; a tenant no route is scoped to
    // keeps nothing.
    let other = resolve(&c, &c.applications["other-app"]);
    let p = plan(&c, &other, "x@billing.hq.test", Vec::new());
    assert_eq!(
        (names(&p.chain())[0].as_str(), p.kept_sender.is_some()),
        ("other", true)
    );
    let closed = resolve(&c, &c.applications["closed-app"]);
    let p = plan(&c, &closed, "x@billing.hq.test", Vec::new());
    assert_eq!(p.kept_sender, None);
}

#[test]
fn a_plan_is_owned_and_outlives_the_callers_snapshot() {
    fn storable<T: Send + Sync + 'static>(_: &T) {}
    let c = Arc::new(cfg());
    let p = {
        let eff = resolve(&c, &c.applications["pos"]);
        plan(&c, &eff, "pos@legacy.test", Vec::new())
    };
    drop(c);
    storable(&p);
    // The chain is looked up in the snapshot the plan holds.
    assert_eq!(names(&p.chain()), ["hq", "sys", "sys2"]);
    assert_eq!((p.application.as_str(), p.tenant()), ("pos", "store"));
    assert_eq!(p.tenant_chain.last().map(String::as_str), Some("hq"));
    // A DSN plan starts with the server that had the message.
    let d = p.dsn_plan("postmaster@hq.test".into(), "sys");
    assert_eq!(d.server_names(), ["sys", "sys2", "hq"]);
    assert_eq!((d.dsn, d.envelope_from.as_str()), (true, ""));
    assert_eq!(d.subject_prefix, None);
}
