//! The running relay: bound listeners and their accept loops with the
//! connection limit, the relay's shared state (config snapshot, pools,
//! health, metrics; sessions get the narrow `session::services::Services`
//! handle only), hot reload, and shutdown.
//!
//! `serve` takes listeners that are already bound, so tests bind port 0
//! and read the real port before the relay starts. Accept loops are keyed
//! by the configured address: a reload starts loops for new addresses and
//! stops loops for removed ones, and never touches established sessions.

use crate::config::{Config, ListenerTls, TestModeSetting};
use crate::metrics::{ListenerLabel, ListenerOutcome, ResultLabel, TlsLabels};
use crate::session::admission::{Admission, stranger_share};
use crate::session::driver::{self, Conn};
use crate::session::reply;
use crate::session::state::Session;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// A bound listener socket and the address its `[[listener]]` names.
#[derive(Debug)]
pub struct Bound {
    /// The listener's name in the config.
    pub name: String,
    /// The address as configured (port 0 stays 0 here).
    pub configured: SocketAddr,
    /// The socket.
    pub socket: TcpListener,
}

impl Bound {
    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

async fn bind_one(name: &str, address: SocketAddr) -> io::Result<Bound> {
    let socket = TcpListener::bind(address).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind listener {name} to {address}: {e}"),
        )
    })?;
    Ok(Bound {
        name: name.to_owned(),
        configured: address,
        socket,
    })
}

/// Binds every listener of `cfg`.
pub async fn bind(cfg: &Config) -> io::Result<Vec<Bound>> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        out.push(bind_one(&l.name, l.address).await?);
    }
    Ok(out)
}

/// Why a reload kept the old config.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The relay runs on the embedded default: there is no file to read.
    #[error("no config file to reload (running on the embedded default)")]
    NoFile,
    /// The new config is invalid.
    #[error("{0}")]
    Config(crate::config::ConfigErrors),
    /// A new or changed server failed its probe.
    #[error("server {server} failed its probe ({class}): {reason}")]
    Probe {
        /// The server.
        server: String,
        /// Failure class.
        class: crate::outcome::FailureClass,
        /// What happened.
        reason: String,
    },
    /// A new listener address could not be bound.
    #[error("{0}")]
    Bind(io::Error),
    /// The new config drops tenants or applications that had traffic,
    /// and not by a clean edit (their file is missing or blank).
    #[error(
        "the new config drops {} that had traffic, and their file is missing or blank (a file being rewritten?); remove a definition from its file, or restart to drop a whole file",
        .0.join(", ")
    )]
    Removes(Vec<String>),
}

/// How long after a reload that removed an application clients nobody
/// knows get 4xx instead of 5xx (the removal may be a transient state).
pub const REMOVAL_GRACE: Duration = Duration::from_secs(60);

/// What identifies an accept loop across reloads: the configured address;
/// for port 0 (the OS picks a port each time) also the listener's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LoopKey {
    address: SocketAddr,
    name: Option<String>,
}

impl LoopKey {
    fn of(l: &crate::config::Listener) -> LoopKey {
        LoopKey {
            address: l.address,
            name: (l.address.port() == 0).then(|| l.name.clone()),
        }
    }

    fn matches(&self, l: &crate::config::Listener) -> bool {
        *self == LoopKey::of(l)
    }
}

struct AcceptLoop {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    local: Option<SocketAddr>,
}

