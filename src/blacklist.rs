//! The runtime blacklist (PRODUCT §3.3): entries added and removed while
//! the relay runs (admin API, CLI), kept in the state store so they
//! survive restarts and reloads, and merged with the file's lists at RCPT.
//!
//! This module owns the entry types and the one place that changes the
//! list ([`RuntimeLists`]): a store write first, then a new immutable
//! snapshot swapped in (`ArcSwap`), so the next RCPT sees the change and
//! policy stays pure (it is handed the snapshot). File entries come from
//! the config snapshot and cannot be removed here.

use crate::config::values::BlacklistEntry;
use crate::config::{BlacklistAction, Config};
use crate::store::{Store, StoreError, TableDef};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Which list an entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The system list (`[system] blacklist`).
    System,
    /// A tenant's list (it also applies to the tenant's locations).
    Tenant(String),
}

impl Scope {
    /// `None` → system, `Some(t)` → tenant `t`.
    pub fn of(tenant: Option<&str>) -> Scope {
        tenant.map_or(Scope::System, |t| Scope::Tenant(t.to_owned()))
    }

    /// As shown in the API and CLI: `system` or the tenant's name.
    pub fn label(&self) -> &str {
        match self {
            Scope::System => "system",
            Scope::Tenant(t) => t,
        }
    }

    /// The tenant, for a tenant scope.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Scope::System => None,
            Scope::Tenant(t) => Some(t),
        }
    }
}

/// One runtime entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEntry {
    /// The address or `@domain`, normalised.
    pub entry: BlacklistEntry,
    /// Its list.
    pub scope: Scope,
    /// Its action; `None`: the action of its list in the config file.
    pub action: Option<BlacklistAction>,
    /// When it was added (seconds since the epoch).
    pub added_at: i64,
}

/// The record kept in the store (table `runtime_blacklist`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The entry as text.
    pub entry: String,
    /// `None` for the system list, else the tenant.
    pub tenant: Option<String>,
    /// The action, when one was given.
    pub action: Option<BlacklistAction>,
    /// Seconds since the epoch.
    pub added_at: i64,
}

/// The table of runtime blacklist entries, keyed by [`key`].
pub const TABLE: TableDef<StoredEntry> = TableDef::new("runtime_blacklist");

/// The store key of an entry: scope, a newline, the entry.
pub fn key(scope: &Scope, entry: &BlacklistEntry) -> String {
    match scope {
        Scope::System => format!("system\n{entry}"),
        Scope::Tenant(t) => format!("tenant:{t}\n{entry}"),
    }
}

/// An immutable snapshot of every runtime entry, handed to policy.
#[derive(Debug, Clone, Default)]
pub struct RuntimeBlacklist {
    /// The entries, in key order.
    pub entries: Vec<RuntimeEntry>,
}

impl RuntimeBlacklist {
    /// The first entry of list `scope` that covers `normalized_rcpt`.
    pub fn find(&self, scope: &Scope, normalized_rcpt: &str) -> Option<&RuntimeEntry> {
        self.entries
            .iter()
            .find(|e| &e.scope == scope && e.entry.matches(normalized_rcpt))
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Not an address or `@domain`.
    #[error("{0}")]
    BadEntry(String),
    /// The tenant does not exist in the running config.
    #[error("no tenant named {0:?}")]
    UnknownTenant(String),
    /// The entry is in the config file: it can only be changed there.
    #[error(
        "{entry} is in the config file ({where_}); file entries cannot be removed at run time: remove it from the file and reload"
    )]
    FileEntry {
        /// The entry.
        entry: String,
        /// The list, e.g. `[system] blacklist`.
        where_: String,
    },
    /// The entry is already in the config file's list.
    #[error("{entry} is already in the config file ({where_})")]
    AlreadyInFile {
        /// The entry.
        entry: String,
        /// The list.
        where_: String,
    },
    /// No such runtime entry.
    #[error("{entry} is not a runtime entry of the {scope} list")]
    NotFound {
        /// The entry.
        entry: String,
        /// The scope label.
        scope: String,
    },
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// One row of `blacklist list`: `{entry, action, scope, source}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedEntry {
    /// The address or `@domain`.
    pub entry: String,
    /// `drop` or `reject` (effective).
    pub action: BlacklistAction,
    /// `system` or a tenant name.
    pub scope: String,
    /// `file` or `runtime`.
    pub source: String,
}

fn file_list<'c>(
    cfg: &'c Config,
    scope: &Scope,
) -> Option<(&'c [BlacklistEntry], BlacklistAction, String)> {
    match scope {
        Scope::System => Some((
            &cfg.system.blacklist,
            cfg.system.blacklist_action,
            "[system] blacklist".to_owned(),
        )),
        Scope::Tenant(t) => cfg.tenants.get(t).map(|t| {
            (
                t.blacklist.as_slice(),
                t.blacklist_action,
                format!("[tenant.{}] blacklist", t.name),
            )
        }),
    }
}

