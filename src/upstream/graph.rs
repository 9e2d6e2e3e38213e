//! The Microsoft Graph upstream (`kind = "graph"`): one hop through
//! `POST {graph_url}/v1.0/users/{mailbox}/sendMail`.
//!
//! * Token: client credentials from `{authority}/{tenant_id}/oauth2/v2.0/token`
//!   with scope `{graph_url}/.default`, cached in [`crate::oauth::Tokens`].
//!   A 401 with a cached token forces one new token and one retry.
//! * Recipients: Graph takes them from the MIME header, not from an
//!   envelope, so the header block sent is fitted to the envelope first
//!   ([`crate::rewrite::envelope_recipients_only`]).
//! * Small messages (up to [`SIMPLE_LIMIT`] bytes of MIME): the MIME as
//!   base64 `text/plain` in one request.
//! * Larger ones, or on 413: a draft built from the parsed message (JSON),
//!   attachments added one by one (up to [`DIRECT_ATTACHMENT_LIMIT`]
//!   directly, larger ones through an upload session in ranged PUTs of
//!   [`UPLOAD_CHUNK`] bytes), then the draft is sent. This path needs
//!   Mail.ReadWrite and cannot carry everything MIME can (README).
//! * Answers: 202 accepted; 429/503 (and other 5xx) temporary, with the
//!   Retry-After in the reason; 401/403 class `auth`, naming the permission
//!   the request needs; 400 for an invalid recipient refuses that recipient
//!   (the others are sent once more without it); other 4xx permanent.
//!
//! [`send`] is self-contained: server settings, the envelope and the final
//! header block in, a [`HopResult`] out.

use super::Upstreams;
use super::classify::sanitize;
use super::https::{HttpError, Https, Request, Response};
use crate::config::GraphServer;
use crate::config::values::normalize_address;
use crate::delivery::{Failover, HopResult, RefusedRecipient};
use crate::message::Message;
use crate::oauth::{AccessToken, OAuthError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hyper::Method;
use hyper::header::{self, HeaderName, HeaderValue};
use mail_parser::MimeHeaders;
use serde_json::{Value, json};
use std::time::Duration;

/// Largest MIME message sent in one `sendMail` request: base64 adds a
/// third, and Graph refuses requests over about 4 MB.
pub const SIMPLE_LIMIT: usize = 3 * 1024 * 1024;

/// Largest attachment added to a draft in one request.
pub const DIRECT_ATTACHMENT_LIMIT: usize = 3 * 1024 * 1024;

/// Upload-session chunk: a multiple of 320 KiB and at most 4 MiB, as
/// Graph requires.
pub const UPLOAD_CHUNK: usize = 12 * 320 * 1024;

/// Bound on one Graph request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The envelope and content of one Graph hop.
pub struct GraphMessage<'a> {
    /// Envelope sender (Graph sends as the mailbox; kept for the log).
    pub mail_from: &'a str,
    /// Exactly who receives the message.
    pub rcpt_to: &'a [String],
    /// The final header block (trace header and rewritten fields, no empty line).
    pub header: &'a [u8],
    /// The received message; its content from `body_offset` follows `header`.
    pub message: &'a Message,
    /// Where the untouched remainder (empty line and body) starts.
    pub body_offset: usize,
}

/// Why a Graph hop failed.
#[derive(Debug)]
enum Fail {
    /// No token.
    OAuth(OAuthError),
    /// No HTTP answer.
    Http(HttpError),
    /// The HTTPS client could not be built (`ca_file`).
    TlsSetup(String),
    /// 429, 5xx: try later or elsewhere.
    Temporary {
        retry_after: Option<u64>,
        text: String,
    },
    /// 401/403 (or 404 for the mailbox): the app or mailbox setup.
    Auth { text: String },
    /// 413: too large for this request.
    TooLarge,
    /// 400 naming invalid recipients (those of the envelope it names).
    InvalidRecipients { named: Vec<String>, text: String },
    /// Any other refusal.
    Permanent { status: u16, text: String },
    /// The message could not be read.
    Local(std::io::Error),
}

/// What a request needs Graph to allow, named in `auth` failures.
#[derive(Clone, Copy)]
enum Needs {
    MailSend,
    MailReadWrite,
    UserRead,
}