/// State shared by every session of a running relay.
pub struct Relay {
    config: Arc<ArcSwap<Config>>,
    conns: Arc<Semaphore>,
    /// Permits in the semaphore, in use or not.
    max_conns: AtomicU32,
    /// Permits to forget as sessions end (a reload lowered max_connections
    /// while more sessions than the new limit were open).
    conn_debt: AtomicU32,
    shutdown: watch::Sender<bool>,
    /// The delivery engine (direct mode and the queue).
    pub engine: Arc<crate::delivery::engine::Engine>,
    queue: std::sync::OnceLock<Arc<crate::queue::Queue>>,
    /// SMTP upstream connection pools.
    pub upstreams: Arc<crate::upstream::Upstreams>,
    /// Every metric.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Upstream server health (survives reloads).
    pub health: Arc<crate::health::Health>,
    /// What every session may use (engine, metrics, AUTH throttle and
    /// verifier, shutdown signal, traffic record): the narrow handle
    /// `session::driver` gets instead of the whole relay.
    pub services: crate::session::services::Services,
    loops: Mutex<HashMap<LoopKey, AcceptLoop>>,
    reloading: tokio::sync::Mutex<()>,
    listening: AtomicBool,
    /// The persistent state store (`{spool}/state.redb`), kept across reloads.
    pub store: Arc<crate::store::Store>,
    /// Runtime blacklist entries (admin API), merged at RCPT.
    pub blacklist: crate::blacklist::RuntimeLists,
    /// The last deliveries, for the admin API and status page.
    pub deliveries: Arc<crate::admin::types::Recent>,
    queue_control: Mutex<Option<Arc<dyn crate::admin::types::QueueControl>>>,
    limits_control: std::sync::OnceLock<Arc<dyn crate::admin::types::LimitsControl>>,
    /// `run --no-probe-on-reload` not given (reloads from the admin API too).
    pub probe_on_reload: AtomicBool,
    /// Sessions of clients no application owns, per address.
    admission: Arc<Admission>,
    /// Rate limits for warnings that floods would repeat endlessly.
    quiet_accept: Quiet,
    quiet_refused: Quiet,
}

/// How often a flood-prone warning may be logged.
const QUIET_INTERVAL: Duration = Duration::from_secs(10);

/// A warning that may come thousands of times a second (accept errors when
/// file descriptors run out, refused floods): logged at most once per
/// [`QUIET_INTERVAL`], with how many were left out since. Counting stays
/// with the metrics.
#[derive(Default)]
struct Quiet {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Quiet {
    /// `Some(left_out)` when this occurrence is to be logged.
    fn allow(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.0 {
            Some(last) if now.saturating_duration_since(last) < QUIET_INTERVAL => {
                s.1 += 1;
                None
            }
            _ => {
                s.0 = Some(now);
                Some(std::mem::take(&mut s.1))
            }
        }
    }
}

/// Logs warnings and test modes of a config going live.
fn announce(cfg: &Config) {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    for t in cfg.tenants.values() {
        if let Some(TestModeSetting::On(tm)) = &t.test_mode {
            tracing::warn!(tenant = %t.name, redirect_to = %tm.redirect_to, "tenant is in test mode");
        }
    }
    for a in cfg.applications.values() {
        if let Some(TestModeSetting::On(tm)) = &a.test_mode {
            tracing::warn!(application = %a.name, redirect_to = %tm.redirect_to, "application is in test mode");
        }
    }
}

impl Relay {
    /// A relay on `cfg` whose state store lives in memory only (runtime
    /// blacklist entries do not survive it): for in-process use.
    pub fn new(cfg: Config) -> Arc<Relay> {
        let store = crate::store::Store::in_memory().expect("an in-memory store opens");
        Relay::with_store(cfg, Arc::new(store)).expect("an empty store loads")
    }

    /// A relay on `cfg` with its persistent state store,
    /// `{system.spool}/state.redb`, opened (blocking: call at start).
    pub fn open(cfg: Config) -> Result<Arc<Relay>, crate::store::StoreError> {
        let store = crate::store::Store::open(&cfg.system.spool)?;
        Relay::with_store(cfg, Arc::new(store))
    }

