//! Validation: the entities `load` read → the immutable [`Config`] snapshot.
//!
//! Keys are declared once in `raw.rs`, with their types and defaults, and
//! arrive here already typed and defaulted; what is left
//! here is what needs a position in the files or the rest of the config:
//! range checks, paths and secrets, certificates, references between
//! entities and the safety rules of PRODUCT §3.9. One file per entity, in
//! the order [`validate`] runs them:
//!
//! | file | entity |
//! | --- | --- |
//! | `system.rs` | `[system]`: `spool` resolved, host name; later its default and fallback servers |
//! | `sections.rs` | `[limits]`, `[tls]`, `[admin]`, `[log]`, `[health]`, `[cluster]`, `[queue]`, `[reload]` |
//! | `tenant.rs` | `[tenant.NAME]`: parents and cycles, default servers, test-mode warnings |
//! | `server.rs` | `[server.NAME]`: keys per kind (SMTP, OAuth, capture, Graph), ownership, who may use it |
//! | `application.rs` | `[application.NAME]`: tenant, servers, AUTH user, client networks, a server for each |
//! | `route.rs` | `[[route]]` |
//! | `dkim.rs` | `[[dkim]]` |
//! | `listener.rs` | `[[listener]]` |
//!
//! Every function reports through [`Ctx`]: each problem with file, line and
//! key, collected (never the first only) and sorted into file order at the
//! end. An entity with an error still counts as defined for the checks
//! that follow (`Ctx::err_ref`), so one mistake does not cascade. The
//! config is refused if there is any error.

mod application;
mod dkim;
mod listener;
mod route;
mod sections;
mod server;
mod system;
mod tenant;

use super::load::{KeyPath, Located, RawDoc, Sources};
use super::values::{Secret, SecretSource};
use super::{Config, ConfigError, ConfigErrors};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What every validation function reports into: errors and warnings with
/// their place, the files the config refers to, and what is defined so far.
struct Ctx<'s, 't> {
    src: &'s Sources<'t>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    /// Files the config refers to (certificates, keys, CA and secret files).
    referenced: Vec<PathBuf>,
    /// Entities that had errors and could not be built: they count as
    /// defined for references (their own errors are already reported).
    broken: Vec<(&'static str, String)>,
    /// Every server name defined, including servers whose errors left
    /// nothing to build (references to them are not "not defined").
    server_names: BTreeSet<String>,
    /// Tenants defined by each file (ownership rules of included files, §3.9).
    file_tenants: HashMap<usize, BTreeSet<String>>,
}

impl Ctx<'_, '_> {
    /// An error about a reference to `kind` `name`, unless that entity is
    /// defined but broken (its errors say what is wrong; this would only
    /// cascade).
    fn err_ref(
        &mut self,
        kind: &'static str,
        name: &str,
        file: usize,
        path: &KeyPath,
        msg: impl Into<String>,
    ) {
        if !self.broken.iter().any(|(k, n)| *k == kind && n == name) {
            self.err(file, path, msg);
        }
    }
    fn err(&mut self, file: usize, path: &KeyPath, msg: impl Into<String>) {
        self.errors.push(self.src.error(file, path, msg));
    }
    fn warn(&mut self, file: usize, path: &KeyPath, msg: impl Into<String>) {
        self.warnings.push(self.src.error(file, path, msg));
    }
    /// Reads a secret, remembering its file (if any) for the watcher and
    /// reporting a failure at `path`.
    fn secret(&mut self, file: usize, path: &KeyPath, source: &SecretSource) -> Option<Secret> {
        self.secret_with(file, path, source, false)
    }

    /// [`Ctx::secret`], for secrets that may span lines (PEM keys) when `multiline`.
    fn secret_with(
        &mut self,
        file: usize,
        path: &KeyPath,
        source: &SecretSource,
        multiline: bool,
    ) -> Option<Secret> {
        let base = self.src.base_dir(file);
        self.referenced.extend(source.file_path(&base));
        let resolved = if multiline {
            source.resolve_multiline(&base)
        } else {
            source.resolve(&base)
        };
        match resolved {
            Ok(s) => Some(s),
            Err(m) => {
                self.err(file, path, m);
                None
            }
        }
    }

    /// Reads a [`Secret`] in place, relative to `file`, remembering the
    /// file it names (if any) for the watcher; a failure is an error at
    /// `path` (the secret stays unread, and the config is refused).
    fn resolve_secret(&mut self, file: usize, path: &KeyPath, secret: &mut Secret) {
        let (read, r) = secret.resolve(&self.src.base_dir(file), false);
        self.referenced.extend(read);
        if let Err(m) = r {
            self.err(file, path, m);
        }
    }

    /// Whether `file` defines `tenant` itself.
    fn defined_in_file(&self, file: usize, tenant: &str) -> bool {
        self.file_tenants
            .get(&file)
            .is_some_and(|s| s.contains(tenant))
    }

    fn resolve_path(&self, file: usize, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.src.base_dir(file).join(p)
        }
    }
}

/// A section as written, or its defaults when the file has none.
fn section<T: Clone + Default>(l: &Option<Located<T>>) -> T {
    l.as_ref().map(|l| l.value.clone()).unwrap_or_default()
}

