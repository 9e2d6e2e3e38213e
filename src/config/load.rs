//! Reading config files: the main file, `include` globs, TOML parsing with
//! spans, and per-entity deserialisation that collects every error.
//!
//! Each server, tenant, application, listener and route is deserialised on
//! its own; when one fails, the offending key is removed and the entity is
//! tried again, so a file with three typos reports three errors. Errors do
//! not cascade: the entity without its bad keys is kept (it counts as
//! defined, and its other checks run); one that cannot be built at all is
//! remembered as `broken`, so references to it add no "not defined"; a
//! syntax error is reported alone. Lines come from the TOML spans, looked
//! up by key path; `validate` sorts the errors into file order.

use super::raw::{
    Admin, Application, Cluster, HealthSettings, Limits, Listener, Log, QueueSettings, RawDkim,
    RawServer, RawTls, ReloadSettings, Route, SmtpSettings, System, Tenant, keys_of,
};
use super::{Config, ConfigError, ConfigErrors};
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// The embedded default config: a listener on 127.0.0.1:2525 that treats
/// loopback clients as a demo application and captures into `./outbox`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Largest config file read (main or included).
const MAX_FILE: u64 = 16 << 20;

/// Most files one include pattern may match.
const MAX_INCLUDES: usize = 10_000;

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted key path such as `application.webshop.primary` or `listener[0].address`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn new<S: Into<String>>(keys: impl IntoIterator<Item = S>) -> Self {
        KeyPath(keys.into_iter().map(|k| Seg::Key(k.into())).collect())
    }
    pub fn key(mut self, k: impl Into<String>) -> Self {
        self.0.push(Seg::Key(k.into()));
        self
    }
    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One file that was read.
pub(super) struct SourceFile<'t> {
    pub name: String,
    pub path: Option<PathBuf>,
    pub text: &'t str,
    pub table: Option<Spanned<DeTable<'t>>>,
}

/// Every file of one load, for line lookups.
pub(super) struct Sources<'t> {
    pub files: Vec<SourceFile<'t>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Sources<'_> {
    /// The line of the deepest key of `path` that exists in `file`
    /// (0 when not even the first key is there).
    pub fn line(&self, file: usize, path: &KeyPath) -> usize {
        let Some(f) = self.files.get(file) else {
            return 0;
        };
        let Some(table) = &f.table else { return 0 };
        let mut line = 0;
        let mut cur: Option<&DeValue<'_>> = None;
        let mut cur_table: Option<&DeTable<'_>> = Some(table.get_ref());
        for seg in &path.0 {
            match seg {
                Seg::Key(k) => {
                    let t = match (cur_table, cur) {
                        (Some(t), None) => t,
                        (_, Some(DeValue::Table(t))) => t,
                        _ => break,
                    };
                    let Some((key, val)) = t.get_key_value(k.as_str()) else {
                        break;
                    };
                    line = line_of(f.text, key.span().start);
                    cur = Some(val.get_ref());
                    cur_table = None;
                }
                Seg::Index(i) => {
                    let Some(DeValue::Array(a)) = cur else { break };
                    let Some(v) = a.get(*i) else { break };
                    line = line_of(f.text, v.span().start);
                    cur = Some(v.get_ref());
                }
            }
        }
        line
    }

    /// Builds an error for `path` in `file`.
    pub fn error(&self, file: usize, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self
                .files
                .get(file)
                .map(|f| f.name.clone())
                .unwrap_or_default(),
            line: self.line(file, path),
            key: path.to_string(),
            message: message.into(),
        }
    }

    /// The directory relative paths of `file` are resolved against.
    pub fn base_dir(&self, file: usize) -> PathBuf {
        self.files
            .get(file)
            .and_then(|f| f.path.as_ref())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// An entity and the file it came from.
#[derive(Debug, Clone)]
pub(super) struct Located<T> {
    pub file: usize,
    pub path: KeyPath,
    pub value: T,
    /// The keys of its table that the file set and that parsed: with
    /// defaults on the fields, "was it written" is no longer `is_some()`.
    pub keys: Vec<String>,
}

/// Everything the files say, before validation.
#[derive(Default)]
pub(super) struct RawDoc {
    pub system: Option<Located<System>>,
    pub listeners: Vec<Located<Listener>>,
    pub tls: Option<Located<RawTls>>,
    pub limits: Option<Located<Limits>>,
    pub admin: Option<Located<Admin>>,
    pub log: Option<Located<Log>>,
    pub health: Option<Located<HealthSettings>>,
    pub reload: Option<Located<ReloadSettings>>,
    pub queue: Option<Located<QueueSettings>>,
    pub cluster: Option<Located<Cluster>>,
    pub servers: Vec<(String, Located<RawServer>)>,
    pub tenants: Vec<(String, Located<Tenant>)>,
    pub applications: Vec<(String, Located<Application>)>,
    pub routes: Vec<Located<Route>>,
    pub dkim: Vec<Located<RawDkim>>,
    /// Entities whose errors left nothing to build (`listener`, or
    /// `server`/`tenant`/`application` with a name): they still count as
    /// defined, so references to them do not add errors.
    pub broken: Vec<(&'static str, String)>,
}

fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")
        .and_then(|r| r.split_once('`'))
        .map(|(f, _)| f)
}

fn unknown_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
        .map(|(f, _)| f)
}

