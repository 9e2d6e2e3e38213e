//! `smarthost explain`: a dry run of policy and rewrite for one message,
//! as text or JSON. Pure apart from its caller printing the report; it runs
//! the same `policy` and `rewrite` code a real submission does.

use crate::config::values::EmailAddress;
use crate::config::{Config, ListenerTls};
use crate::policy::{self, IdentifiedBy, RcptVerdict, RecipientPlan, Refusal};
use crate::rewrite;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

/// Who sends.
#[derive(Debug, Clone)]
pub enum Who {
    /// An application by name.
    App(String),
    /// An SMTP AUTH user.
    AuthUser(String),
    /// A client address, optionally on a named listener.
    ClientIp {
        /// The address.
        ip: IpAddr,
        /// Listener name or address.
        listener: Option<String>,
    },
}

/// What to explain.
#[derive(Debug, Clone)]
pub struct Request {
    /// Who sends.
    pub who: Who,
    /// Envelope sender and From of the sample message.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Subject of the sample message.
    pub subject: String,
}

/// Why explain could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// No application by that name.
    #[error("no application named {0:?}")]
    NoSuchApp(String),
    /// No application with that AUTH user.
    #[error("no application authenticates as {0:?}")]
    NoSuchUser(String),
    /// No listener by that name or address.
    #[error("no listener named {0:?}")]
    NoSuchListener(String),
    /// An address argument is not an address.
    #[error("{0}")]
    BadAddress(String),
}

/// One hop of the chain with the rewrite it gets.
#[derive(Debug, Serialize)]
pub struct Hop {
    /// Server name.
    pub server: String,
    /// `smtp` or `capture`.
    pub kind: &'static str,
    /// Owner tenant (`null`: system server).
    pub owner: Option<String>,
    /// Send limit, if any.
    pub limit: Option<String>,
    /// The limit's current budget (`2 of 3 left ...`), or why it is
    /// unknown; `null` without a limit. Filled by the CLI from the
    /// persisted counters or the running daemon ([`Report::set_budgets`]).
    pub budget: Option<String>,
    /// MAIL FROM on this hop.
    pub envelope_from: String,
    /// Sender, display name and Reply-To on this hop, each with its source.
    pub identity: policy::Identity,
    /// The DKIM key that signs this hop (`d=DOMAIN s=SELECTOR`), if any.
    pub dkim: Option<String>,
    /// The rewritten header section of the sample message on this hop.
    pub headers: Vec<String>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Application name (`null` when nobody was identified).
    pub application: Option<String>,
    /// How it was identified.
    pub identified_by: Option<IdentifiedBy>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Tenant and parents, nearest first.
    pub tenant_chain: Vec<String>,
    /// Why the message would be refused at MAIL FROM, if it would.
    pub refused: Option<Refusal>,
    /// The reply the relay gives then, e.g. `530 5.7.0 Authentication
    /// required` (for a client that uses TLS where the listener offers it).
    pub refused_reply: Option<String>,
    /// The listener the client was assumed to connect to (`--client-ip`).
    pub listener: Option<String>,
    /// When a client that does not use STARTTLS would get another reply
    /// (AUTH is only offered after STARTTLS there).
    pub refused_reply_without_tls: Option<String>,
    /// Effective sender on the first hop (a server's fixed sender wins).
    pub effective_sender: Option<String>,
    /// Sender from application/tenant/system, before any server's fixed sender.
    pub policy_sender: Option<String>,
    /// From display name.
    pub display_name: Option<String>,
    /// Reply-To: configured, or the original From when the address is replaced.
    pub reply_to: Option<String>,
    /// Where the first hop's sender, display name and Reply-To come from
    /// (`server`, `route`, `application`, `tenant` or `system`).
    pub sources: Sources,
    /// Test mode, if active.
    pub test_mode: Option<TestModeReport>,
    /// Every recipient and what happens to it.
    pub recipients: Vec<RecipientPlan>,
    /// The envelope recipients after blacklist and test mode.
    pub deliver_to: Vec<String>,
    /// Servers in the order they are tried, each with its rewrite.
    pub server_chain: Vec<Hop>,
}