impl Needs {
    fn permission(self) -> &'static str {
        match self {
            Needs::MailSend => "Mail.Send",
            Needs::MailReadWrite => "Mail.ReadWrite",
            Needs::UserRead => "User.Read.All",
        }
    }
}

/// One server's connection to Graph for one hop.
struct Graph<'a> {
    up: &'a Upstreams,
    name: &'a str,
    server: &'a GraphServer,
    https: Https,
    token: Option<AccessToken>,
}

/// Sends `msg` through the Graph server `server` (named `name`).
pub async fn send(
    up: &Upstreams,
    name: &str,
    server: &GraphServer,
    msg: &GraphMessage<'_>,
) -> HopResult {
    let mut g = match Graph::new(up, name, server) {
        Ok(g) => g,
        Err(e) => return failover(name, server, e),
    };
    let body = match read_rest(msg.message, msg.body_offset).await {
        Ok(b) => b,
        Err(e) => return failover(name, server, Fail::Local(e)),
    };
    let mut rcpts: Vec<String> = msg.rcpt_to.to_vec();
    let mut refused = Vec::new();
    loop {
        let mut mime = crate::rewrite::envelope_recipients_only(msg.header, &rcpts);
        mime.extend_from_slice(&body);
        let result = if mime.len() > SIMPLE_LIMIT {
            g.send_large(&mime).await
        } else {
            match g.send_simple(&mime).await {
                Err(Fail::TooLarge) => g.send_large(&mime).await,
                r => r,
            }
        };
        match result {
            Ok(()) => {
                tracing::debug!(
                    server = name,
                    from = msg.mail_from,
                    rcpts = rcpts.len(),
                    "Graph accepted the message"
                );
                return HopResult::Accepted {
                    refused,
                    deferred: Vec::new(),
                };
            }
            Err(Fail::InvalidRecipients { named, text })
                if !named.is_empty() && named.len() < rcpts.len() && refused.is_empty() =>
            {
                // Graph refuses the whole request for one bad address:
                // refuse those, send once more to the others.
                rcpts.retain(|r| !named.contains(&normalize_address(r)));
                refused.extend(named.iter().map(|r| {
                    RefusedRecipient {
                        rcpt: msg
                            .rcpt_to
                            .iter()
                            .find(|x| normalize_address(x) == *r)
                            .cloned()
                            .unwrap_or_else(|| r.clone()),
                        code: 550,
                        enhanced: Some((5, 1, 1)),
                        reason: sanitize(&text, Some(server.oauth.client_secret.expose())),
                    }
                }));
            }
            Err(e) => return failover(name, server, e),
        }
    }
}

/// What `test-server` and `check-config --probe` learn about a Graph server.
#[derive(Debug, Clone)]
pub struct GraphProbe {
    /// The mailbox's display name.
    pub display_name: String,
    /// Its primary address (or UPN).
    pub address: String,
}

/// Fetches a token and reads `/users/{mailbox}`: proves the app
/// registration, the secret, the permission User.Read.All and the mailbox.
pub async fn probe(
    up: &Upstreams,
    name: &str,
    server: &GraphServer,
) -> Result<GraphProbe, Failover> {
    let mut g = Graph::new(up, name, server).map_err(|e| fail_to_failover(name, server, e))?;
    let url = format!(
        "{}?$select=displayName,mail,userPrincipalName",
        g.user_url()
    );
    let resp = g
        .call(Method::GET, &url, None, Bytes::new(), true)
        .await
        .map_err(|e| fail_to_failover(name, server, e))?;
    if resp.status != 200 {
        return Err(fail_to_failover(
            name,
            server,
            classify(&resp, Needs::UserRead, &[]),
        ));
    }
    let j: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let s = |k: &str| j.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let address = [s("mail"), s("userPrincipalName")]
        .into_iter()
        .find(|a| !a.is_empty())
        .unwrap_or_else(|| server.mailbox.clone());
    Ok(GraphProbe {
        display_name: sanitize(&s("displayName"), None),
        address: sanitize(&address, None),
    })
}