/// Removes the value at `segs` below `v`; an array element takes its whole
/// array with it (arrays cannot shrink in place). Returns whether anything
/// was removed.
fn remove_at(v: &mut Spanned<DeValue<'_>>, segs: &[Seg]) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        return false;
    };
    match (v.get_mut(), first) {
        (DeValue::Table(t), Seg::Key(k)) => {
            if rest.is_empty() || matches!(rest.first(), Some(Seg::Index(_))) && rest.len() == 1 {
                return t.remove(k.as_str()).is_some();
            }
            match t.get_mut(k.as_str()) {
                Some(child) => remove_at(child, rest) || t.remove(k.as_str()).is_some(),
                None => false,
            }
        }
        (DeValue::Array(a), Seg::Index(i)) => match a.get_mut(*i) {
            Some(child) => remove_at(child, rest),
            None => false,
        },
        _ => false,
    }
}

fn to_segs(p: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    p.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// Deserialises one entity, collecting every error it has (see module
/// docs), with the keys of its table that the file set and that were kept
/// (not removed for an error of their own).
fn entity<T: DeserializeOwned>(
    src: &Sources<'_>,
    file: usize,
    path: &KeyPath,
    value: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Located<T>> {
    let mut v = value.clone();
    // Keys removed for being bad: a later "missing field" about one of
    // them only repeats that error.
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    for _ in 0..64 {
        let de = ValueDeserializer::from(v.clone());
        match serde_path_to_error::deserialize::<_, T>(de) {
            // With its bad keys reported and removed, the entity still
            // counts as defined: references to it and its other checks
            // go on, so one bad value does not cascade (the config is
            // refused anyway, since an error was recorded).
            Ok(t) => {
                let keys = match v.get_ref() {
                    DeValue::Table(t) => t.iter().map(|(k, _)| k.get_ref().to_string()).collect(),
                    _ => Vec::new(),
                };
                return Some(Located {
                    file,
                    path: path.clone(),
                    value: t,
                    keys,
                });
            }
            Err(e) => {
                let mut segs = to_segs(e.path());
                let inner = e.into_inner();
                let msg = inner.message().to_owned();
                if let Some(f) = unknown_field(&msg)
                    && segs.last() != Some(&Seg::Key(f.to_owned()))
                {
                    segs.push(Seg::Key(f.to_owned()));
                }
                if let Some(f) = missing_field(&msg) {
                    let mut at = segs.clone();
                    at.push(Seg::Key(f.to_owned()));
                    if removed.contains(&at) {
                        return None;
                    }
                }
                let mut full = path.clone();
                full.0.extend(segs.iter().cloned());
                let mut err = src.error(file, &full, msg.clone());
                if let (Some(span), Some(text)) =
                    (inner.span(), src.files.get(file).map(|f| f.text))
                {
                    let at_span = line_of(text, span.start);
                    if segs.is_empty() || err.line < at_span {
                        err.line = at_span;
                    }
                }
                errors.push(err);
                if !remove_at(&mut v, &segs) {
                    return None;
                }
                removed.push(segs);
            }
        }
    }
    None
}

/// A `[server.NAME]` table in two parts, each deserialised as an entity of
/// its own at the server's path (so each error still has file, line and
/// key, and one bad key does not hide the next): the keys of
/// [`SmtpSettings`] into `RawServer::smtp`, every other key into
/// [`RawServer`]. `keys` is the union of both parts' keys.
fn server(
    src: &Sources<'_>,
    file: usize,
    path: &KeyPath,
    value: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Located<RawServer>> {
    let smtp_keys = keys_of::<SmtpSettings>();
    let (mut rest, mut smtp) = (value.clone(), value.clone());
    let (DeValue::Table(r), DeValue::Table(s)) = (rest.get_mut(), smtp.get_mut()) else {
        // Not a table: one "invalid type" error, not one per part.
        return entity(src, file, path, value, errors);
    };
    let keys: Vec<String> = r.iter().map(|(k, _)| k.get_ref().to_string()).collect();
    for k in keys {
        if smtp_keys.contains(&k.as_str()) {
            r.remove(k.as_str());
        } else {
            s.remove(k.as_str());
        }
    }
    let first = errors.len();
    let server = entity::<RawServer>(src, file, path, &rest, errors);
    // serde lists the keys of `RawServer` alone as the expected ones.
    for e in &mut errors[first..] {
        if let Some(f) = unknown_field(&e.message) {
            let expected: Vec<String> = keys_of::<RawServer>()
                .iter()
                .chain(smtp_keys)
                .map(|k| format!("`{k}`"))
                .collect();
            e.message = format!(
                "unknown field `{f}`, expected one of {}",
                expected.join(", ")
            );
        }
    }
    let smtp = entity::<SmtpSettings>(src, file, path, &smtp, errors);
    let mut server = server?;
    if let Some(smtp) = smtp {
        server.value.smtp = smtp.value;
        server.keys.extend(smtp.keys);
    }
    Some(server)
}

const MAIN_ONLY: &[&str] = &[
    "include", "system", "listener", "tls", "limits", "admin", "log", "cluster",
];

/// Walks one file's top-level keys into `doc`.
fn collect(src: &Sources<'_>, file: usize, doc: &mut RawDoc, errors: &mut Vec<ConfigError>) {
    let Some(table) = &src.files[file].table else {
        return;
    };
    for (key, value) in table.get_ref().iter() {
        let k = key.get_ref().as_ref();
        let path = KeyPath::new([k]);
        if file > 0 && MAIN_ONLY.contains(&k) {
            errors.push(src.error(
                file,
                &path,
                format!("[{k}] is only allowed in the main config file; included files may define tenant, server, application and route"),
            ));
            continue;
        }
        match k {
            "include" => {} // read by `read_all` before collecting
            "system" => doc.system = entity(src, file, &path, value, errors),
            "tls" => doc.tls = entity(src, file, &path, value, errors),
            "limits" => doc.limits = entity(src, file, &path, value, errors),
            "admin" => doc.admin = entity(src, file, &path, value, errors),
            "log" => doc.log = entity(src, file, &path, value, errors),
            "health" => doc.health = entity(src, file, &path, value, errors),
            "reload" => doc.reload = entity(src, file, &path, value, errors),
            "queue" => doc.queue = entity(src, file, &path, value, errors),
            "cluster" => doc.cluster = entity(src, file, &path, value, errors),
            "listener" | "route" | "dkim" => {
                let DeValue::Array(items) = value.get_ref() else {
                    errors.push(src.error(file, &path, format!("expected an array of tables: write [[{k}]]")));
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    let p = path.clone().index(i);
                    if k == "listener" {
                        match entity(src, file, &p, item, errors) {
                            Some(l) => doc.listeners.push(l),
                            None => doc.broken.push(("listener", i.to_string())),
                        }
                    } else if k == "dkim" {
                        if let Some(d) = entity(src, file, &p, item, errors) {
                            doc.dkim.push(d);
                        }
                    } else if let Some(r) = entity(src, file, &p, item, errors) {
                        doc.routes.push(r);
                    }
                }
            }
            "server" | "tenant" | "application" => {
                let DeValue::Table(items) = value.get_ref() else {
                    errors.push(src.error(file, &path, format!("expected tables: write [{k}.NAME]")));
                    continue;
                };
                for (name, item) in items.iter() {
                    let name = name.get_ref().to_string();
                    let p = path.clone().key(name.clone());
                    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                        errors.push(src.error(file, &p, "names may not be empty or contain spaces or control characters"));
                        continue;
                    }
                    if k == "tenant" && name == "system" {
                        // The `list` label of the blacklist metrics says
                        // `system` for the system list.
                        errors.push(src.error(file, &p, "the tenant name \"system\" is reserved (it names the system blacklist in metrics and the admin API); choose another name"));
                        doc.broken.push(("tenant", name));
                        continue;
                    }
                    match k {
                        "server" => match server(src, file, &p, item, errors) {
                            Some(v) => doc.servers.push((name, v)),
                            None => doc.broken.push(("server", name)),
                        },
                        "tenant" => match entity(src, file, &p, item, errors) {
                            Some(v) => doc.tenants.push((name, v)),
                            None => doc.broken.push(("tenant", name)),
                        },
                        _ => match entity(src, file, &p, item, errors) {
                            Some(v) => doc.applications.push((name, v)),
                            None => doc.broken.push(("application", name)),
                        },
                    }
                }
            }
            other => errors.push(src.error(
                file,
                &path,
                format!("unknown key `{other}`, expected one of include, system, listener, tls, limits, admin, log, health, reload, queue, cluster, server, tenant, application, route, dkim"),
            )),
        }
    }
}

/// Loads and validates a config file and everything it includes.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let fail = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            key: String::new(),
            message,
        }])
    };
    let bytes = super::values::read_limited(path, MAX_FILE).map_err(fail)?;
    let text = String::from_utf8(bytes).map_err(|_| fail("the config file is not UTF-8".into()))?;
    load_inner(&text, path.display().to_string(), Some(path.to_path_buf()))
}