/// The effective action of a runtime entry under `cfg`.
pub fn effective_action(cfg: &Config, e: &RuntimeEntry) -> BlacklistAction {
    e.action
        .unwrap_or_else(|| file_list(cfg, &e.scope).map_or(BlacklistAction::Drop, |(_, a, _)| a))
}

/// Every entry, file and runtime, optionally of one tenant's list only.
pub fn list(cfg: &Config, rt: &RuntimeBlacklist, tenant: Option<&str>) -> Vec<ListedEntry> {
    let mut scopes = vec![Scope::System];
    scopes.extend(cfg.tenants.keys().map(|t| Scope::Tenant(t.clone())));
    // Runtime entries of tenants a reload removed are still listed.
    for e in &rt.entries {
        if !scopes.contains(&e.scope) {
            scopes.push(e.scope.clone());
        }
    }
    if let Some(t) = tenant {
        scopes.retain(|s| s.tenant() == Some(t));
    }
    let mut out = Vec::new();
    for s in &scopes {
        if let Some((entries, action, _)) = file_list(cfg, s) {
            out.extend(entries.iter().map(|e| ListedEntry {
                entry: e.to_string(),
                action,
                scope: s.label().to_owned(),
                source: "file".to_owned(),
            }));
        }
        out.extend(
            rt.entries
                .iter()
                .filter(|e| &e.scope == s)
                .map(|e| ListedEntry {
                    entry: e.entry.to_string(),
                    action: effective_action(cfg, e),
                    scope: s.label().to_owned(),
                    source: "runtime".to_owned(),
                }),
        );
    }
    out
}

/// The runtime lists: the store and the current snapshot.
pub struct RuntimeLists {
    store: Arc<Store>,
    current: Arc<ArcSwap<RuntimeBlacklist>>,
    changes: tokio::sync::Mutex<()>,
}

