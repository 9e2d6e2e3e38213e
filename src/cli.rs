//! The command line (PRODUCT §4): argument parsing and the commands that
//! do not serve mail — `check-config`, `explain`, `hash-password`. `run`
//! hands over to the server modules; `test-server` and `check-config
//! --probe` to `upstream::probe`.
//!
//! Exit codes: 0 success, 64 bad config or usage, 1 any other failure;
//! the run-time commands (`limits`, `blacklist`, `queue`, `status`, in
//! `admin::client`) also 69 when the daemon cannot be reached.

use crate::config::{self, Config, ConfigErrors};
use crate::explain;
use crate::upstream::probe;
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code for a refused config (EX_USAGE, as PRODUCT §4 specifies).
pub const EXIT_CONFIG: u8 = 64;

/// smarthost: an SMTP submission proxy and smart relay.
#[derive(Debug, Parser)]
#[command(name = "smarthost", version, about)]
pub struct Cli {
    /// The config file. Default for `run`: ./smarthost.toml if present, else
    /// the embedded default (127.0.0.1:2525, capture outbox in ./outbox).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve until SIGTERM/SIGINT; SIGHUP or a change of the config files reloads.
    Run(RunArgs),
    /// Validate the config; exit 0 when valid, 64 with every error otherwise.
    CheckConfig(CheckConfigArgs),
    /// Dry run: identification, rewrites, recipients and server chain for a message.
    Explain(ExplainArgs),
    /// Read a password on stdin and print an argon2id hash for `password_hash`.
    HashPassword,
    /// Send a real test message through one SMTP server; print the dialogue
    /// summary; exit 0 only if it was accepted.
    TestServer(TestServerArgs),
    /// Send limits of the running daemon: show, or reset one server's counters.
    Limits(LimitsArgs),
    /// The running daemon's blacklists: list, add or remove runtime entries.
    Blacklist(BlacklistArgs),
    /// The running daemon's queue: list, show, retry, delete, hold, release.
    Queue(QueueArgs),
    /// Servers, health, queue and test mode of the running daemon.
    Status(StatusArgs),
    /// Print the DNS TXT record to publish for each `[[dkim]]` key.
    DkimRecord(DkimRecordArgs),
}

/// Options every run-time command takes.
#[derive(Debug, Args)]
pub struct ControlOpts {
    /// Print exactly one JSON document (PRODUCT §4.1) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `limits` options.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: LimitsAction,
    /// Common options.
    #[command(flatten)]
    pub opts: ControlOpts,
}

/// `limits` subcommands.
#[derive(Debug, Subcommand)]
pub enum LimitsAction {
    /// Every server with a limit: used, remaining, resets in.
    Show,
    /// Clear the counters of one server.
    Reset {
        /// The server.
        server: String,
    },
}

/// `blacklist` options.
#[derive(Debug, Args)]
pub struct BlacklistArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: BlacklistCmd,
    /// Common options.
    #[command(flatten)]
    pub opts: ControlOpts,
}

/// `blacklist` subcommands.
#[derive(Debug, Subcommand)]
pub enum BlacklistCmd {
    /// Every entry, from the file and added at run time.
    List {
        /// Only this tenant's list.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Add a runtime entry (kept across restarts and reloads).
    Add {
        /// An address or "@domain".
        entry: String,
        /// The tenant's list (default: the system list).
        #[arg(long)]
        tenant: Option<String>,
        /// The entry's action (default: its list's action).
        #[arg(long, value_parser = ["drop", "reject"])]
        action: Option<String>,
    },
    /// Remove a runtime entry (file entries are removed in the file).
    Remove {
        /// An address or "@domain".
        entry: String,
        /// The tenant's list (default: the system list).
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `queue` options.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: QueueCmd,
    /// Common options.
    #[command(flatten)]
    pub opts: ControlOpts,
}

/// `queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// Every queued message.
    List,
    /// One message.
    Show {
        /// The queue id.
        id: String,
    },
    /// Deliver now: one message, or `--all`.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        /// The queue id.
        id: Option<String>,
        /// Every message.
        #[arg(long)]
        all: bool,
    },
    /// Remove a message without delivering it.
    Delete {
        /// The queue id.
        id: String,
    },
    /// Keep a message from being delivered.
    Hold {
        /// The queue id.
        id: String,
    },
    /// Deliver a held message again.
    Release {
        /// The queue id.
        id: String,
    },
}

/// `status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Common options.
    #[command(flatten)]
    pub opts: ControlOpts,
}