    fn with_store(
        cfg: Config,
        store: Arc<crate::store::Store>,
    ) -> Result<Arc<Relay>, crate::store::StoreError> {
        let blacklist = crate::blacklist::RuntimeLists::load(store.clone())?;
        let max = cfg.limits.max_connections.min(Semaphore::MAX_PERMITS) as u32;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        metrics.prime(&cfg, crate::util::unix_now());
        let config = Arc::new(ArcSwap::from_pointee(cfg));
        let upstreams = Arc::new(crate::upstream::Upstreams::with_metrics(metrics.clone()));
        let health = Arc::new(crate::health::Health::with_gauge(metrics.server_up.clone()));
        health.prime(
            config.load().servers.keys().map(String::as_str),
            std::time::Instant::now(),
        );
        let deliveries: Arc<crate::admin::types::Recent> = Arc::default();
        let limiter = Arc::new(crate::limits::Limiter::load(
            store.clone(),
            metrics.clone(),
        )?);
        let _ = limiter.rows(&config.load(), crate::util::unix_now());
        let engine = Arc::new(crate::delivery::engine::Engine::new(
            config.clone(),
            upstreams.clone(),
            metrics.clone(),
            health.clone(),
            deliveries.clone(),
            limiter.clone(),
        ));
        let (shutdown, shutdown_signal) = watch::channel(false);
        let services = crate::session::services::Services::new(
            engine.clone(),
            metrics.clone(),
            crate::auth::Verifier::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
            shutdown_signal,
        );
        Ok(Arc::new(Relay {
            config,
            conns: Arc::new(Semaphore::new(max as usize)),
            max_conns: AtomicU32::new(max),
            conn_debt: AtomicU32::new(0),
            shutdown,
            engine,
            queue: std::sync::OnceLock::new(),
            upstreams,
            metrics,
            health,
            services,
            loops: Mutex::new(HashMap::new()),
            reloading: tokio::sync::Mutex::new(()),
            listening: AtomicBool::new(false),
            store,
            blacklist,
            deliveries,
            queue_control: Default::default(),
            limits_control: {
                let l = std::sync::OnceLock::new();
                let _ = l.set(limiter as Arc<dyn crate::admin::types::LimitsControl>);
                l
            },
            probe_on_reload: AtomicBool::new(true),
            admission: Arc::default(),
            quiet_accept: Quiet::default(),
            quiet_refused: Quiet::default(),
        }))
    }

    /// Plugs in the queue's run-time control (the queue does at start;
    /// tests may put a stand-in in its place).
    pub fn set_queue_control(&self, q: Arc<dyn crate::admin::types::QueueControl>) {
        *self.queue_control.lock().unwrap_or_else(|p| p.into_inner()) = Some(q);
    }

    /// The queue's run-time control, when there is a queue.
    pub fn queue_control(&self) -> Option<Arc<dyn crate::admin::types::QueueControl>> {
        self.queue_control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Plugs in the send-limit counters (once).
    pub fn set_limits_control(&self, l: Arc<dyn crate::admin::types::LimitsControl>) {
        let _ = self.limits_control.set(l);
    }

    /// The send-limit counters; until the limits service plugs in its
    /// own, the configured limits with nothing used.
    pub fn limits_control(&self) -> Arc<dyn crate::admin::types::LimitsControl> {
        self.limits_control
            .get()
            .cloned()
            .unwrap_or_else(|| Arc::new(crate::admin::types::ConfiguredLimits))
    }

    /// The current config snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// A new message id.
    pub fn next_id(&self) -> String {
        self.engine.next_id()
    }

    /// The durable queue, once opened.
    pub fn queue(&self) -> Option<Arc<crate::queue::Queue>> {
        self.queue.get().cloned()
    }

    /// Opens the queue in the spool and recovers what it holds (once; a
    /// second call does nothing). `run` calls it before serving, so a spool
    /// that cannot be opened stops the start.
    pub async fn open_queue(&self) -> io::Result<()> {
        if self.queue.get().is_some() {
            return Ok(());
        }
        let cfg = self.config();
        let q = tokio::task::spawn_blocking(move || crate::queue::Queue::open(&cfg))
            .await
            .map_err(io::Error::other)??;
        if self.queue.set(q.clone()).is_err() {
            return Ok(());
        }
        self.engine.set_queue(q.clone());
        let mut slot = self.queue_control.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(Arc::new(crate::queue::control::QueueHandle(q)));
        }
        Ok(())
    }

    /// Receives `true` once shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Begins shutdown: listeners stop accepting, idle sessions get 421.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Sessions in progress.
    pub fn active_sessions(&self) -> usize {
        (self.max_conns.load(Ordering::SeqCst) as usize)
            .saturating_sub(self.conns.available_permits())
    }

