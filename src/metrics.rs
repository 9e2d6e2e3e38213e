//! Prometheus metrics: every metric defined once, here, with its help
//! text. Label values come only from config names and fixed enums, never
//! from addresses or free text, so cardinality is bounded by the config.
//!
//! [`Metrics::prime`] creates every series the config makes possible at
//! zero, so a scrape shows them before the first event. [`Metrics::encode`]
//! writes the classic Prometheus text format (0.0.4), which `promtool
//! check metrics` and every Prometheus version read.

use crate::config::{Config, ServerKind, TestModeSetting};
use crate::policy;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// `{listener, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerOutcome {
    /// Listener name.
    pub listener: String,
    /// Fixed outcome word.
    pub outcome: &'static str,
}

/// `{listener}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// Listener name.
    pub listener: String,
}

/// `{tenant, application}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// Tenant name.
    pub tenant: String,
    /// Application name.
    pub application: String,
}

/// `{tenant, application, server, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// Tenant name.
    pub tenant: String,
    /// Application name.
    pub application: String,
    /// Server name, or `none`.
    pub server: String,
    /// `delivered`, `refused`, `deferred`, `dropped`, `no_server`.
    pub outcome: &'static str,
}

/// `{tenant, application, list}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListLabels {
    /// Tenant name.
    pub tenant: String,
    /// Application name.
    pub application: String,
    /// `system` or the tenant that owns the list.
    pub list: String,
}

/// `{from_server, to_server, class}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    /// The server that failed.
    pub from_server: String,
    /// The next server tried, or `none`.
    pub to_server: String,
    /// Failure class.
    pub class: &'static str,
}

/// `{class}`: a failure class (`crate::outcome::FailureClass`) or `no_server`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// The class.
    pub class: &'static str,
}

/// `{server}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// Server name.
    pub server: String,
}

/// `{direction, version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// e.g. `TLSv1.3`.
    pub version: String,
}

/// `{result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// `{hash}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HashLabel {
    /// SHA-256 of the config files.
    pub hash: String,
}

/// `{version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: &'static str,
}

/// Session outcomes.
pub const SESSION_OUTCOMES: &[&str] = &[
    "quit",
    "closed",
    "timeout",
    "shutdown",
    "locked_out",
    "refused",
    "error",
];
/// Delivery outcomes.
pub const MESSAGE_OUTCOMES: &[&str] = &["delivered", "refused", "deferred", "dropped", "no_server"];
/// Failover classes.
pub const FAILOVER_CLASSES: &[&str] = &[
    "connection",
    "temporary",
    "tls",
    "auth",
    "capability",
    "local",
];