/// Duplicate names across files: the first definition wins, later ones are errors.
fn dedupe<T>(
    cx: &mut Ctx<'_, '_>,
    what: &str,
    items: Vec<(String, Located<T>)>,
) -> Vec<(String, Located<T>)> {
    let mut seen: HashMap<String, (usize, KeyPath)> = HashMap::new();
    let mut out = Vec::new();
    for (name, l) in items {
        if let Some((f, p)) = seen.get(&name) {
            let first = cx.src.error(*f, p, "");
            cx.err(
                l.file,
                &l.path,
                format!(
                    "{what} {name:?} is defined twice (first at {}:{})",
                    first.file, first.line
                ),
            );
            continue;
        }
        seen.insert(name.clone(), (l.file, l.path.clone()));
        out.push((name, l));
    }
    out
}

/// Validates `doc` into a snapshot, or returns every error (those passed in
/// from loading included).
pub(super) fn validate(
    src: &Sources<'_>,
    doc: RawDoc,
    errors: Vec<ConfigError>,
    hash: String,
    files: Vec<PathBuf>,
    source: String,
) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx {
        src,
        errors,
        warnings: Vec::new(),
        referenced: Vec::new(),
        broken: doc.broken.clone(),
        server_names: BTreeSet::new(),
        file_tenants: HashMap::new(),
    };

    let (system, sys_file, sys_path) = system::system(&mut cx, &doc.system);
    let limits = sections::limits(&mut cx, &doc.limits);
    let tls = sections::tls(&mut cx, &doc.tls);
    let admin = sections::admin(&mut cx, &doc.admin);
    let log = sections::log(&mut cx, &doc.log);
    let health = sections::health(&mut cx, &doc.health);
    let cluster = sections::cluster(&mut cx, &doc.cluster);
    let queue = sections::queue(&mut cx, &doc.queue);
    let reload = sections::reload(&mut cx, &doc.reload);

    // Tenants first: everything else refers to them.
    let raw_tenants = dedupe(&mut cx, "tenant", doc.tenants);
    let (tenants, tenant_loc) = tenant::tenants(&mut cx, &raw_tenants);
    for (name, l) in &raw_tenants {
        cx.file_tenants
            .entry(l.file)
            .or_default()
            .insert(name.clone());
    }

    let raw_servers = dedupe(&mut cx, "server", doc.servers);
    let servers = server::servers(&mut cx, &raw_servers, &system.hostname);

    // A partially built snapshot for inheritance lookups during validation.
    let mut cfg = Config {
        source,
        files,
        hash,
        system,
        listeners: Vec::new(),
        tls,
        limits,
        admin,
        log,
        health,
        reload,
        queue,
        cluster,
        servers,
        tenants,
        applications: BTreeMap::new(),
        routes: Vec::new(),
        dkim: Vec::new(),
        warnings: Vec::new(),
        referenced: Vec::new(),
        referenced_hash: String::new(),
        defined_in: raw_tenants
            .iter()
            .map(|(n, l)| (format!("tenant {n}"), l.file))
            .filter_map(|(k, f)| Some((k, src.files.get(f)?.path.clone()?)))
            .collect(),
        nonblank_files: src
            .files
            .iter()
            .filter(|f| !f.text.trim().is_empty())
            .filter_map(|f| f.path.clone())
            .collect(),
        unknown_transient_until: None,
        auth_index: HashMap::new(),
        ip_index: Vec::new(),
    };

    server::ownership(&mut cx, &cfg, &raw_servers);
    system::servers(&mut cx, &cfg, sys_file, &sys_path);
    tenant::default_servers(&mut cx, &cfg, &raw_tenants);
    let raw_apps = dedupe(&mut cx, "application", doc.applications);
    application::applications(&mut cx, &mut cfg, &raw_apps);
    route::routes(&mut cx, &mut cfg, &doc.routes);
    dkim::keys(&mut cx, &mut cfg, &doc.dkim);
    application::each_has_a_server(&mut cx, &cfg, &raw_apps);
    listener::listeners(
        &mut cx,
        &mut cfg,
        &doc.listeners,
        doc.tls.is_some(),
        &raw_apps,
    );
    tenant::test_mode_warnings(&mut cx, &cfg, &tenant_loc);

    if cx.errors.is_empty() {
        cfg.warnings = cx.warnings;
        cx.referenced.sort();
        cx.referenced.dedup();
        cfg.referenced_hash = super::load::files_hash(&cx.referenced);
        cfg.referenced = cx.referenced;
        Ok(cfg)
    } else {
        // File order: by file (main first, then includes as read), then
        // line; errors with no single place last in their file.
        let order = |e: &ConfigError| {
            let file = src.files.iter().position(|f| f.name == e.file);
            (
                file.unwrap_or(usize::MAX),
                if e.line == 0 { usize::MAX } else { e.line },
            )
        };
        cx.errors.sort_by_key(order);
        // "needs `tenant`" after `tenant` itself was reported (and
        // removed) as invalid only repeats that error.
        let bad: BTreeSet<String> = cx.errors.iter().map(|e| e.key.clone()).collect();
        cx.errors.retain(|e| {
            let needed = e
                .message
                .split_once("needs `")
                .and_then(|(_, r)| r.split_once('`'))
                .map(|(f, _)| format!("{}.{f}", e.key));
            !needed.is_some_and(|k| bad.contains(&k))
        });
        Err(ConfigErrors(cx.errors))
    }
}