impl<'a> Graph<'a> {
    fn new(up: &'a Upstreams, name: &'a str, server: &'a GraphServer) -> Result<Self, Fail> {
        Ok(Graph {
            up,
            name,
            server,
            https: up
                .https(server.ca_file.as_deref())
                .map_err(Fail::TlsSetup)?,
            token: None,
        })
    }

    fn user_url(&self) -> String {
        format!(
            "{}/v1.0/users/{}",
            self.server.graph_url,
            path_segment(&self.server.mailbox)
        )
    }

    async fn token(&mut self) -> Result<AccessToken, Fail> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let t = self
            .up
            .tokens
            .get(self.name, &self.server.oauth, &self.https)
            .await
            .map_err(Fail::OAuth)?;
        self.token = Some(t.clone());
        Ok(t)
    }

    /// One request. With `auth`, the bearer token goes along; a 401 then
    /// costs one forced refresh and one retry.
    async fn call(
        &mut self,
        method: Method,
        url: &str,
        content_type: Option<&'static str>,
        body: Bytes,
        auth: bool,
    ) -> Result<Response, Fail> {
        let mut refreshed = false;
        loop {
            let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
            if let Some(ct) = content_type {
                headers.push((header::CONTENT_TYPE, HeaderValue::from_static(ct)));
            }
            let token = if auth {
                let t = self.token().await?;
                let v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .map_err(|_| Fail::OAuth(bad_token(&self.server.oauth.token_url)))?;
                headers.push((header::AUTHORIZATION, v));
                Some(t)
            } else {
                None
            };
            let resp = self
                .https
                .send(Request {
                    method: method.clone(),
                    url: url.to_owned(),
                    headers,
                    body: body.clone(),
                    timeout: REQUEST_TIMEOUT,
                })
                .await
                .map_err(Fail::Http)?;
            match token {
                Some(stale) if resp.status == 401 && !refreshed => {
                    tracing::info!(
                        server = self.name,
                        "Graph refused the token (401); fetching a new one and retrying once"
                    );
                    let fresh = self
                        .up
                        .tokens
                        .refresh(self.name, &self.server.oauth, &self.https, &stale)
                        .await
                        .map_err(Fail::OAuth)?;
                    self.token = Some(fresh);
                    refreshed = true;
                }
                _ => return Ok(resp),
            }
        }
    }

    /// `sendMail` with the MIME message as base64.
    async fn send_simple(&mut self, mime: &[u8]) -> Result<(), Fail> {
        let url = format!("{}/sendMail", self.user_url());
        let body = Bytes::from(B64.encode(mime));
        let resp = self
            .call(Method::POST, &url, Some("text/plain"), body, true)
            .await?;
        match resp.status {
            200..=299 => Ok(()),
            _ => Err(classify(&resp, Needs::MailSend, &recipients_of(mime))),
        }
    }

    /// Draft, attachments, send. The draft is deleted when a step fails.
    async fn send_large(&mut self, mime: &[u8]) -> Result<(), Fail> {
        let draft = Draft::from_mime(mime);
        let url = format!("{}/messages", self.user_url());
        let resp = self
            .call(
                Method::POST,
                &url,
                Some("application/json"),
                Bytes::from(draft.json.to_string()),
                true,
            )
            .await?;
        if resp.status != 201 && resp.status != 200 {
            return Err(classify(&resp, Needs::MailReadWrite, &draft.recipients));
        }
        let id = serde_json::from_slice::<Value>(&resp.body)
            .ok()
            .and_then(|j| j.get("id").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| Fail::Permanent {
                status: resp.status,
                text: "the draft was created without an id".into(),
            })?;
        let message_url = format!("{}/messages/{}", self.user_url(), path_segment(&id));
        let result = self.fill_and_send(&message_url, &draft).await;
        if result.is_err() {
            let _ = self
                .call(Method::DELETE, &message_url, None, Bytes::new(), true)
                .await;
        }
        result
    }

    async fn fill_and_send(&mut self, message_url: &str, draft: &Draft) -> Result<(), Fail> {
        for a in &draft.attachments {
            if a.bytes.len() <= DIRECT_ATTACHMENT_LIMIT {
                let mut j = json!({
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "name": a.name,
                    "contentType": a.content_type,
                    "contentBytes": B64.encode(&a.bytes),
                    "isInline": a.content_id.is_some() && a.inline,
                });
                if let Some(cid) = &a.content_id {
                    j["contentId"] = json!(cid);
                }
                let resp = self
                    .call(
                        Method::POST,
                        &format!("{message_url}/attachments"),
                        Some("application/json"),
                        Bytes::from(j.to_string()),
                        true,
                    )
                    .await?;
                if !(200..300).contains(&resp.status) {
                    return Err(classify(&resp, Needs::MailReadWrite, &[]));
                }
            } else {
                self.upload(message_url, a).await?;
            }
        }
        let resp = self
            .call(
                Method::POST,
                &format!("{message_url}/send"),
                None,
                Bytes::new(),
                true,
            )
            .await?;
        match resp.status {
            200..=299 => Ok(()),
            _ => Err(classify(&resp, Needs::MailSend, &draft.recipients)),
        }
    }

    /// An attachment through an upload session: ranged PUTs to the
    /// session's URL (which carries its own authorisation).
    async fn upload(&mut self, message_url: &str, a: &Attachment) -> Result<(), Fail> {
        let mut item = json!({
            "attachmentType": "file",
            "name": a.name,
            "size": a.bytes.len(),
            "contentType": a.content_type,
            "isInline": a.content_id.is_some() && a.inline,
        });
        if let Some(cid) = &a.content_id {
            item["contentId"] = json!(cid);
        }
        let resp = self
            .call(
                Method::POST,
                &format!("{message_url}/attachments/createUploadSession"),
                Some("application/json"),
                Bytes::from(json!({ "AttachmentItem": item }).to_string()),
                true,
            )
            .await?;
        if !(200..300).contains(&resp.status) {
            return Err(classify(&resp, Needs::MailReadWrite, &[]));
        }
        let upload_url = serde_json::from_slice::<Value>(&resp.body)
            .ok()
            .and_then(|j| {
                j.get("uploadUrl")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .ok_or_else(|| Fail::Permanent {
                status: resp.status,
                text: "the upload session has no uploadUrl".into(),
            })?;
        let total = a.bytes.len();
        let data = Bytes::copy_from_slice(&a.bytes);
        let mut start = 0;
        while start < total {
            let end = (start + UPLOAD_CHUNK).min(total);
            let range = format!("bytes {start}-{}/{total}", end - 1);
            let resp = self
                .https
                .send(Request {
                    method: Method::PUT,
                    url: upload_url.clone(),
                    headers: vec![
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/octet-stream"),
                        ),
                        (
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&range).map_err(|_| Fail::Permanent {
                                status: 0,
                                text: "bad range".into(),
                            })?,
                        ),
                    ],
                    body: data.slice(start..end),
                    timeout: REQUEST_TIMEOUT,
                })
                .await
                .map_err(Fail::Http)?;
            if !(200..300).contains(&resp.status) {
                return Err(classify(&resp, Needs::MailReadWrite, &[]));
            }
            start = end;
        }
        Ok(())
    }
}

