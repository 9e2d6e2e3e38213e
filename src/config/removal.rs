//! Which removals a reload may make (issue 14 item 2). A tenant or an
//! application that had traffic since start may disappear from the config
//! only when its definition was removed cleanly: the file that defined it
//! is still part of the new config and is not blank. A file that is
//! briefly missing, emptied or (for a glob) not matched looks exactly like
//! a deliberate removal of everything in it, so the reload is refused and
//! the old config, with its applications, stays. Pure: no I/O.

use super::Config;
use std::collections::BTreeSet;

/// The tenants and applications (as `"tenant NAME"` / `"application
/// NAME"`, with the file that defined them) that `new` drops although
/// they had traffic and their definition was not removed cleanly.
/// `active` names the applications that had traffic.
pub fn unsafe_removals(old: &Config, new: &Config, active: &BTreeSet<String>) -> Vec<String> {
    let mut busy: BTreeSet<String> = BTreeSet::new();
    for app in active {
        let Some(a) = old.applications.get(app) else {
            continue;
        };
        busy.insert(format!("application {app}"));
        // The application's tenant and its head offices had traffic too.
        let mut tenant = Some(a.tenant.as_str());
        let mut hops = 0;
        while let Some(t) = tenant.filter(|_| hops <= old.tenants.len()) {
            busy.insert(format!("tenant {t}"));
            tenant = old.tenants.get(t).and_then(|t| t.parent.as_deref());
            hops += 1;
        }
    }
    let gone = |key: &str| match key.split_once(' ') {
        Some(("tenant", n)) => !new.tenants.contains_key(n),
        Some(("application", n)) => !new.applications.contains_key(n),
        _ => false,
    };
    busy.into_iter()
        .filter(|key| gone(key))
        .filter_map(|key| {
            let file = old.defined_in.get(&key);
            let clean = file.is_some_and(|f| new.nonblank_files.contains(f));
            (!clean).then(|| match file {
                Some(f) => format!("{key} (defined in {})", f.display()),
                None => key,
            })
        })
        .collect()
}

/// Whether `new` drops an application `old` had.
pub fn removes_an_application(old: &Config, new: &Config) -> bool {
    old.applications
        .keys()
        .any(|a| !new.applications.contains_key(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_file;

    const MAIN: &str = r#"
include = ["tenants/*.toml"]
[system]
hostname = "relay.test"
default_server = "outbox"
[[listener]]
address = "127.0.0.1:0"
auth = "none"
[server.outbox]
kind = "capture"
path = "outbox"
[tenant.main]
sender = "m@relay.test"
[application.local]
tenant = "main"
client_ips = ["127.0.0.1"]
"#;

    const ACME: &str = r#"
[tenant.acme]
sender = "a@acme.example"
[application.shop]
tenant = "acme"
client_ips = ["127.0.0.2"]
[application.pos]
tenant = "acme"
client_ips = ["127.0.0.3"]
"#;

    fn load(dir: &std::path::Path, acme: Option<&str>) -> Config {
        std::fs::create_dir_all(dir.join("tenants")).unwrap();
        std::fs::write(dir.join("main.toml"), MAIN).unwrap();
        let f = dir.join("tenants/acme.toml");
        match acme {
            Some(t) => std::fs::write(&f, t).unwrap(),
            None => {
                let _ = std::fs::remove_file(&f);
            }
        }
        load_file(&dir.join("main.toml")).unwrap()
    }

    #[test]
    fn only_clean_removals_of_busy_entities_pass() {
        let dir = tempfile::tempdir().unwrap();
        let old = load(dir.path(), Some(ACME));
        let shop: BTreeSet<String> = ["shop".to_owned()].into();
        let none = BTreeSet::new();
        // The file vanished or was emptied: refused while shop had traffic.
        for acme in [None, Some(""), Some("  \n\t\n")] {
            let new = load(dir.path(), acme);
            let bad = unsafe_removals(&old, &new, &shop);
            assert_eq!(bad.len(), 2, "{bad:?}");
            assert!(
                bad[0].starts_with("application shop (defined in "),
                "{bad:?}"
            );
            assert!(bad[1].starts_with("tenant acme"), "{bad:?}");
            // Without traffic nothing holds it.
            assert!(unsafe_removals(&old, &new, &none).is_empty());
            assert!(removes_an_application(&old, &new));
        }
        // shop's definition removed from a file that still has pos: clean.
        let without_shop = ACME.replace(
            "[application.shop]\ntenant = \"acme\"\nclient_ips = [\"127.0.0.2\"]\n",
            "",
        );
        let new = load(dir.path(), Some(&without_shop));
        assert!(!new.applications.contains_key("shop"));
        assert!(unsafe_removals(&old, &new, &shop).is_empty());
        assert!(removes_an_application(&old, &new));
        assert!(!removes_an_application(&old, &old));
    }
}