    /// The addresses the listeners are bound to now.
    pub fn bound_addresses(&self) -> Vec<SocketAddr> {
        self.lock_loops().values().filter_map(|l| l.local).collect()
    }

    fn lock_loops(&self) -> std::sync::MutexGuard<'_, HashMap<LoopKey, AcceptLoop>> {
        self.loops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Readiness (`/readyz`): listeners bound, a config loaded, and at
    /// least one server of the system chain not marked down. Returns the
    /// reasons it is not ready.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let cfg = self.config();
        let mut why = Vec::new();
        if !self.listening.load(Ordering::SeqCst) || self.lock_loops().len() < cfg.listeners.len() {
            why.push("listeners are not bound".to_owned());
        }
        let system: Vec<&String> = [&cfg.system.default_server, &cfg.system.fallback_server]
            .into_iter()
            .flatten()
            .collect();
        let now = std::time::Instant::now();
        if !system.is_empty() && system.iter().all(|s| self.health.is_down(s, now)) {
            why.push(format!(
                "every server of the system chain is marked down: {}",
                system
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    fn start_loop(self: &Arc<Self>, b: Bound) {
        let (stop, stopped) = watch::channel(false);
        let local = b.local_addr().ok();
        let key = LoopKey {
            address: b.configured,
            name: (b.configured.port() == 0).then(|| b.name.clone()),
        };
        let relay = self.clone();
        let k = key.clone();
        let task = tokio::spawn(async move { relay.accept_loop(b, k, stopped).await });
        self.lock_loops()
            .insert(key, AcceptLoop { stop, task, local });
    }

    /// Accepts on every bound listener until shutdown, then waits up to
    /// the grace period for sessions in progress to finish.
    pub async fn serve(self: &Arc<Self>, bound: Vec<Bound>, grace: Duration) {
        if let Err(e) = self.open_queue().await {
            tracing::error!(error = %e, spool = %self.config().system.spool.display(), "cannot open the queue; queued delivery refuses mail with 451");
        }
        let queue_task = self
            .queue()
            .map(|q| tokio::spawn(q.run(self.engine.clone(), self.shutdown_signal(), grace)));
        for b in bound {
            self.start_loop(b);
        }
        self.listening.store(true, Ordering::SeqCst);
        let mut shutdown = self.shutdown_signal();
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        let loops: Vec<AcceptLoop> = self.lock_loops().drain().map(|(_, l)| l).collect();
        for l in loops {
            l.stop.send_replace(true);
            let _ = l.task.await;
        }
        // Every session holds a permit; all permits back means all done.
        // Then the DSNs those sessions started, within what is left.
        let deadline = tokio::time::Instant::now() + grace;
        // Permits still owed to a lowered max_connections will be forgotten,
        // not returned: wait only for the others.
        let max = self.max_conns.load(Ordering::SeqCst) - self.conn_debt.load(Ordering::SeqCst);
        match tokio::time::timeout_at(deadline, self.conns.acquire_many(max)).await {
            Ok(_) => tracing::info!("all sessions finished"),
            Err(_) => tracing::warn!(
                sessions = self.active_sessions(),
                "grace period over; closing remaining sessions"
            ),
        }
        // Queue deliveries in flight finish within the grace period; the
        // rest stays in the spool.
        if let Some(t) = queue_task {
            let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), t).await;
        }
    }

    async fn accept_loop(self: Arc<Self>, b: Bound, key: LoopKey, mut stop: watch::Receiver<bool>) {
        let mut shutdown = self.shutdown_signal();
        match b.local_addr() {
            Ok(address) => tracing::info!(listener = %b.name, %address, "listening"),
            Err(e) => tracing::info!(listener = %b.name, error = %e, "listening"),
        }
        loop {
            if *shutdown.borrow() || *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = stop.changed() => {}
                r = b.socket.accept() => match r {
                    Ok((tcp, peer)) => self.clone().accepted(&key, tcp, peer),
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // briefly, and do not flood the log meanwhile.
                        if let Some(left_out) = self.quiet_accept.allow(Instant::now()) {
                            tracing::error!(listener = %b.name, error = %e, left_out, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracing::info!(listener = %b.name, "stopped accepting");
    }

    fn accepted(self: Arc<Self>, key: &LoopKey, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        // The session pins this snapshot for its whole life; the listener's
        // settings come from it, found by the address the loop serves.
        let cfg = self.config();
        let Some(l) = cfg.listeners.iter().find(|l| key.matches(l)).cloned() else {
            // A reload removed this listener a moment ago.
            tokio::spawn(refuse(tcp, reply::shutting_down()));
            return;
        };
        let count = |outcome: &'static str| {
            self.metrics
                .connections
                .get_or_create(&ListenerOutcome {
                    listener: l.name.clone(),
                    outcome,
                })
                .inc();
        };
        // Behind a PROXY-protocol balancer the peer is the balancer: the
        // client's address is known only once the header is read, so the
        // connect-time checks by address do not apply there (identification
        // at MAIL still does).
        let owned =
            l.proxy_protocol || crate::policy::identify(&cfg, Some(&l), None, peer.ip()).is_some();
        // A client nobody owns on a listener without AUTH and without a
        // bound application can never relay (PRODUCT §3.1): refused at
        // connect, counted, not logged line by line.
        if !owned && l.auth == crate::config::ListenerAuth::None {
            count("denied");
            let r = if cfg
                .unknown_transient_until
                .is_some_and(|t| Instant::now() < t)
            {
                reply::not_recognised_for_now()
            } else {
                reply::connection_denied()
            };
            tokio::spawn(refuse(tcp, r));
            return;
        }
        let ticket = if owned {
            None
        } else {
            let share = stranger_share(cfg.limits.max_connections, cfg.identifies_without_auth());
            match self.admission.admit_stranger(
                peer.ip(),
                cfg.limits.max_connections_per_client,
                share,
            ) {
                Ok(t) => Some(t),
                Err(why) => {
                    count("per_client");
                    if let Some(left_out) = self.quiet_refused.allow(Instant::now()) {
                        tracing::warn!(listener = %l.name, %peer, ?why, left_out, "connection refused: too many from clients no application owns");
                    }
                    tokio::spawn(refuse(tcp, reply::too_many_from_client()));
                    return;
                }
            }
        };
        let permit = self.conns.clone().try_acquire_owned();
        count(if permit.is_ok() {
            "accepted"
        } else {
            "refused"
        });
        match permit {
            Ok(permit) => {
                // One span per session: every line logged while serving it
                // (and while delivering its messages in direct mode)
                // carries its id; queued messages keep it in their job.
                let id = self.next_id();
                let span =
                    tracing::info_span!(target: "smarthost::session", "session", session_id = %id);
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        self.clone().session(cfg, l, tcp, peer, id).await;
                        self.release_connection(permit);
                        drop(ticket);
                    },
                    span,
                ));
            }
            Err(_) => {
                if let Some(left_out) = self.quiet_refused.allow(Instant::now()) {
                    tracing::warn!(listener = %l.name, %peer, left_out, "connection refused: max_connections reached");
                }
                tokio::spawn(refuse(tcp, reply::too_many_connections()));
            }
        }
    }

    async fn session(
        self: Arc<Self>,
        cfg: Arc<Config>,
        l: crate::config::Listener,
        mut tcp: TcpStream,
        mut peer: SocketAddr,
        id: String,
    ) {
        if l.proxy_protocol {
            // Behind a load balancer: the header's address is the client
            // from here on (identification, throttling, logs, Received).
            if !crate::proxy::trusted(peer.ip(), &l.proxy_trusted) {
                tracing::warn!(listener = %l.name, %peer, "connection refused: not a trusted PROXY protocol peer");
                return refuse(tcp, reply::proxy_untrusted()).await;
            }
            match crate::proxy::read_header(&mut tcp).await {
                Ok(crate::proxy::Proxied::Client(client)) => {
                    tracing::debug!(listener = %l.name, proxy = %peer, client = %client, "PROXY header");
                    peer = client;
                }
                Ok(crate::proxy::Proxied::Local) => {}
                Err(e) => {
                    tracing::warn!(listener = %l.name, %peer, error = %e, "connection refused: PROXY header");
                    return refuse(tcp, reply::proxy_header_invalid()).await;
                }
            }
        }
        let active = self
            .metrics
            .sessions_active
            .get_or_create_owned(&ListenerLabel {
                listener: l.name.clone(),
            });
        active.inc();
        let result = if l.tls == ListenerTls::Implicit {
            match cfg.tls.as_ref() {
                None => Err(io::Error::other(
                    "implicit TLS listener without a certificate",
                )),
                Some(tls) => match driver::handshake(
                    tls.server_config.clone(),
                    tcp,
                    cfg.limits.command_timeout,
                )
                .await
                {
                    Ok(stream) => {
                        let info = driver::tls_info(&stream);
                        self.metrics
                            .tls
                            .get_or_create(&TlsLabels {
                                direction: "inbound",
                                version: info.version.clone(),
                            })
                            .inc();
                        let session = Session::new(cfg.clone(), l.clone(), peer, Some(info))
                            .with_runtime_blacklist(self.blacklist.handle());
                        driver::run(
                            &self.services,
                            &id,
                            &l.name,
                            Conn::Tls(Box::new(stream)),
                            session,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                },
            }
        } else {
            let session = Session::new(cfg.clone(), l.clone(), peer, None)
                .with_runtime_blacklist(self.blacklist.handle());
            driver::run(&self.services, &id, &l.name, Conn::Plain(tcp), session).await
        };
        active.dec();
        let outcome = match &result {
            Ok(end) => end.label(),
            Err(_) => "error",
        };
        self.metrics
            .sessions
            .get_or_create(&ListenerOutcome {
                listener: l.name.clone(),
                outcome,
            })
            .inc();
    }

    /// Reloads the config file: builds and validates the complete new
    /// snapshot, probes SMTP servers that are new or changed (when `probe`
    /// and the new config's `reload.probe` allow), binds new listener
    /// addresses, then swaps atomically. On any error the old config stays
    /// and the error is returned (and logged and counted by the caller).
    pub async fn reload(self: &Arc<Self>, probe: bool) -> Result<Arc<Config>, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.config();
        let Some(path) = old.files.first().cloned() else {
            return Err(ReloadError::NoFile);
        };
        let mut new = tokio::task::spawn_blocking(move || crate::config::load_file(&path))
            .await
            .map_err(|e| ReloadError::Bind(io::Error::other(e)))?
            .map_err(ReloadError::Config)?;
        let bad = self
            .services
            .traffic
            .with(|active| crate::config::removal::unsafe_removals(&old, &new, active));
        if !bad.is_empty() {
            return Err(ReloadError::Removes(bad));
        }
        new.unknown_transient_until = if crate::config::removal::removes_an_application(&old, &new)
        {
            Some(Instant::now() + REMOVAL_GRACE)
        } else {
            old.unknown_transient_until
        };
        if probe && new.reload.probe {
            let changed: Vec<(String, crate::config::SmtpServer)> = new
                .servers
                .values()
                .filter_map(|s| match &s.kind {
                    crate::config::ServerKind::Smtp(smtp) => {
                        let same = matches!(old.servers.get(&s.name).map(|o| &o.kind), Some(crate::config::ServerKind::Smtp(o)) if o == smtp);
                        (!same).then(|| (s.name.clone(), smtp.clone()))
                    }
                    crate::config::ServerKind::Capture(_) | crate::config::ServerKind::Graph(_) => {
                        None
                    }
                })
                .collect();
            if !changed.is_empty() {
                tracing::info!(
                    servers = changed.len(),
                    "probing new or changed servers before the reload"
                );
            }
            for (name, r) in
                crate::upstream::probe::probe_all(self.upstreams.clone(), changed, 8).await
            {
                if let Err(f) = r {
                    return Err(ReloadError::Probe {
                        server: name,
                        class: f.class,
                        reason: f.reason,
                    });
                }
            }
        }
        // Bind new addresses before anything changes, so a port in use
        // keeps the old config whole.
        let current: Vec<LoopKey> = self.lock_loops().keys().cloned().collect();
        let mut fresh = Vec::new();
        for l in new
            .listeners
            .iter()
            .filter(|l| !current.iter().any(|k| k.matches(l)))
        {
            fresh.push(
                bind_one(&l.name, l.address)
                    .await
                    .map_err(ReloadError::Bind)?,
            );
        }
        let new = Arc::new(new);
        self.config.store(new.clone());
        self.upstreams.forget_tls_configs();
        self.resize_connections(new.limits.max_connections);
        let stale: Vec<AcceptLoop> = {
            let mut loops = self.lock_loops();
            let gone: Vec<LoopKey> = loops
                .keys()
                .filter(|k| !new.listeners.iter().any(|l| k.matches(l)))
                .cloned()
                .collect();
            gone.iter().filter_map(|a| loops.remove(a)).collect()
        };
        for l in stale {
            l.stop.send_replace(true);
        }
        for b in fresh {
            self.start_loop(b);
        }
        self.metrics.prime(&new, crate::util::unix_now());
        // The remaining-budget gauges under the new limits (counts kept).
        let _ = self.engine.limiter.rows(&new, crate::util::unix_now());
        self.health.prime(
            new.servers.keys().map(String::as_str),
            std::time::Instant::now(),
        );
        announce(&new);
        Ok(new)
    }

    fn resize_connections(&self, max: usize) {
        let target = max.min(Semaphore::MAX_PERMITS) as u32;
        let debt = self.conn_debt.load(Ordering::SeqCst);
        // The limit in effect once every debt is paid.
        let effective = self.max_conns.load(Ordering::SeqCst) - debt;
        if target >= effective {
            let mut more = target - effective;
            let cancel = more.min(debt);
            self.conn_debt.fetch_sub(cancel, Ordering::SeqCst);
            more -= cancel;
            self.conns.add_permits(more as usize);
            self.max_conns.fetch_add(more, Ordering::SeqCst);
        } else {
            // Free permits go now; those of sessions in progress go when
            // their sessions end (release_connection).
            let fewer = effective - target;
            let gone = self.conns.forget_permits(fewer as usize) as u32;
            self.max_conns.fetch_sub(gone, Ordering::SeqCst);
            self.conn_debt.fetch_add(fewer - gone, Ordering::SeqCst);
        }
    }

    /// Gives a session's permit back, or forgets it while a lowered
    /// max_connections is still being paid off.
    fn release_connection(&self, permit: tokio::sync::OwnedSemaphorePermit) {
        let paid = self
            .conn_debt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
            .is_ok();
        if paid {
            permit.forget();
            self.max_conns.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Reloads and logs and counts the result.
    pub async fn reload_and_report(self: &Arc<Self>, probe: bool, why: &str) -> bool {
        self.reload_reporting(probe, why).await.is_ok()
    }

    /// [`Relay::reload_and_report`] returning the new config's hash or why
    /// the reload was refused.
    pub async fn reload_reporting(
        self: &Arc<Self>,
        probe: bool,
        why: &str,
    ) -> Result<String, String> {
        let result = self.reload(probe).await;
        let ok = result.is_ok();
        let out = match &result {
            Ok(cfg) => Ok(cfg.hash.clone()),
            Err(ReloadError::Config(errs)) => Err(errs
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")),
            Err(e) => Err(e.to_string()),
        };
        self.metrics
            .reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        match result {
            Ok(cfg) => tracing::info!(trigger = why, hash = %cfg.hash, "config reloaded"),
            Err(ReloadError::Config(errs)) => {
                for e in &errs.0 {
                    tracing::error!(trigger = why, "config reload refused: {e}");
                }
                tracing::error!(
                    trigger = why,
                    errors = errs.0.len(),
                    "config reload refused; keeping the old config"
                );
            }
            Err(e) => {
                tracing::error!(trigger = why, error = %e, "config reload refused; keeping the old config")
            }
        }
        out
    }

    /// Closes expired idle upstream connections every few seconds until
    /// shutdown.
    pub async fn sweep_pools(self: Arc<Self>) {
        let mut shutdown = self.shutdown_signal();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => self.upstreams.sweep(&self.config()),
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Watches the config files (content hash) and reloads when they
    /// change and then stay the same for one more interval (an editor or
    /// a deployment tool may still be writing); a failed reload is not
    /// retried until the files change again.
    pub async fn watch(self: Arc<Self>, probe: bool) {
        let mut shutdown = self.shutdown_signal();
        let mut failed: Option<String> = None;
        let mut pending: Option<String> = None;
        loop {
            let cfg = self.config();
            let interval = cfg.reload.interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let cfg = self.config();
            if !cfg.reload.watch {
                continue;
            }
            let Some(path) = cfg.files.first().cloned() else {
                return;
            };
            // The config files and every file they refer to (certificates,
            // CA and secret files).
            let referenced = cfg.referenced.clone();
            let hash =
                tokio::task::spawn_blocking(move || crate::config::watch_hash(&path, &referenced))
                    .await;
            // A file that could not be read now (out of file descriptors,
            // an I/O error) is not a change: look again next interval.
            let Ok(Some(hash)) = hash else {
                tracing::debug!("config files unreadable just now; not a change");
                continue;
            };
            let current = format!("{}/{}", cfg.hash, cfg.referenced_hash);
            if hash == current || failed.as_deref() == Some(hash.as_str()) {
                pending = None;
                continue;
            }
            if pending.as_deref() != Some(hash.as_str()) {
                pending = Some(hash);
                continue;
            }
            pending = None;
            if self.reload_and_report(probe, "file change").await {
                failed = None;
            } else {
                failed = Some(hash);
            }
        }
    }
}

/// Answers a connection that will not be served with `r` and closes it.
async fn refuse(mut tcp: TcpStream, r: reply::Reply) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tcp.write_all(r.to_wire().as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// Options of `smarthost run` that are not in the config.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Probe new or changed servers before a reload goes live.
    pub probe_on_reload: bool,
}

/// Binds, serves, and runs until SIGTERM or SIGINT: SIGHUP (and a change
/// of the config files) reloads; shutdown is graceful (stop accepting, let
/// transactions finish within `limits.shutdown_grace`, exit). A second
/// SIGTERM/SIGINT exits at once.
pub async fn run_until_signal(cfg: Config, opts: RunOptions) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    announce(&cfg);
    let grace = cfg.limits.shutdown_grace;
    let bound = bind(&cfg).await?;
    let admin = match &cfg.admin {
        Some(a) => Some(crate::admin::bind(a.address).await?),
        None => None,
    };
    tracing::info!(config = %cfg.source, hash = %cfg.hash, "smarthost started");
    let relay = tokio::task::spawn_blocking(move || Relay::open(cfg))
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
    relay
        .probe_on_reload
        .store(opts.probe_on_reload, Ordering::SeqCst);
    relay.open_queue().await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let serving = {
        let relay = relay.clone();
        tokio::spawn(async move { relay.serve(bound, grace).await })
    };
    if let Some(l) = admin {
        tokio::spawn(crate::admin::serve(l, relay.clone()));
    }
    tokio::spawn(relay.clone().watch(opts.probe_on_reload));
    tokio::spawn(relay.clone().sweep_pools());
    crate::notify::ready();
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
            _ = hup.recv() => {
                // In a task of its own: probing servers may take a while,
                // and SIGTERM must not wait for it.
                let relay = relay.clone();
                tokio::spawn(async move {
                    crate::notify::reloading();
                    relay.reload_and_report(opts.probe_on_reload, "SIGHUP").await;
                    crate::notify::ready();
                });
            }
        }
    }
    crate::notify::stopping();
    relay.shutdown();
    tokio::select! {
        _ = serving => {}
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
    }
    relay.engine.limiter.flush().await;
    tracing::info!("smarthost stopped");
    Ok(())
}