/// Sorts a non-2xx answer. `rcpts` are the message's recipients, to find
/// the ones a 400 names.
fn classify(resp: &Response, needs: Needs, rcpts: &[String]) -> Fail {
    let j: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let code = j
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = j
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map_or_else(|| resp.text(), str::to_owned);
    let text = if code.is_empty() {
        format!("{} {}", resp.status, message.trim())
    } else {
        format!("{} {code}: {}", resp.status, message.trim())
    };
    match resp.status {
        401 | 403 => Fail::Auth {
            text: format!(
                "{text} (the app registration needs the {} application permission, with admin consent)",
                needs.permission()
            ),
        },
        404 if matches!(needs, Needs::UserRead | Needs::MailSend) => Fail::Auth {
            text: format!("{text} (is the mailbox right?)"),
        },
        413 => Fail::TooLarge,
        429 | 500..=599 => Fail::Temporary {
            retry_after: resp.retry_after(),
            text,
        },
        400 if code.contains("Recipient") || message.to_ascii_lowercase().contains("recipient") => {
            let lower = message.to_ascii_lowercase();
            let named = rcpts
                .iter()
                .map(|r| normalize_address(r))
                .filter(|r| lower.contains(r.as_str()))
                .collect();
            Fail::InvalidRecipients { named, text }
        }
        status => Fail::Permanent { status, text },
    }
}