/// `dkim-record` options.
#[derive(Debug, Args)]
pub struct DkimRecordArgs {
    /// Print a JSON array of `{domain, selector, tenant, algorithm, name, value}`.
    #[arg(long)]
    pub json: bool,
}

/// `test-server` options.
#[derive(Debug, Args)]
pub struct TestServerArgs {
    /// The server (`[server.NAME]`, kind smtp).
    pub name: String,
    /// The recipient.
    #[arg(long)]
    pub to: String,
    /// The sender (default: the server's fixed sender, else the owning
    /// tenant's, else the system default sender).
    #[arg(long)]
    pub from: Option<String>,
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Log format, overriding `[log] format`.
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Do not probe new or changed servers before a reloaded config goes
    /// live (overrides `[reload] probe`).
    #[arg(long)]
    pub no_probe_on_reload: bool,
}

/// `check-config` options.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Also connect to every SMTP server (TCP, TLS, AUTH; no mail).
    #[arg(long)]
    pub probe: bool,
}

/// `explain` options.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["app", "auth_user", "client_ip"])))]
pub struct ExplainArgs {
    /// The application by name.
    #[arg(long)]
    pub app: Option<String>,
    /// Identify as this SMTP AUTH user.
    #[arg(long)]
    pub auth_user: Option<String>,
    /// Identify by client address.
    #[arg(long)]
    pub client_ip: Option<IpAddr>,
    /// With --client-ip: the listener (name or address) the client connects
    /// to (default: the first [[listener]]).
    #[arg(long)]
    pub listener: Option<String>,
    /// Envelope sender (also the From header of the sample message).
    #[arg(long)]
    pub from: String,
    /// Recipients.
    #[arg(long, required = true, num_args = 1..)]
    pub to: Vec<String>,
    /// Subject of the sample message.
    #[arg(long, default_value = "explain")]
    pub subject: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Loads the config named on the command line, or the default one.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    match path {
        Some(p) => config::load_file(p),
        None if Path::new("smarthost.toml").exists() => {
            config::load_file(Path::new("smarthost.toml"))
        }
        None => config::load_default(),
    }
}

/// Prints every config error as `file:line: key: message`.
pub fn print_errors(errs: &ConfigErrors) {
    let mut err = std::io::stderr().lock();
    for e in &errs.0 {
        let _ = writeln!(err, "{e}");
    }
    let _ = writeln!(
        err,
        "smarthost: {} error(s); configuration refused",
        errs.0.len()
    );
}

fn check_config(cli: &Cli, args: &CheckConfigArgs) -> ExitCode {
    match load_config(cli.config.as_deref()) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("{w} (warning)");
            }
            let what = if cli.config.is_none() && !Path::new("smarthost.toml").exists() {
                "no --config given and no ./smarthost.toml here: the embedded default config"
                    .to_owned()
            } else {
                cfg.source.clone()
            };
            crate::outln!(
                "{}: ok ({} listener(s), {} server(s), {} tenant(s), {} application(s), {} route(s))",
                what,
                cfg.listeners.len(),
                cfg.servers.len(),
                cfg.tenants.len(),
                cfg.applications.len(),
                cfg.routes.len()
            );
            if args.probe {
                probe_servers(&cfg)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            print_errors(&e);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("smarthost: cannot start the runtime: {e}");
            None
        }
    }
}

/// How many servers `check-config --probe` talks to at once.
const PROBE_CONCURRENCY: usize = 8;