/// Loads a config given as text; `name` is used in error messages and
/// relative paths resolve against `base_dir`.
pub fn load_str(text: &str, name: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    load_inner(text, name.to_owned(), Some(base_dir.join(name)))
}

/// Loads the embedded default config (paths relative to the working directory).
pub fn load_default() -> Result<Config, ConfigErrors> {
    load_inner(DEFAULT_CONFIG, "<embedded default>".to_owned(), None)
}

fn include_patterns(table: &Spanned<DeTable<'_>>) -> Result<Vec<String>, String> {
    match table.get_ref().get("include").map(|v| v.get_ref()) {
        None => Ok(Vec::new()),
        Some(DeValue::Array(a)) => a
            .iter()
            .map(|v| {
                v.get_ref()
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "expected an array of glob strings".to_owned())
            })
            .collect(),
        Some(DeValue::String(s)) => Ok(vec![s.to_string()]),
        Some(_) => {
            Err("expected an array of glob strings, e.g. include = [\"tenants/*.toml\"]".into())
        }
    }
}

fn load_inner(text: &str, name: String, path: Option<PathBuf>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let (table, syntax) = DeTable::parse_recoverable(text);
    for e in &syntax {
        errors.push(ConfigError {
            file: name.clone(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            key: String::new(),
            message: format!("TOML syntax error: {}", e.message().trim()),
        });
    }
    if !errors.is_empty() {
        // Without the file's tables every later check would only echo
        // the syntax error ("no [[listener]] is configured"...).
        return Err(ConfigErrors(errors));
    }
    let mut files = vec![SourceFile {
        name: name.clone(),
        path: path.clone(),
        text,
        table: syntax.is_empty().then_some(table),
    }];

    // Included files are read in full before any is parsed, because parsed
    // tables borrow the text.
    let included = match &files[0].table {
        Some(t) => {
            let (inc, errs, _) = read_includes(t, text, &name, path.as_deref());
            errors.extend(errs);
            inc
        }
        None => Vec::new(),
    };
    for (iname, ipath, itext) in &included {
        let (t, syn) = DeTable::parse_recoverable(itext);
        for e in &syn {
            errors.push(ConfigError {
                file: iname.clone(),
                line: e.span().map_or(0, |s| line_of(itext, s.start)),
                key: String::new(),
                message: format!("TOML syntax error: {}", e.message().trim()),
            });
        }
        files.push(SourceFile {
            name: iname.clone(),
            path: Some(ipath.clone()),
            text: itext,
            table: syn.is_empty().then_some(t),
        });
    }

    if errors
        .iter()
        .any(|e| e.message.starts_with("TOML syntax error"))
    {
        return Err(ConfigErrors(errors));
    }
    let src = Sources { files };
    let mut doc = RawDoc::default();
    for i in 0..src.files.len() {
        collect(&src, i, &mut doc, &mut errors);
    }
    let hash = content_hash(src.files.iter().map(|f| (f.name.as_str(), f.text)));
    let file_paths = src.files.iter().filter_map(|f| f.path.clone()).collect();
    super::validate::validate(&src, doc, errors, hash, file_paths, name)
}

/// Reads every file the `include` globs of the main file's `table` match.
/// The third value says whether some read failed for a reason other than
/// a missing file (out of file descriptors, an I/O error): the file watcher
/// must not take such a moment for a change.
#[allow(clippy::type_complexity)]
fn read_includes(
    t: &Spanned<DeTable<'_>>,
    text: &str,
    name: &str,
    path: Option<&Path>,
) -> (Vec<(String, PathBuf, String)>, Vec<ConfigError>, bool) {
    let mut included: Vec<(String, PathBuf, String)> = Vec::new();
    let mut errors = Vec::new();
    let mut transient = false;
    let name = name.to_owned();
    let base = path
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    match include_patterns(t) {
        Err(m) => errors.push(ConfigError {
            file: name.clone(),
            line: t
                .get_ref()
                .get_key_value("include")
                .map_or(0, |(k, _)| line_of(text, k.span().start)),
            key: "include".into(),
            message: m,
        }),
        Ok(patterns) => {
            for pat in patterns {
                let full = base.join(&pat);
                let found = glob::glob(&full.to_string_lossy());
                let mut paths: Vec<PathBuf> = match found {
                    Ok(it) => {
                        // A directory or file the glob cannot read is an
                        // error, not a file that is not there: a reload must
                        // not drop its tenants for a transient failure.
                        let mut paths = Vec::new();
                        let mut failed = false;
                        for entry in it.take(MAX_INCLUDES + 1) {
                            match entry {
                                Ok(p) => paths.push(p),
                                Err(e) => {
                                    failed = true;
                                    transient |= e.error().kind() != std::io::ErrorKind::NotFound;
                                    errors.push(ConfigError {
                                        file: e.path().display().to_string(),
                                        line: 0,
                                        key: "include".into(),
                                        message: format!(
                                            "cannot read while matching {pat:?}: {}",
                                            e.error()
                                        ),
                                    });
                                }
                            }
                        }
                        if failed {
                            continue;
                        }
                        // A pattern without wildcards names one file: its
                        // absence is an error (a glob may match nothing).
                        if paths.is_empty() && !pat.contains(['*', '?', '[']) {
                            errors.push(ConfigError {
                                file: name.clone(),
                                line: 0,
                                key: "include".into(),
                                message: format!("included file {pat:?} does not exist"),
                            });
                            continue;
                        }
                        paths
                    }
                    Err(e) => {
                        errors.push(ConfigError {
                            file: name.clone(),
                            line: 0,
                            key: "include".into(),
                            message: format!("invalid glob {pat:?}: {e}"),
                        });
                        continue;
                    }
                };
                if paths.len() > MAX_INCLUDES {
                    errors.push(ConfigError {
                        file: name.clone(),
                        line: 0,
                        key: "include".into(),
                        message: format!("{pat:?} matches more than {MAX_INCLUDES} files"),
                    });
                    continue;
                }
                paths.sort();
                for p in paths {
                    let read = match super::values::read_limited_io(&p, MAX_FILE) {
                        Ok(Some(b)) => String::from_utf8(b).map_err(|_| "not UTF-8".to_owned()),
                        Ok(None) => Err(format!("larger than {MAX_FILE} bytes")),
                        Err(e) => {
                            transient |= e.kind() != std::io::ErrorKind::NotFound;
                            Err(e.to_string())
                        }
                    };
                    match read {
                        Ok(t) => included.push((p.display().to_string(), p, t)),
                        Err(e) => errors.push(ConfigError {
                            file: p.display().to_string(),
                            line: 0,
                            key: String::new(),
                            message: format!("cannot read included file: {e}"),
                        }),
                    }
                }
            }
        }
    }
    (included, errors, transient)
}

fn content_hash<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, text) in files {
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(text.as_bytes());
        ctx.update(&[0]);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The content hash of `paths` (files a config refers to); a file that
/// cannot be read counts as empty, so its appearing is a change too.
pub fn files_hash(paths: &[PathBuf]) -> String {
    let contents: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let bytes = super::values::read_limited(p, MAX_FILE).unwrap_or_default();
            (
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
        .collect();
    content_hash(contents.iter().map(|(n, t)| (n.as_str(), t.as_str())))
}

/// The content hash of the config file at `path` and every file its
/// `include` globs match now — the same value [`Config::hash`] has when
/// these files are loaded. Reload uses it to notice changes (content, not
/// modification times); a file that cannot be read or parsed still gives
/// a hash, so a broken edit is noticed too.
pub fn source_hash(path: &Path) -> String {
    source_hash_checked(path).0
}

/// [`source_hash`], and whether some read failed for a reason other than a
/// missing file (then the hash says nothing about the files).
fn source_hash_checked(path: &Path) -> (String, bool) {
    let name = path.display().to_string();
    let (text, mut transient) = match super::values::read_limited_io(path, MAX_FILE) {
        Ok(b) => (
            b.and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default(),
            false,
        ),
        Err(e) => (String::new(), e.kind() != std::io::ErrorKind::NotFound),
    };
    let (table, syntax) = DeTable::parse_recoverable(&text);
    let included = if syntax.is_empty() {
        let (inc, _, t) = read_includes(&table, &text, &name, Some(path));
        transient |= t;
        inc
    } else {
        Vec::new()
    };
    let hash = content_hash(
        std::iter::once((name.as_str(), text.as_str()))
            .chain(included.iter().map(|(n, _, t)| (n.as_str(), t.as_str()))),
    );
    (hash, transient)
}

/// What the file watcher compares: the hash of the config files and of
/// the files they refer to, or `None` when a file could not be read for a
/// reason other than being missing (out of file descriptors, an I/O
/// error): such a moment is not a config change.
pub fn watch_hash(main: &Path, referenced: &[PathBuf]) -> Option<String> {
    let (source, transient) = source_hash_checked(main);
    let unreadable = referenced.iter().any(|p| {
        super::values::read_limited_io(p, MAX_FILE)
            .is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
    });
    (!transient && !unreadable).then(|| format!("{source}/{}", files_hash(referenced)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_display() {
        let p = KeyPath::new(["listener"]).index(2).key("address");
        assert_eq!(p.to_string(), "listener[2].address");
    }

    #[test]
    fn line_lookup_follows_keys() {
        let text = "[system]\nhostname = \"x\"\n\n[server.a]\nhost = \"h\"\nport = 25\n";
        let (t, _) = DeTable::parse_recoverable(text);
        let src = Sources {
            files: vec![SourceFile {
                name: "f".into(),
                path: None,
                text,
                table: Some(t),
            }],
        };
        assert_eq!(src.line(0, &KeyPath::new(["server", "a", "port"])), 6);
        assert_eq!(src.line(0, &KeyPath::new(["server", "a", "missing"])), 4);
        assert_eq!(src.line(0, &KeyPath::new(["system", "hostname"])), 2);
        assert_eq!(src.line(0, &KeyPath::new(["nothing"])), 0);
    }
}