fn fail_to_failover(name: &str, server: &GraphServer, e: Fail) -> Failover {
    let secret = Some(server.oauth.client_secret.expose());
    let retry_after = match &e {
        Fail::Temporary { retry_after, .. } => retry_after.map(Duration::from_secs),
        _ => None,
    };
    use crate::outcome::{Capability, FailureClass as C};
    let (class, reason) = match e {
        Fail::OAuth(e) => (C::Auth, e.to_string()),
        Fail::Http(e @ HttpError::Tls { .. }) => (C::Tls, e.to_string()),
        Fail::Http(e) => (C::Connection, e.to_string()),
        Fail::TlsSetup(m) => (C::Tls, format!("TLS setup: {m}")),
        Fail::Temporary {
            retry_after: Some(s),
            text,
            ..
        } => (C::Temporary, format!("Graph {text}; retry after {s} s")),
        Fail::Temporary { text, .. } => (C::Temporary, format!("Graph {text}")),
        Fail::Auth { text } => (C::Auth, format!("Graph {text}")),
        Fail::TooLarge => (
            C::Capability(Capability::Size),
            "Graph: request too large (413)".to_owned(),
        ),
        Fail::InvalidRecipients { text, .. } | Fail::Permanent { text, .. } => {
            (C::Connection, format!("Graph {text}"))
        }
        Fail::Local(e) => (C::Local, format!("reading the message: {e}")),
    };
    let mut f = Failover::new(name, class, sanitize(&reason, secret));
    f.retry_after = retry_after;
    f
}

fn failover(name: &str, server: &GraphServer, e: Fail) -> HopResult {
    let secret = Some(server.oauth.client_secret.expose());
    match e {
        Fail::InvalidRecipients { text, .. } => HopResult::Permanent {
            code: 550,
            enhanced: Some((5, 1, 1)),
            reason: sanitize(&format!("Graph {text}"), secret),
        },
        Fail::Permanent { status, text } => HopResult::Permanent {
            code: 554,
            enhanced: Some((5, 0, 0)),
            reason: sanitize(&format!("Graph {text} (status {status})"), secret),
        },
        e => HopResult::Failover(fail_to_failover(name, server, e)),
    }
}

fn bad_token(url: &str) -> OAuthError {
    OAuthError::BadAnswer {
        url: url.to_owned(),
        reason: "the access token cannot go into a header".into(),
    }
}

/// The message from `from` on (empty line and body), in memory.
async fn read_rest(m: &Message, from: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity((m.len() as usize).saturating_sub(from));
    let mut chunks = m.chunks(from);
    while let Some(c) = chunks.next().await? {
        out.extend_from_slice(c);
    }
    Ok(out)
}

/// A URL path segment: unreserved characters and `@` stay, the rest is
/// percent-encoded.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@' | b'=') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every To, Cc and Bcc address of a MIME header (normalised).
fn recipients_of(mime: &[u8]) -> Vec<String> {
    let Some(m) = mail_parser::MessageParser::default().parse_headers(mime) else {
        return Vec::new();
    };
    [m.to(), m.cc(), m.bcc()]
        .into_iter()
        .flatten()
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address.as_deref().map(normalize_address))
        .collect()
}

/// A file attachment of the draft path.
struct Attachment {
    name: String,
    content_type: String,
    content_id: Option<String>,
    inline: bool,
    bytes: Vec<u8>,
}

/// A message as Graph's JSON message resource plus its attachments.
struct Draft {
    json: Value,
    attachments: Vec<Attachment>,
    recipients: Vec<String>,
}