/// Sources of the first hop's identity values (`null`: the message's own).
#[derive(Debug, Default, Serialize)]
pub struct Sources {
    /// Of the sender.
    pub sender: Option<policy::Source>,
    /// Of the display name.
    pub display_name: Option<policy::Source>,
    /// Of the Reply-To (`null` also when the original From becomes the Reply-To).
    pub reply_to: Option<policy::Source>,
}

/// Test mode in a report.
#[derive(Debug, Serialize)]
pub struct TestModeReport {
    /// Where mail goes.
    pub redirect_to: String,
    /// Subject prefix.
    pub subject_prefix: Option<String>,
    /// Allowed recipients.
    pub allow: Vec<String>,
}

fn find_listener<'c>(cfg: &'c Config, name: &str) -> Option<&'c crate::config::Listener> {
    cfg.listeners
        .iter()
        .find(|l| l.name == name || l.address.to_string() == name)
}

/// Runs policy and rewrite for `req` against `cfg`.
pub fn explain(cfg: &Arc<Config>, req: &Request) -> Result<Report, ExplainError> {
    if !req.from.is_empty() {
        req.from
            .parse::<EmailAddress>()
            .map_err(ExplainError::BadAddress)?;
    }
    for t in &req.to {
        t.parse::<EmailAddress>()
            .map_err(ExplainError::BadAddress)?;
    }
    let (app, by, listener) = match &req.who {
        Who::App(n) => (
            cfg.applications
                .get(n)
                .ok_or_else(|| ExplainError::NoSuchApp(n.clone()))?,
            None,
            None,
        ),
        Who::AuthUser(u) => (
            cfg.application_by_auth_user(u)
                .ok_or_else(|| ExplainError::NoSuchUser(u.clone()))?,
            Some(IdentifiedBy::AuthUser),
            None,
        ),
        Who::ClientIp { ip, listener } => {
            // The listener the client connects to: named, or the first one.
            let l = match listener {
                Some(n) => {
                    find_listener(cfg, n).ok_or_else(|| ExplainError::NoSuchListener(n.clone()))?
                }
                None => cfg
                    .listeners
                    .first()
                    .ok_or_else(|| ExplainError::NoSuchListener("(none configured)".into()))?,
            };
            // The same decision the session makes at MAIL FROM, for a
            // client that uses TLS where the listener offers it.
            let tls = l.tls == ListenerTls::Implicit
                || (l.tls == ListenerTls::Starttls && cfg.tls.is_some());
            match policy::identify_client(cfg, l, None, *ip, tls) {
                Ok((a, by)) => (a, Some(by), Some(l.name.clone())),
                Err(r) => {
                    let plain = (tls && l.tls != ListenerTls::Implicit)
                        .then(|| policy::identify_client(cfg, l, None, *ip, false).err())
                        .flatten()
                        .filter(|p| *p != r)
                        .map(|p| reply_text(&p));
                    return Ok(Report {
                        refused_reply: Some(reply_text(&r)),
                        refused: Some(r),
                        refused_reply_without_tls: plain,
                        listener: Some(l.name.clone()),
                        ..Report::unidentified()
                    });
                }
            }
        }
    };
    let eff = policy::resolve(cfg, app);
    let refused = policy::check_mail(cfg, &eff).err();
    let refused_reply = refused.as_ref().map(reply_text);
    let recipients: Vec<RecipientPlan> = req
        .to
        .iter()
        .map(|t| RecipientPlan {
            original: t.clone(),
            verdict: policy::check_rcpt(cfg, &eff, t),
        })
        .collect();
    let accepted: Vec<RecipientPlan> = recipients
        .iter()
        .filter(|r| !matches!(r.verdict, RcptVerdict::Reject { .. }))
        .cloned()
        .collect();
    let test_mode = eff.test_mode.map(|t| TestModeReport {
        redirect_to: t.redirect_to.to_string(),
        subject_prefix: t.subject_prefix.as_ref().map(|p| p.to_string()),
        allow: t.allow.iter().map(ToString::to_string).collect(),
    });
    let plan = policy::plan(cfg, &eff, &req.from, accepted);
    let sample = format!(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\n\r\n",
        if req.from.is_empty() {
            "<>".to_owned()
        } else {
            req.from.clone()
        },
        req.to.join(", "),
        req.subject
    );
    let mut server_chain = Vec::new();
    let mut first: Option<(Option<String>, Option<String>, policy::Identity)> = None;
    for s in plan.chain() {
        let spec = plan.rewrite_spec(s);
        let identity = plan.identity(s);
        let out = rewrite::rewrite(sample.as_bytes(), &spec);
        if first.is_none() {
            let reply_to = spec.reply_to.clone().or_else(|| {
                (out.from_replaced && !out.original_from.is_empty())
                    .then(|| out.original_from.join(", "))
            });
            let sender = rewrite::envelope_sender(&req.from, &spec);
            let sender = (!sender.is_empty())
                .then_some(sender)
                .or(spec.sender.clone());
            first = Some((sender, reply_to, identity.clone()));
        }
        let headers = String::from_utf8_lossy(&out.header)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        server_chain.push(Hop {
            server: s.name.clone(),
            kind: match s.kind {
                crate::config::ServerKind::Smtp(_) => "smtp",
                crate::config::ServerKind::Capture(_) => "capture",
                crate::config::ServerKind::Graph(_) => "graph",
            },
            owner: s.tenant.clone(),
            limit: s.limit.map(|l| l.to_string()),
            budget: None,
            envelope_from: rewrite::envelope_sender(&req.from, &spec),
            identity,
            dkim: crate::dkim::from_domain(&out.header)
                .and_then(|d| crate::dkim::choose(&cfg.dkim, &plan.tenant_chain, &d))
                .map(|k| format!("d={} s={}", k.domain, k.selector)),
            headers,
        });
    }
    let (effective_sender, reply_to, identity) = first.unwrap_or_default();
    let sources = Sources {
        sender: identity.sender.map(|s| s.source),
        display_name: identity.display_name.as_ref().map(|d| d.source.clone()),
        reply_to: identity.reply_to.map(|r| r.source),
    };
    Ok(Report {
        application: Some(app.name.clone()),
        identified_by: by,
        tenant: Some(eff.tenant.name.clone()),
        tenant_chain: plan.tenant_chain.clone(),
        refused,
        refused_reply,
        listener,
        refused_reply_without_tls: None,
        effective_sender,
        policy_sender: eff.sender.map(ToString::to_string),
        display_name: identity
            .display_name
            .map(|d| d.value)
            .or_else(|| eff.display_name.map(str::to_owned)),
        reply_to,
        sources,
        test_mode,
        deliver_to: plan.deliver_to.clone(),
        recipients,
        server_chain,
    })
}