/// Latency buckets for upstream deliveries, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Connections accepted or refused (max_connections) per listener.
    pub connections: Family<ListenerOutcome, Counter>,
    /// Sessions ended, per listener and how they ended.
    pub sessions: Family<ListenerOutcome, Counter>,
    /// Sessions in progress per listener.
    pub sessions_active: Family<ListenerLabel, Gauge>,
    /// Messages received (end of DATA) per tenant and application.
    pub messages_received: Family<AppLabels, Counter>,
    /// Messages by delivery outcome.
    pub messages: Family<MessageLabels, Counter>,
    /// Recipients dropped by a blacklist.
    pub recipients_dropped: Family<ListLabels, Counter>,
    /// Recipients rejected by a blacklist (550 at RCPT).
    pub recipients_rejected: Family<ListLabels, Counter>,
    /// Recipients redirected by test mode.
    pub test_mode_redirects: Family<AppLabels, Counter>,
    /// 1 for every application whose mail is in test mode.
    pub test_mode: Family<AppLabels, Gauge>,
    /// Failovers from one server to the next.
    pub failovers: Family<FailoverLabels, Counter>,
    /// Time to deliver a message to an upstream (successful hops).
    pub upstream_latency: Family<ServerLabel, Histogram, fn() -> Histogram>,
    /// Upstream connections opened.
    pub upstream_opened: Family<ServerLabel, Counter>,
    /// Pooled upstream connections reused.
    pub upstream_reused: Family<ServerLabel, Counter>,
    /// TLS sessions by direction and negotiated version.
    pub tls: Family<TlsLabels, Counter>,
    /// Failed AUTH attempts per listener.
    pub auth_failures: Family<ListenerLabel, Counter>,
    /// AUTH lockouts per listener.
    pub auth_lockouts: Family<ListenerLabel, Counter>,
    /// Config reloads by result.
    pub reloads: Family<ResultLabel, Counter>,
    /// 1 for the hash of the config in use.
    pub config_info: Family<HashLabel, Gauge>,
    /// When the config in use was loaded (seconds since the epoch).
    pub config_loaded: Gauge,
    /// 1, with the version.
    pub build_info: Family<BuildLabels, Gauge>,
    /// Messages in the queue.
    pub queue_depth: Gauge,
    /// Age of the oldest queued message, in seconds.
    pub queue_oldest_age: Gauge,
    /// Delivery attempts made from the queue.
    pub queue_attempts: Counter,
    /// Queue attempts deferred, by the failure class of each server tried.
    pub queue_deferrals: Family<ClassLabel, Counter>,
    /// Send-limit budget left per server (updated as it is used).
    pub limit_remaining: Family<ServerLabel, Gauge>,
    /// Deliveries that found a server over its send limit.
    pub limit_hits: Family<ServerLabel, Counter>,
    /// Hops that had to wait for a connection slot (`max_connections`).
    pub connection_slot_waits: Family<ServerLabel, Counter>,
    /// Send-limit reservations and connection slots taken without Redis
    /// (`[cluster]`), because it could not be reached: counted locally or
    /// refused (`on_redis_error`).
    pub limit_redis_unavailable: Counter,
    /// 1 when a server is up, 0 while it is marked down or half open
    /// (set by [`crate::health::Health`]).
    pub server_up: Family<ServerLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("smarthost");
        let m = Metrics {
            connections: Family::default(),
            sessions: Family::default(),
            sessions_active: Family::default(),
            messages_received: Family::default(),
            messages: Family::default(),
            recipients_dropped: Family::default(),
            recipients_rejected: Family::default(),
            test_mode_redirects: Family::default(),
            test_mode: Family::default(),
            failovers: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            upstream_opened: Family::default(),
            upstream_reused: Family::default(),
            tls: Family::default(),
            auth_failures: Family::default(),
            auth_lockouts: Family::default(),
            reloads: Family::default(),
            config_info: Family::default(),
            config_loaded: Gauge::default(),
            build_info: Family::default(),
            queue_depth: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            queue_attempts: Counter::default(),
            queue_deferrals: Family::default(),
            limit_remaining: Family::default(),
            limit_hits: Family::default(),
            connection_slot_waits: Family::default(),
            limit_redis_unavailable: Counter::default(),
            server_up: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "limit_redis_unavailable",
            "Send-limit reservations and connection slots taken without Redis because it could not be reached (on_redis_error applied)",
            m.limit_redis_unavailable.clone(),
        );
        r.register(
            "limit_remaining",
            "Send-limit budget left per server in its sliding window",
            m.limit_remaining.clone(),
        );
        r.register(
            "limit_hits",
            "Deliveries that found a server over its send limit and skipped it",
            m.limit_hits.clone(),
        );
        r.register(
            "connection_slot_waits",
            "Upstream hops that waited for a connection slot (max_connections)",
            m.connection_slot_waits.clone(),
        );
        r.register(
            "queue_depth",
            "Messages in the queue",
            m.queue_depth.clone(),
        );
        r.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued message in seconds",
            m.queue_oldest_age.clone(),
        );
        r.register(
            "queue_attempts",
            "Delivery attempts made from the queue",
            m.queue_attempts.clone(),
        );
        r.register(
            "queue_deferrals",
            "Queue delivery attempts deferred, by failure class of each server tried",
            m.queue_deferrals.clone(),
        );
        r.register(
            "connections",
            "Client connections by listener and outcome (accepted, refused at max_connections, per_client: over max_connections_per_client or the share of clients no application owns, denied: 554 at connect)",
            m.connections.clone(),
        );
        r.register(
            "sessions",
            "SMTP sessions ended, by listener and how they ended",
            m.sessions.clone(),
        );
        r.register(
            "sessions_active",
            "SMTP sessions in progress by listener",
            m.sessions_active.clone(),
        );
        r.register(
            "messages_received",
            "Messages received from clients (end of DATA) by tenant and application",
            m.messages_received.clone(),
        );
        r.register(
            "messages",
            "Messages by tenant, application, server and delivery outcome",
            m.messages.clone(),
        );
        r.register(
            "recipients_dropped",
            "Recipients accepted and not delivered because a blacklist lists them",
            m.recipients_dropped.clone(),
        );
        r.register(
            "recipients_rejected",
            "Recipients refused at RCPT because a blacklist lists them",
            m.recipients_rejected.clone(),
        );
        r.register(
            "test_mode_redirects",
            "Recipients replaced by the test address",
            m.test_mode_redirects.clone(),
        );
        r.register(
            "test_mode",
            "1 when the application's mail is in test mode",
            m.test_mode.clone(),
        );
        r.register(
            "failovers",
            "Deliveries moved from one server to the next, by failure class",
            m.failovers.clone(),
        );
        r.register_with_unit(
            "upstream_delivery",
            "Time to deliver a message to an upstream server",
            Unit::Seconds,
            m.upstream_latency.clone(),
        );
        r.register(
            "upstream_connections_opened",
            "Connections opened to upstream servers",
            m.upstream_opened.clone(),
        );
        r.register(
            "upstream_connections_reused",
            "Pooled upstream connections reused for another message",
            m.upstream_reused.clone(),
        );
        r.register(
            "tls_sessions",
            "TLS sessions by direction and negotiated version",
            m.tls.clone(),
        );
        r.register(
            "auth_failures",
            "Failed AUTH attempts by listener",
            m.auth_failures.clone(),
        );
        r.register(
            "auth_lockouts",
            "Client addresses locked out after repeated AUTH failures, by listener",
            m.auth_lockouts.clone(),
        );
        r.register(
            "server_up",
            "1 when the server is up, 0 while it is marked down or half open",
            m.server_up.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            m.reloads.clone(),
        );
        r.register(
            "config_info",
            "1 for the SHA-256 of the config files in use",
            m.config_info.clone(),
        );
        r.register(
            "config_loaded_timestamp_seconds",
            "When the config in use was loaded",
            m.config_loaded.clone(),
        );
        r.register(
            "build_info",
            "1, labelled with the smarthost version",
            m.build_info.clone(),
        );
        let _ = m
            .build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        for result in ["success", "failure"] {
            let _ = m.reloads.get_or_create(&ResultLabel { result });
        }
        Metrics { registry: r, ..m }
    }

    /// Creates, at zero, every series `cfg` makes possible, and sets the
    /// config gauges. Called at start and after every reload.
    pub fn prime(&self, cfg: &Config, loaded_at: i64) {
        for l in &cfg.listeners {
            for outcome in ["accepted", "refused", "per_client", "denied"] {
                let _ = self.connections.get_or_create(&ListenerOutcome {
                    listener: l.name.clone(),
                    outcome,
                });
            }
            for &outcome in SESSION_OUTCOMES {
                let _ = self.sessions.get_or_create(&ListenerOutcome {
                    listener: l.name.clone(),
                    outcome,
                });
            }
            let ll = ListenerLabel {
                listener: l.name.clone(),
            };
            let _ = self.sessions_active.get_or_create(&ll);
            let _ = self.auth_failures.get_or_create(&ll);
            let _ = self.auth_lockouts.get_or_create(&ll);
        }
        for s in cfg.servers.values() {
            let sl = ServerLabel {
                server: s.name.clone(),
            };
            if s.limit.is_some() {
                let _ = self.limit_hits.get_or_create(&sl);
            }
            if s.max_connections.is_some() {
                let _ = self.connection_slot_waits.get_or_create(&sl);
            }
        }
        self.test_mode.clear();
        for app in cfg.applications.values() {
            let al = AppLabels {
                tenant: app.tenant.clone(),
                application: app.name.clone(),
            };
            let _ = self.messages_received.get_or_create(&al);
            let _ = self.test_mode_redirects.get_or_create(&al);
            let eff = policy::resolve(cfg, app);
            let in_test_mode =
                matches!(app.test_mode, Some(TestModeSetting::On(_))) || eff.test_mode.is_some();
            let _ = self
                .test_mode
                .get_or_create(&al)
                .set(i64::from(in_test_mode));
            let lists = std::iter::once("system".to_owned())
                .chain(eff.tenant_chain.iter().map(|t| t.name.clone()));
            for list in lists {
                let ll = ListLabels {
                    tenant: app.tenant.clone(),
                    application: app.name.clone(),
                    list,
                };
                let _ = self.recipients_dropped.get_or_create(&ll);
                let _ = self.recipients_rejected.get_or_create(&ll);
            }
            let chain: Vec<String> = cfg
                .servers
                .values()
                .filter(|s| cfg.tenant_may_use(&app.tenant, s))
                .map(|s| s.name.clone())
                .collect();
            for server in &chain {
                for outcome in ["delivered", "refused"] {
                    let _ = self.messages.get_or_create(&MessageLabels {
                        tenant: app.tenant.clone(),
                        application: app.name.clone(),
                        server: server.clone(),
                        outcome,
                    });
                }
            }
            for outcome in ["deferred", "dropped", "no_server"] {
                let _ = self.messages.get_or_create(&MessageLabels {
                    tenant: app.tenant.clone(),
                    application: app.name.clone(),
                    server: "none".into(),
                    outcome,
                });
            }
            // The failovers the application's own chain (without routes) can take.
            let own = policy::server_chain(cfg, &eff, "");
            for (i, from) in own.iter().enumerate() {
                let to = own
                    .get(i + 1)
                    .map_or_else(|| "none".to_owned(), |s| s.name.clone());
                for &class in FAILOVER_CLASSES {
                    let _ = self.failovers.get_or_create(&FailoverLabels {
                        from_server: from.name.clone(),
                        to_server: to.clone(),
                        class,
                    });
                }
            }
        }
        for class in crate::outcome::FailureClass::ALL
            .iter()
            .map(|c| c.as_str())
            .chain(["no_server"])
        {
            let _ = self.queue_deferrals.get_or_create(&ClassLabel { class });
        }
        for s in cfg.servers.values() {
            let sl = ServerLabel {
                server: s.name.clone(),
            };
            let _ = self.upstream_latency.get_or_create(&sl);
            if matches!(s.kind, ServerKind::Smtp(_)) {
                let _ = self.upstream_opened.get_or_create(&sl);
                let _ = self.upstream_reused.get_or_create(&sl);
            }
        }
        for direction in ["inbound", "outbound"] {
            for version in ["TLSv1.2", "TLSv1.3"] {
                let _ = self.tls.get_or_create(&TlsLabels {
                    direction,
                    version: version.into(),
                });
            }
        }
        self.config_info.clear();
        let _ = self
            .config_info
            .get_or_create(&HashLabel {
                hash: cfg.hash.clone(),
            })
            .set(1);
        self.config_loaded.set(loaded_at);
    }

    /// The metrics in the Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut om = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut om, &self.registry);
        to_classic(&om)
    }
}