impl Draft {
    /// Builds the draft from a MIME message whose To/Cc/Bcc are already
    /// fitted to the envelope: subject, one body (HTML preferred), the
    /// recipients, From, Reply-To, `X-` headers, and every attachment.
    fn from_mime(mime: &[u8]) -> Draft {
        let parsed = mail_parser::MessageParser::default().parse(mime);
        let Some(m) = parsed else {
            return Draft {
                json: json!({ "subject": "", "body": { "contentType": "Text", "content": String::from_utf8_lossy(mime) } }),
                attachments: Vec::new(),
                recipients: Vec::new(),
            };
        };
        let people = |a: Option<&mail_parser::Address<'_>>| -> Vec<Value> {
            a.map(|a| {
                a.iter()
                    .filter_map(|x| {
                        let addr = x.address.as_deref()?;
                        let mut e = json!({ "address": addr });
                        if let Some(n) = x.name.as_deref().filter(|n| !n.is_empty()) {
                            e["name"] = json!(n);
                        }
                        Some(json!({ "emailAddress": e }))
                    })
                    .collect()
            })
            .unwrap_or_default()
        };
        let (content_type, content) = if m.html_part(0).is_some_and(is_html) {
            ("HTML", m.body_html(0).unwrap_or_default().into_owned())
        } else {
            ("Text", m.body_text(0).unwrap_or_default().into_owned())
        };
        let mut json = json!({
            "subject": m.subject().unwrap_or(""),
            "body": { "contentType": content_type, "content": content },
            "toRecipients": people(m.to()),
            "ccRecipients": people(m.cc()),
            "bccRecipients": people(m.bcc()),
        });
        if let Some(from) = people(m.from()).into_iter().next() {
            json["from"] = from;
        }
        let reply_to = people(m.reply_to());
        if !reply_to.is_empty() {
            json["replyTo"] = json!(reply_to);
        }
        let custom: Vec<Value> = m
            .headers()
            .iter()
            .filter(|h| h.name().len() > 2 && h.name()[..2].eq_ignore_ascii_case("x-"))
            .filter_map(|h| {
                let raw = mime.get(h.offset_start() as usize..h.offset_end() as usize)?;
                let value = String::from_utf8_lossy(raw)
                    .replace("\r\n", "")
                    .replace('\n', "")
                    .trim()
                    .to_owned();
                Some(json!({ "name": h.name(), "value": value }))
            })
            .collect();
        if !custom.is_empty() {
            json["internetMessageHeaders"] = json!(custom);
        }
        let attachments = m
            .attachments()
            .enumerate()
            .map(|(i, a)| {
                let content_type = a.content_type().map_or_else(
                    || "application/octet-stream".to_owned(),
                    |c| match c.subtype() {
                        Some(s) => format!("{}/{s}", c.ctype()),
                        None => c.ctype().to_owned(),
                    },
                );
                Attachment {
                    name: a
                        .attachment_name()
                        .map_or_else(|| format!("attachment-{}", i + 1), str::to_owned),
                    content_type,
                    content_id: a
                        .content_id()
                        .map(|c| c.trim_matches(['<', '>']).to_owned()),
                    inline: a
                        .content_disposition()
                        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("inline")),
                    bytes: a.contents().to_vec(),
                }
            })
            .collect();
        let recipients = [m.to(), m.cc(), m.bcc()]
            .into_iter()
            .flatten()
            .flat_map(|a| a.iter())
            .filter_map(|a| a.address.as_deref().map(normalize_address))
            .collect();
        Draft {
            json,
            attachments,
            recipients,
        }
    }
}

