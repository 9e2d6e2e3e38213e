//! The running relay: bound listeners, the accept loops with the
//! connection limit, the shared state sessions use, and shutdown.
//!
//! `serve` takes listeners that are already bound, so tests bind port 0
//! and read the real port before the relay starts.

use crate::config::{Config, ListenerTls};
use crate::session::driver::{self, Conn};
use crate::session::reply;
use crate::session::state::Session;
use crate::session::throttle::AuthThrottle;
use crate::util::IdGen;
use arc_swap::ArcSwap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// A bound listener socket and the name of its `[[listener]]`.
#[derive(Debug)]
pub struct Bound {
    /// The listener's name in the config.
    pub name: String,
    /// The socket.
    pub socket: TcpListener,
}

impl Bound {
    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Binds every listener of `cfg`.
pub async fn bind(cfg: &Config) -> io::Result<Vec<Bound>> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let socket = TcpListener::bind(l.address).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind listener {} to {}: {e}", l.name, l.address),
            )
        })?;
        out.push(Bound {
            name: l.name.clone(),
            socket,
        });
    }
    Ok(out)
}

/// State shared by every session of a running relay.
pub struct Relay {
    config: ArcSwap<Config>,
    /// AUTH failure throttle per client address.
    pub throttle: AuthThrottle,
    conns: Arc<Semaphore>,
    max_conns: u32,
    ids: IdGen,
    shutdown: watch::Sender<bool>,
    /// SMTP upstream connection pools.
    pub upstreams: Arc<crate::upstream::Upstreams>,
}

impl Relay {
    /// A relay on `cfg`.
    pub fn new(cfg: Config) -> Arc<Relay> {
        let max = cfg.limits.max_connections.min(Semaphore::MAX_PERMITS) as u32;
        Arc::new(Relay {
            config: ArcSwap::from_pointee(cfg),
            throttle: AuthThrottle::default(),
            conns: Arc::new(Semaphore::new(max as usize)),
            max_conns: max,
            ids: IdGen::default(),
            shutdown: watch::channel(false).0,
            upstreams: Arc::new(crate::upstream::Upstreams::default()),
        })
    }

    /// The current config snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// A new message id.
    pub fn next_id(&self) -> String {
        self.ids.next()
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
        (self.max_conns as usize).saturating_sub(self.conns.available_permits())
    }

    /// Accepts on every bound listener until shutdown, then waits up to
    /// `grace` for sessions in progress to finish.
    pub async fn serve(self: &Arc<Self>, bound: Vec<Bound>, grace: Duration) {
        let mut loops = tokio::task::JoinSet::new();
        for b in bound {
            let relay = self.clone();
            loops.spawn(async move { relay.accept_loop(b).await });
        }
        while loops.join_next().await.is_some() {}
        // Every session holds a permit; all permits back means all done.
        match tokio::time::timeout(grace, self.conns.acquire_many(self.max_conns)).await {
            Ok(_) => tracing::info!("all sessions finished"),
            Err(_) => tracing::warn!(
                sessions = self.active_sessions(),
                "grace period over; closing remaining sessions"
            ),
        }
    }

    async fn accept_loop(self: Arc<Self>, b: Bound) {
        let mut shutdown = self.shutdown_signal();
        let addr = b.local_addr().ok();
        tracing::info!(listener = %b.name, address = ?addr, "listening");
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                r = b.socket.accept() => match r {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        match self.conns.clone().try_acquire_owned() {
                            Ok(permit) => {
                                let relay = self.clone();
                                let name = b.name.clone();
                                tokio::spawn(async move {
                                    relay.session(name, tcp, peer).await;
                                    drop(permit);
                                });
                            }
                            Err(_) => {
                                tracing::warn!(listener = %b.name, %peer, "connection refused: max_connections reached");
                                tokio::spawn(refuse(tcp));
                            }
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::error!(listener = %b.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracing::info!(listener = %b.name, "stopped accepting");
    }

    async fn session(self: Arc<Self>, listener: String, tcp: TcpStream, peer: SocketAddr) {
        // The session pins this snapshot for its whole life.
        let cfg = self.config();
        let Some(l) = cfg.listeners.iter().find(|l| l.name == listener).cloned() else {
            return;
        };
        let started = std::time::Instant::now();
        let result = if l.tls == ListenerTls::Implicit {
            let Some(tls) = cfg.tls.as_ref() else { return };
            match driver::handshake(tls.server_config.clone(), tcp, cfg.limits.command_timeout)
                .await
            {
                Ok(stream) => {
                    let info = driver::tls_info(&stream);
                    let session = Session::new(cfg.clone(), l.clone(), peer, Some(info));
                    driver::run(&self, Conn::Tls(Box::new(stream)), session).await
                }
                Err(e) => Err(e),
            }
        } else {
            let session = Session::new(cfg.clone(), l.clone(), peer, None);
            driver::run(&self, Conn::Plain(tcp), session).await
        };
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => tracing::debug!(listener = %l.name, %peer, duration_ms = ms, "session ended"),
            Err(e) => {
                tracing::info!(listener = %l.name, %peer, duration_ms = ms, error = %e, "session ended with an error")
            }
        }
    }
}

async fn refuse(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tcp.write_all(reply::too_many_connections().to_wire().as_bytes())
            .await?;
        tcp.shutdown().await
    })
    .await;
}

/// Binds, serves, and on SIGTERM or SIGINT shuts down gracefully: stop
/// accepting, let transactions finish within `limits.shutdown_grace`, exit.
/// A second signal exits at once.
pub async fn run_until_signal(cfg: Config) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    for t in cfg.tenants.values() {
        if let Some(crate::config::TestModeSetting::On(tm)) = &t.test_mode {
            tracing::warn!(tenant = %t.name, redirect_to = %tm.redirect_to, "tenant is in test mode");
        }
    }
    for a in cfg.applications.values() {
        if let Some(crate::config::TestModeSetting::On(tm)) = &a.test_mode {
            tracing::warn!(application = %a.name, redirect_to = %tm.redirect_to, "application is in test mode");
        }
    }
    let grace = cfg.limits.shutdown_grace;
    let bound = bind(&cfg).await?;
    tracing::info!(config = %cfg.source, hash = %cfg.hash, "smarthost started");
    let relay = Relay::new(cfg);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let serving = {
        let relay = relay.clone();
        tokio::spawn(async move { relay.serve(bound, grace).await })
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    relay.shutdown();
    tokio::select! {
        _ = serving => {}
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
    }
    tracing::info!("smarthost stopped");
    Ok(())
}