/// Probes every SMTP and Graph server; exit 1 when any probe failed.
fn probe_servers(cfg: &Config) -> ExitCode {
    let servers: Vec<(String, config::SmtpServer)> = cfg
        .servers
        .iter()
        .filter_map(|(n, s)| match &s.kind {
            config::ServerKind::Smtp(smtp) => Some((n.clone(), smtp.clone())),
            config::ServerKind::Capture(_) | config::ServerKind::Graph(_) => None,
        })
        .collect();
    let graphs: Vec<(String, config::GraphServer)> = cfg
        .servers
        .iter()
        .filter_map(|(n, s)| match &s.kind {
            config::ServerKind::Graph(g) => Some((n.clone(), g.clone())),
            _ => None,
        })
        .collect();
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let upstreams = std::sync::Arc::new(crate::upstream::Upstreams::default());
    let mut results = rt.block_on(probe::probe_all(
        upstreams.clone(),
        servers,
        PROBE_CONCURRENCY,
    ));
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            Ok(p) => crate::outln!(
                "probe {name}: ok ({}, {}, AUTH {})",
                p.connected_to,
                p.tls
                    .as_ref()
                    .map_or("no TLS".to_owned(), |(v, c)| format!("{v} {c}")),
                p.auth.unwrap_or("none")
            ),
            Err(f) => {
                failed += 1;
                crate::outln!("probe {name}: FAILED ({}): {}", f.class, f.reason);
            }
        }
    }
    let total = results.len() + graphs.len();
    results.clear();
    for (name, g) in &graphs {
        match rt.block_on(crate::upstream::graph::probe(&upstreams, name, g)) {
            Ok(p) => println!(
                "probe {name}: ok (Graph {}, token and mailbox {} \"{}\")",
                g.graph_url, p.address, p.display_name
            ),
            Err(f) => {
                failed += 1;
                println!("probe {name}: FAILED ({}): {}", f.class, f.reason);
            }
        }
    }
    if failed > 0 {
        eprintln!("smarthost: {failed} of {total} server probe(s) failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn test_server(cli: &Cli, args: &TestServerArgs) -> ExitCode {
    let cfg = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            print_errors(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let smtp = match cfg.servers.get(&args.name).map(|s| &s.kind) {
        Some(config::ServerKind::Smtp(s)) => s.clone(),
        Some(config::ServerKind::Graph(g)) => return test_graph_server(&cfg, args, g),
        Some(config::ServerKind::Capture(_)) => {
            eprintln!(
                "smarthost test-server: {:?} is not an SMTP server",
                args.name
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        None => {
            eprintln!("smarthost test-server: no server named {:?}", args.name);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let id = crate::util::IdGen::default().next();
    let msg = match probe::compose_test_message(
        &cfg,
        &args.name,
        &args.to,
        args.from.as_deref(),
        crate::util::unix_now(),
        &id,
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("smarthost test-server: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let upstreams = crate::upstream::Upstreams::default();
    let report = rt.block_on(probe::test_message(
        &upstreams,
        &args.name,
        &smtp,
        &msg.mail_from,
        &args.to,
        msg.content,
    ));
    crate::outln!(
        "server:       {} ({}:{}, security = \"{}\")",
        args.name,
        smtp.host,
        smtp.port,
        spelling(&smtp.security)
    );
    if let Some(s) = &report.session {
        crate::out!("{s}");
    }
    crate::outln!(
        "envelope:     MAIL FROM:<{}> RCPT TO:<{}>",
        msg.mail_from,
        args.to
    );
    for r in &report.refused {
        crate::outln!("refused:      {} {} {}", r.rcpt, r.code, r.reason);
    }
    match &report.result {
        Ok(reply) => {
            crate::outln!("result:       accepted: {reply}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::outln!("result:       NOT accepted: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints each key's TXT record: zone-file lines (the value split into
/// strings of at most 255 characters, as DNS requires), or JSON.
fn dkim_record(cli: &Cli, args: &DkimRecordArgs) -> ExitCode {
    let cfg = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            print_errors(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.json {
        let all: Vec<serde_json::Value> = cfg
            .dkim
            .iter()
            .map(|k| {
                let (name, value) = k.dns_record();
                serde_json::json!({
                    "domain": k.domain,
                    "selector": k.selector,
                    "tenant": k.tenant,
                    "algorithm": match k.algorithm {
                        crate::dkim::Algorithm::Rsa => "rsa",
                        crate::dkim::Algorithm::Ed25519 => "ed25519",
                    },
                    "name": name,
                    "value": value,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(all));
        return ExitCode::SUCCESS;
    }
    if cfg.dkim.is_empty() {
        eprintln!("smarthost dkim-record: the config has no [[dkim]] keys");
    }
    for k in &cfg.dkim {
        let (name, value) = k.dns_record();
        let parts: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        println!("{name}. IN TXT ( {} )", parts.join(" "));
    }
    ExitCode::SUCCESS
}

/// `test-server` for a Graph server: token, mailbox, then one message.
fn test_graph_server(cfg: &Config, args: &TestServerArgs, g: &config::GraphServer) -> ExitCode {
    let id = crate::util::IdGen::default().next();
    let msg = match probe::compose_test_message(
        cfg,
        &args.name,
        &args.to,
        args.from.as_deref(),
        crate::util::unix_now(),
        &id,
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("smarthost test-server: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let upstreams = crate::upstream::Upstreams::default();
    println!(
        "server:       {} (Microsoft Graph {}, mailbox {})",
        args.name, g.graph_url, g.mailbox
    );
    match rt.block_on(crate::upstream::graph::probe(&upstreams, &args.name, g)) {
        Ok(p) => println!(
            "mailbox:      {} \"{}\" (token ok)",
            p.address, p.display_name
        ),
        Err(f) => {
            println!(
                "result:       NOT accepted: {} failure: {}",
                f.class, f.reason
            );
            return ExitCode::FAILURE;
        }
    }
    println!(
        "envelope:     sender {} recipient {}",
        msg.mail_from, args.to
    );
    let header_end =
        memchr::memmem::find(&msg.content, b"\r\n\r\n").map_or(msg.content.len(), |p| p + 2);
    let message = crate::message::Message::in_memory(msg.content.clone());
    let rcpts = [args.to.clone()];
    let out = crate::upstream::graph::GraphMessage {
        mail_from: &msg.mail_from,
        rcpt_to: &rcpts,
        header: &msg.content[..header_end],
        message: &message,
        body_offset: header_end,
    };
    match rt.block_on(crate::upstream::graph::send(
        &upstreams, &args.name, g, &out,
    )) {
        crate::delivery::HopResult::Accepted { refused, .. } if refused.is_empty() => {
            println!("result:       accepted (202)");
            ExitCode::SUCCESS
        }
        crate::delivery::HopResult::Accepted { refused, .. } => {
            for r in &refused {
                println!("refused:      {} {} {}", r.rcpt, r.code, r.reason);
            }
            println!("result:       NOT accepted");
            ExitCode::FAILURE
        }
        crate::delivery::HopResult::Permanent { code, reason, .. } => {
            println!("result:       NOT accepted: refused: {code} {reason}");
            ExitCode::FAILURE
        }
        crate::delivery::HopResult::Failover(f) => {
            println!(
                "result:       NOT accepted: {} failure: {}",
                f.class, f.reason
            );
            ExitCode::FAILURE
        }
    }
}

/// A config value as it is spelled in the file (`starttls-when-available`),
/// not its Rust name.
fn spelling<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn explain_cmd(cli: &Cli, args: &ExplainArgs) -> ExitCode {
    // A plan holds the snapshot it was computed against.
    let cfg = match load_config(cli.config.as_deref()) {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            print_errors(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let who = if let Some(a) = &args.app {
        explain::Who::App(a.clone())
    } else if let Some(u) = &args.auth_user {
        explain::Who::AuthUser(u.clone())
    } else if let Some(ip) = args.client_ip {
        explain::Who::ClientIp {
            ip,
            listener: args.listener.clone(),
        }
    } else {
        unreachable!("clap requires one of --app, --auth-user, --client-ip")
    };
    let req = explain::Request {
        who,
        from: args.from.clone(),
        to: args.to.clone(),
        subject: args.subject.clone(),
    };
    match explain::explain(&cfg, &req) {
        Ok(mut report) => {
            if report.server_chain.iter().any(|h| h.limit.is_some()) {
                budgets(&cfg, &mut report);
            }
            if args.json {
                crate::outln!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                crate::out!("{}", report.to_text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smarthost explain: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Each limited hop's budget: from the persisted counters when no daemon
/// holds the store, else from the daemon's admin API, else unknown.
fn budgets(cfg: &crate::config::Config, report: &mut explain::Report) {
    match crate::limits::offline_rows(cfg) {
        Ok(rows) => report.set_budgets(Ok(&rows)),
        Err(crate::limits::OfflineError::Locked) => {
            let call = crate::admin::client::Call {
                method: "GET",
                path: "limits".to_owned(),
                body: None,
            };
            let rows = crate::admin::client::call(cfg, &call)
                .ok()
                .filter(|a| a.status == 200)
                .and_then(|a| {
                    serde_json::from_slice::<Vec<crate::admin::types::LimitRow>>(&a.body).ok()
                });
            match rows {
                Some(rows) => report.set_budgets(Ok(&rows)),
                None => report.set_budgets(Err("daemon running; see `smarthost limits show`")),
            }
        }
        Err(e) => report.set_budgets(Err(&e.to_string())),
    }
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        eprintln!("smarthost hash-password: cannot read stdin");
        return ExitCode::FAILURE;
    }
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        eprintln!("smarthost hash-password: empty password");
        return ExitCode::FAILURE;
    }
    match crate::auth::hash_password(pw) {
        Ok(h) => {
            crate::outln!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smarthost hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up logging per `[log]` (or `format`, when given); `RUST_LOG`, when
/// set, overrides the level.
pub fn init_logging(cfg: &Config, format: Option<&str>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = match format {
        Some(f) => f == "json",
        None => cfg.log.format == config::LogFormat::Json,
    };
    let _ = if json {
        b.json().flatten_event(true).try_init()
    } else {
        b.with_ansi(false).try_init()
    };
}

fn run(cli: &Cli, args: &RunArgs) -> ExitCode {
    let cfg = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            print_errors(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&cfg, args.log_format.as_deref());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cfg.system.worker_threads {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smarthost: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = crate::server::RunOptions {
        probe_on_reload: !args.no_probe_on_reload,
    };
    match rt.block_on(crate::server::run_until_signal(cfg, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "smarthost stopped");
            eprintln!("smarthost: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The run-time commands: one admin API call each.
fn control(cli: &Cli) -> ExitCode {
    use crate::admin::client::{self as c, Call};
    let cfg = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            print_errors(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let q = c::query_value;
    let call = |method, path: String, body| Call { method, path, body };
    let (call, json, render): (Call, bool, c::Render) = match &cli.command {
        Command::Limits(a) => match &a.action {
            LimitsAction::Show => (
                call("GET", "limits".into(), None),
                a.opts.json,
                c::render_limits,
            ),
            LimitsAction::Reset { server } => (
                call("POST", format!("limits/{}/reset", q(server)), None),
                a.opts.json,
                c::render_ok,
            ),
        },
        Command::Blacklist(a) => match &a.action {
            BlacklistCmd::List { tenant } => (
                call(
                    "GET",
                    match tenant {
                        Some(t) => format!("blacklist?tenant={}", q(t)),
                        None => "blacklist".into(),
                    },
                    None,
                ),
                a.opts.json,
                c::render_blacklist,
            ),
            BlacklistCmd::Add {
                entry,
                tenant,
                action,
            } => (
                call(
                    "POST",
                    "blacklist".into(),
                    Some(serde_json::json!({ "entry": entry, "tenant": tenant, "action": action })),
                ),
                a.opts.json,
                c::render_ok,
            ),
            BlacklistCmd::Remove { entry, tenant } => (
                call(
                    "DELETE",
                    match tenant {
                        Some(t) => format!("blacklist?entry={}&tenant={}", q(entry), q(t)),
                        None => format!("blacklist?entry={}", q(entry)),
                    },
                    None,
                ),
                a.opts.json,
                c::render_ok,
            ),
        },
        Command::Queue(a) => {
            let j = a.opts.json;
            match &a.action {
                QueueCmd::List => (call("GET", "queue".into(), None), j, c::render_queue),
                QueueCmd::Show { id } => (
                    call("GET", format!("queue/{}", q(id)), None),
                    j,
                    c::render_queue_entry,
                ),
                QueueCmd::Retry { all: true, .. } => (
                    call("POST", "queue/retry-all".into(), None),
                    j,
                    c::render_ok,
                ),
                QueueCmd::Retry { id, .. } => (
                    call(
                        "POST",
                        format!("queue/{}/retry", q(id.as_deref().unwrap_or_default())),
                        None,
                    ),
                    j,
                    c::render_ok,
                ),
                QueueCmd::Delete { id } => (
                    call("DELETE", format!("queue/{}", q(id)), None),
                    j,
                    c::render_ok,
                ),
                QueueCmd::Hold { id } => (
                    call("POST", format!("queue/{}/hold", q(id)), None),
                    j,
                    c::render_ok,
                ),
                QueueCmd::Release { id } => (
                    call("POST", format!("queue/{}/release", q(id)), None),
                    j,
                    c::render_ok,
                ),
            }
        }
        Command::Status(a) => (
            call("GET", "status".into(), None),
            a.opts.json,
            c::render_status,
        ),
        _ => unreachable!("control() is called for run-time commands only"),
    };
    c::run(&cfg, call, json, render)
}

/// Runs the command line; `main` only calls this.
pub fn main() -> ExitCode {
    // Exactly one crypto provider, chosen before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            // Help and version are not errors; a usage error is EX_USAGE.
            return if usage {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match &cli.command {
        Command::CheckConfig(a) => check_config(&cli, a),
        Command::Explain(a) => explain_cmd(&cli, a),
        Command::HashPassword => hash_password(),
        Command::Run(a) => run(&cli, a),
        Command::TestServer(a) => test_server(&cli, a),
        Command::Limits(_) | Command::Blacklist(_) | Command::Queue(_) | Command::Status(_) => {
            control(&cli)
        }
        Command::DkimRecord(a) => dkim_record(&cli, a),
    }
}