/// Whether a body part is really HTML: mail-parser offers a text-only
/// message's text part as its HTML body too.
fn is_html(p: &mail_parser::MessagePart<'_>) -> bool {
    p.content_type().is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("text")
            && c.subtype().is_some_and(|s| s.eq_ignore_ascii_case("html"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_fits_graph() {
        const { assert!(UPLOAD_CHUNK.is_multiple_of(320 * 1024) && UPLOAD_CHUNK <= 4 << 20) };
    }

    #[test]
    fn draft_from_mime() {
        let mime = b"From: Shop <shop@acme.example>\r\nTo: a@x.example\r\nBcc: <b@y.example>\r\n\
Subject: Hello\r\nX-Order: 42\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>Hi</p>\r\n\
--b\r\nContent-Type: application/pdf; name=\"x.pdf\"\r\nContent-Disposition: attachment; filename=\"x.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b--\r\n";
        let d = Draft::from_mime(mime);
        assert_eq!(d.json["subject"], "Hello");
        assert_eq!(d.json["body"]["contentType"], "HTML");
        assert_eq!(
            d.json["toRecipients"][0]["emailAddress"]["address"],
            "a@x.example"
        );
        assert_eq!(
            d.json["bccRecipients"][0]["emailAddress"]["address"],
            "b@y.example"
        );
        assert_eq!(d.json["from"]["emailAddress"]["name"], "Shop");
        assert_eq!(d.json["internetMessageHeaders"][0]["name"], "X-Order");
        assert_eq!(d.json["internetMessageHeaders"][0]["value"], "42");
        assert_eq!(d.attachments.len(), 1);
        assert_eq!(d.attachments[0].name, "x.pdf");
        assert_eq!(d.attachments[0].content_type, "application/pdf");
        assert_eq!(d.attachments[0].bytes, vec![0, 1, 2]);
        assert_eq!(d.recipients, vec!["a@x.example", "b@y.example"]);
    }

    #[test]
    fn plain_text_stays_text() {
        let d = Draft::from_mime(b"Subject: s\r\nTo: a@x\r\n\r\nhello\r\n");
        assert_eq!(d.json["body"]["contentType"], "Text");
        assert_eq!(d.json["body"]["content"], "hello\r\n");
    }

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Default::default(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn answers() {
        let r = resp(
            400,
            r#"{"error":{"code":"ErrorInvalidRecipients","message":"At least one recipient is not valid., Recipient 'Bad@X.example' is not resolved."}}"#,
        );
        let Fail::InvalidRecipients { named, .. } = classify(
            &r,
            Needs::MailSend,
            &["bad@x.example".into(), "ok@x.example".into()],
        ) else {
            panic!()
        };
        assert_eq!(named, vec!["bad@x.example"]);
        let r = resp(
            403,
            r#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied."}}"#,
        );
        let Fail::Auth { text, .. } = classify(&r, Needs::MailReadWrite, &[]) else {
            panic!()
        };
        assert!(
            text.contains("Mail.ReadWrite") && text.contains("ErrorAccessDenied"),
            "{text}"
        );
        let mut r = resp(429, "");
        r.headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert!(matches!(
            classify(&r, Needs::MailSend, &[]),
            Fail::Temporary {
                retry_after: Some(7),
                ..
            }
        ));
        assert!(matches!(
            classify(&resp(413, ""), Needs::MailSend, &[]),
            Fail::TooLarge
        ));
        assert!(matches!(
            classify(
                &resp(
                    400,
                    r#"{"error":{"code":"ErrorMimeContentInvalid","message":"bad"}}"#
                ),
                Needs::MailSend,
                &[]
            ),
            Fail::Permanent { status: 400, .. }
        ));
    }

    #[test]
    fn retry_after_reaches_the_failover() {
        use crate::config::values::Secret;
        use crate::config::{OAuth, OAuthGrant};
        let server = GraphServer {
            tenant_id: "t".into(),
            mailbox: "m@x.example".into(),
            graph_url: "https://g.example".into(),
            oauth: OAuth {
                token_url: "https://l.example/t/oauth2/v2.0/token".into(),
                client_id: "c".into(),
                client_secret: Secret::new("s3cr3t-value"),
                grant: OAuthGrant::ClientCredentials {
                    scope: "https://g.example/.default".into(),
                },
            },
            ca_file: None,
        };
        let f = fail_to_failover(
            "g",
            &server,
            Fail::Temporary {
                retry_after: Some(30),
                text: "429 TooManyRequests: slow down s3cr3t-value".into(),
            },
        );
        assert_eq!(
            (f.class.as_str(), f.retry_after),
            ("temporary", Some(Duration::from_secs(30)))
        );
        assert!(
            f.reason.contains("retry after 30 s") && !f.reason.contains("s3cr3t"),
            "{}",
            f.reason
        );
        let f = fail_to_failover(
            "g",
            &server,
            Fail::Auth {
                text: "401 x".into(),
            },
        );
        assert_eq!((f.class.as_str(), f.retry_after), ("auth", None));
    }

    #[test]
    fn mailbox_in_a_path() {
        assert_eq!(path_segment("relay@acme.example"), "relay@acme.example");
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
    }
}