impl RuntimeLists {
    /// Loads every stored entry (blocking: call at start). Entries that no
    /// longer parse are skipped with a warning.
    pub fn load(store: Arc<Store>) -> Result<RuntimeLists, StoreError> {
        let snapshot = Self::read(&store)?;
        Ok(RuntimeLists {
            store,
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    fn read(store: &Store) -> Result<RuntimeBlacklist, StoreError> {
        let mut entries = Vec::new();
        for (k, v) in store.list(&TABLE)? {
            match v.entry.parse::<BlacklistEntry>() {
                Ok(entry) => entries.push(RuntimeEntry {
                    entry,
                    scope: Scope::of(v.tenant.as_deref()),
                    action: v.action,
                    added_at: v.added_at,
                }),
                Err(e) => {
                    tracing::warn!(key = %k.replace('\n', " "), error = %e, "skipping a stored runtime blacklist entry")
                }
            }
        }
        Ok(RuntimeBlacklist { entries })
    }

    /// The handle sessions read at each RCPT.
    pub fn handle(&self) -> Arc<ArcSwap<RuntimeBlacklist>> {
        self.current.clone()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RuntimeBlacklist> {
        self.current.load_full()
    }

    /// Adds (or changes the action of) a runtime entry; logs an audit line.
    pub async fn add(
        &self,
        cfg: &Config,
        entry: &str,
        scope: Scope,
        action: Option<BlacklistAction>,
        who: &str,
    ) -> Result<(), ChangeError> {
        let entry: BlacklistEntry = entry.parse().map_err(ChangeError::BadEntry)?;
        let Some((file, _, where_)) = file_list(cfg, &scope) else {
            return Err(ChangeError::UnknownTenant(
                scope.tenant().unwrap_or_default().to_owned(),
            ));
        };
        if file.contains(&entry) {
            return Err(ChangeError::AlreadyInFile {
                entry: entry.to_string(),
                where_,
            });
        }
        let _one = self.changes.lock().await;
        let record = StoredEntry {
            entry: entry.to_string(),
            tenant: scope.tenant().map(str::to_owned),
            action,
            added_at: crate::util::unix_now(),
        };
        let k = key(&scope, &entry);
        self.store
            .run(move |s| {
                s.put(&TABLE, &k, &record)?;
                Self::read(s)
            })
            .await
            .map(|snap| self.current.store(Arc::new(snap)))?;
        tracing::info!(
            target: "audit",
            who,
            what = "blacklist add",
            entry = %entry,
            scope = scope.label(),
            action = action.map(|a| format!("{a:?}").to_lowercase()).unwrap_or_else(|| "list default".to_owned()),
            "audit"
        );
        Ok(())
    }

    /// Removes a runtime entry; a file entry is refused.
    pub async fn remove(
        &self,
        cfg: &Config,
        entry: &str,
        scope: Scope,
        who: &str,
    ) -> Result<(), ChangeError> {
        let entry: BlacklistEntry = entry.parse().map_err(ChangeError::BadEntry)?;
        let _one = self.changes.lock().await;
        let present = self
            .snapshot()
            .entries
            .iter()
            .any(|e| e.scope == scope && e.entry == entry);
        if !present {
            if let Some((file, _, where_)) = file_list(cfg, &scope)
                && file.contains(&entry)
            {
                return Err(ChangeError::FileEntry {
                    entry: entry.to_string(),
                    where_,
                });
            }
            return Err(ChangeError::NotFound {
                entry: entry.to_string(),
                scope: scope.label().to_owned(),
            });
        }
        let k = key(&scope, &entry);
        self.store
            .run(move |s| {
                s.remove(&TABLE, &k)?;
                Self::read(s)
            })
            .await
            .map(|snap| self.current.store(Arc::new(snap)))?;
        tracing::info!(
            target: "audit",
            who,
            what = "blacklist remove",
            entry = %entry,
            scope = scope.label(),
            "audit"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, ListOrigin, RcptVerdict};

    const CFG: &str = r#"
[system]
default_server = "outbox"
blacklist = ["@file.example"]

[[listener]]
address = "127.0.0.1:2525"
auth = "none"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.head]
blacklist = ["old@head.example"]
blacklist_action = "reject"

[tenant.store]
parent = "head"

[tenant.other]

[application.till]
tenant = "store"
client_ips = ["127.0.0.1"]
"#;

    fn entry(e: &str, scope: Scope, action: Option<BlacklistAction>) -> RuntimeEntry {
        RuntimeEntry {
            entry: e.parse().unwrap(),
            scope,
            action,
            added_at: 0,
        }
    }

    #[test]
    fn runtime_entries_merge_with_the_file_lists() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::load_str(CFG, "t.toml", dir.path()).unwrap();
        let eff = policy::resolve(&cfg, &cfg.applications["till"]);
        let rt = RuntimeBlacklist {
            entries: vec![
                entry("@rt.example", Scope::System, None),
                entry(
                    "x@file.example",
                    Scope::System,
                    Some(BlacklistAction::Reject),
                ),
                entry("new@head.example", Scope::Tenant("head".into()), None),
                entry("a@other.example", Scope::Tenant("other".into()), None),
            ],
        };
        let check = |r: &str| policy::check_rcpt_with(&cfg, &eff, r, &rt);
        // A system runtime entry with the list's action (drop).
        assert_eq!(
            check("Someone@RT.example"),
            RcptVerdict::Drop {
                list: ListOrigin::System,
                entry: "@rt.example".into()
            }
        );
        // Its own action wins over the file entry's drop.
        assert!(matches!(
            check("x@file.example"),
            RcptVerdict::Reject { .. }
        ));
        assert!(matches!(check("y@file.example"), RcptVerdict::Drop { .. }));
        // A parent tenant's runtime entry applies to its location, with
        // the parent list's action.
        assert_eq!(
            check("new@head.example"),
            RcptVerdict::Reject {
                list: ListOrigin::Tenant("head".into()),
                entry: "new@head.example".into()
            }
        );
        // Another tenant's entry does not.
        assert_eq!(check("a@other.example"), RcptVerdict::Deliver);
        // Without runtime entries, only the file.
        assert_eq!(
            policy::check_rcpt(&cfg, &eff, "someone@rt.example"),
            RcptVerdict::Deliver
        );

        let listed = list(&cfg, &rt, Some("head"));
        assert_eq!(
            listed
                .iter()
                .map(|l| (l.entry.as_str(), l.source.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("old@head.example", "file"),
                ("new@head.example", "runtime")
            ]
        );
        assert_eq!(listed[1].action, BlacklistAction::Reject);
    }

    #[tokio::test]
    async fn add_and_remove_persist_and_refuse_file_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::load_str(CFG, "t.toml", dir.path()).unwrap();
        let spool = dir.path().join("spool");
        {
            let lists = RuntimeLists::load(Arc::new(Store::open(&spool).unwrap())).unwrap();
            lists
                .add(&cfg, "A@B.example", Scope::System, None, "test")
                .await
                .unwrap();
            assert!(matches!(
                lists
                    .add(&cfg, "@file.example", Scope::System, None, "test")
                    .await,
                Err(ChangeError::AlreadyInFile { .. })
            ));
            assert!(matches!(
                lists
                    .add(
                        &cfg,
                        "a@b.example",
                        Scope::Tenant("nope".into()),
                        None,
                        "test"
                    )
                    .await,
                Err(ChangeError::UnknownTenant(_))
            ));
            assert!(matches!(
                lists
                    .remove(&cfg, "@file.example", Scope::System, "test")
                    .await,
                Err(ChangeError::FileEntry { .. })
            ));
            assert!(matches!(
                lists
                    .remove(&cfg, "a@b.example", Scope::Tenant("head".into()), "test")
                    .await,
                Err(ChangeError::NotFound { .. })
            ));
        }
        let lists = RuntimeLists::load(Arc::new(Store::open(&spool).unwrap())).unwrap();
        let snap = lists.snapshot();
        assert_eq!(snap.entries.len(), 1);
        assert_eq!(
            (
                &snap.entries[0].entry,
                &snap.entries[0].scope,
                snap.entries[0].action
            ),
            (&"a@b.example".parse().unwrap(), &Scope::System, None)
        );
        lists
            .remove(&cfg, "a@b.example", Scope::System, "test")
            .await
            .unwrap();
        assert!(lists.snapshot().entries.is_empty());
    }
}