/// The reply line the relay sends for `r`, without CRLF.
fn reply_text(r: &Refusal) -> String {
    crate::session::reply::refusal(r)
        .to_wire()
        .trim_end()
        .to_owned()
}

impl Report {
    /// Fills each limited hop's budget from `rows` (the counters), or
    /// with `unknown` when they could not be read.
    pub fn set_budgets(&mut self, rows: Result<&[crate::admin::types::LimitRow], &str>) {
        for h in self.server_chain.iter_mut().filter(|h| h.limit.is_some()) {
            h.budget = Some(match rows {
                Ok(rows) => match rows.iter().find(|r| r.server == h.server) {
                    Some(r) if r.used == 0 => format!("{} of {} left", r.remaining, r.remaining),
                    Some(r) => format!(
                        "{} of {} {} left, the oldest use leaves the window in {} s",
                        r.remaining,
                        r.used + r.remaining,
                        r.counts,
                        r.resets_in_secs
                    ),
                    None => "unknown".to_owned(),
                },
                Err(why) => format!("unknown ({why})"),
            });
        }
    }

    fn unidentified() -> Report {
        Report {
            application: None,
            identified_by: None,
            tenant: None,
            tenant_chain: Vec::new(),
            refused: None,
            refused_reply: None,
            listener: None,
            refused_reply_without_tls: None,
            effective_sender: None,
            policy_sender: None,
            display_name: None,
            reply_to: None,
            sources: Sources::default(),
            test_mode: None,
            recipients: Vec::new(),
            deliver_to: Vec::new(),
            server_chain: Vec::new(),
        }
    }

    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let none = || "-".to_owned();
        let on = self
            .listener
            .as_deref()
            .map_or(String::new(), |l| format!(" on listener {l}"));
        let Some(app) = &self.application else {
            let _ = writeln!(
                o,
                "not identified{on}: the relay answers MAIL FROM with {}",
                self.refused_reply.as_deref().unwrap_or("a refusal")
            );
            if let Some(p) = &self.refused_reply_without_tls {
                let _ = writeln!(o, "  (a client that does not use STARTTLS: {p})");
            }
            return o;
        };
        let by = self
            .identified_by
            .map_or("name (--app)", IdentifiedBy::describe);
        let _ = writeln!(o, "application:    {app} (identified by {by}{on})");
        let _ = writeln!(o, "tenant:         {}", self.tenant_chain.join(" -> "));
        if let Some(r) = &self.refused_reply {
            let _ = writeln!(o, "REFUSED:        {r}");
        }
        let from = |s: &Option<policy::Source>| {
            s.as_ref()
                .map_or_else(String::new, |s| format!(" (from {s})"))
        };
        let _ = writeln!(
            o,
            "sender:         {}{}",
            self.effective_sender.clone().unwrap_or_else(none),
            from(&self.sources.sender)
        );
        let _ = writeln!(
            o,
            "display name:   {}{}",
            self.display_name.clone().unwrap_or_else(none),
            from(&self.sources.display_name)
        );
        let _ = writeln!(
            o,
            "reply-to:       {}{}",
            self.reply_to.clone().unwrap_or_else(none),
            from(&self.sources.reply_to)
        );
        if let Some(t) = &self.test_mode {
            let _ = writeln!(
                o,
                "test mode:      on, to {} (prefix {:?}, allow [{}])",
                t.redirect_to,
                t.subject_prefix.clone().unwrap_or_default(),
                t.allow.join(", ")
            );
        }
        let _ = writeln!(o, "recipients:");
        for r in &self.recipients {
            let what = match &r.verdict {
                RcptVerdict::Deliver => "deliver".to_owned(),
                RcptVerdict::Redirect { to } => format!("redirect to {to} (test mode)"),
                RcptVerdict::Drop { list, entry } => {
                    format!("drop ({entry} on the {list} blacklist)")
                }
                RcptVerdict::Reject { list, entry } => {
                    format!("reject 550 5.7.1 ({entry} on the {list} blacklist)")
                }
            };
            let _ = writeln!(o, "  {:<30} {what}", r.original);
        }
        let _ = writeln!(o, "deliver to:     {}", self.deliver_to.join(", "));
        let _ = writeln!(o, "server chain:");
        for (i, h) in self.server_chain.iter().enumerate() {
            let _ = writeln!(
                o,
                "  {}. {} ({}, {}{}) MAIL FROM:<{}>",
                i + 1,
                h.server,
                h.kind,
                h.owner
                    .as_deref()
                    .map_or("system".to_owned(), |t| format!("tenant {t}")),
                h.limit.as_deref().map_or(String::new(), |l| format!(
                    ", limit {l}{}",
                    h.budget
                        .as_deref()
                        .map_or(String::new(), |b| format!(", budget: {b}"))
                )),
                h.envelope_from
            );
            if let Some(d) = &h.dkim {
                let _ = writeln!(o, "       (DKIM-signed with {d})");
            }
            for line in &h.headers {
                let _ = writeln!(o, "       {line}");
            }
        }
        o
    }
}