/// Converts prometheus-client's OpenMetrics text to the classic format:
/// counters get their `_total` name on `# HELP`/`# TYPE` too (OpenMetrics
/// names the family without it), and `# UNIT` and `# EOF` are dropped.
fn to_classic(om: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for l in om.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l.starts_with("# UNIT ") || l == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = l.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format() {
        let m = Metrics::new();
        let _ = m
            .reloads
            .get_or_create(&ResultLabel { result: "success" })
            .inc();
        m.upstream_latency
            .get_or_create(&ServerLabel { server: "a".into() })
            .observe(0.003);
        let text = m.encode();
        assert!(
            text.contains("# HELP smarthost_config_reloads_total Config reloads by result.\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE smarthost_config_reloads_total counter\n"));
        assert!(text.contains("smarthost_config_reloads_total{result=\"success\"} 1\n"));
        assert!(text.contains("smarthost_config_reloads_total{result=\"failure\"} 0\n"));
        assert!(text.contains("# TYPE smarthost_upstream_delivery_seconds histogram\n"));
        assert!(
            text.contains(
                "smarthost_upstream_delivery_seconds_bucket{le=\"0.005\",server=\"a\"} 1\n"
            )
        );
        assert!(text.contains("smarthost_build_info{version="));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }

    #[test]
    fn priming_creates_series_from_config() {
        let cfg = crate::config::load_default().unwrap();
        let m = Metrics::new();
        m.prime(&cfg, 1_700_000_000);
        let text = m.encode();
        for want in [
            "smarthost_connections_total{listener=\"demo\",outcome=\"accepted\"} 0",
            "smarthost_messages_total{tenant=\"demo\",application=\"demo\",server=\"outbox\",outcome=\"delivered\"} 0",
            "smarthost_messages_received_total{tenant=\"demo\",application=\"demo\"} 0",
            "smarthost_test_mode{tenant=\"demo\",application=\"demo\"} 0",
            "smarthost_failovers_total{from_server=\"outbox\",to_server=\"none\",class=\"connection\"} 0",
            "smarthost_config_loaded_timestamp_seconds 1700000000",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.contains(&format!("smarthost_config_info{{hash=\"{}\"}} 1", cfg.hash)));
    }
}
