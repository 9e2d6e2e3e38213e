//! A fake Microsoft identity platform token endpoint and Microsoft Graph,
//! over HTTPS on loopback (hyper + tokio-rustls, certificate from an rcgen
//! test CA written to [`GraphFake::ca_file`]). Point a relay at it with
//! `authority`, `graph_url` and `ca_file` (see [`GraphFake::server_toml`]).
//!
//! Every request is checked (bearer token, grant parameters, content
//! types, base64 MIME, upload-session ranges and chunk sizes); violations
//! are answered with 400 and collected in [`GraphFake::violations`], which
//! tests assert to be empty. Behaviour can be scripted: answer `sendMail`
//! with a status (429 with Retry-After, 401, 403, 413, 5xx), revoke the
//! tokens issued so far, refuse a recipient.
#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Graph's request size limit (about 4 MB).
pub const REQUEST_LIMIT: usize = 4 * 1024 * 1024;

/// How a message reached the fake.
#[derive(Debug, Clone)]
pub enum Via {
    /// `sendMail` with base64 MIME.
    Mime,
    /// Draft + attachments + send.
    Draft,
}

/// A message Graph "sent".
#[derive(Debug, Clone)]
pub struct Sent {
    /// How.
    pub via: Via,
    /// The decoded MIME (`Via::Mime`).
    pub mime: Vec<u8>,
    /// The draft JSON (`Via::Draft`).
    pub draft: Value,
    /// Attachments (`Via::Draft`): name, content type, bytes, uploaded in a session.
    pub attachments: Vec<(String, String, Vec<u8>, bool)>,
}

impl Sent {
    /// Who receives it, as Graph would decide: To, Cc and Bcc of the MIME
    /// header or the draft's recipient lists (lower case).
    pub fn recipients(&self) -> Vec<String> {
        match self.via {
            Via::Mime => {
                let m = mail_parser::MessageParser::default()
                    .parse_headers(&self.mime[..])
                    .expect("MIME header");
                [m.to(), m.cc(), m.bcc()]
                    .into_iter()
                    .flatten()
                    .flat_map(|a| a.iter())
                    .filter_map(|a| a.address.as_deref().map(str::to_lowercase))
                    .collect()
            }
            Via::Draft => ["toRecipients", "ccRecipients", "bccRecipients"]
                .iter()
                .flat_map(|k| self.draft[*k].as_array().cloned().unwrap_or_default())
                .filter_map(|r| r["emailAddress"]["address"].as_str().map(str::to_lowercase))
                .collect(),
        }
    }

    /// A header of the MIME message.
    pub fn header(&self, name: &str) -> Option<String> {
        let m = mail_parser::MessageParser::default().parse_headers(&self.mime[..])?;
        m.header_raw(name).map(|v| v.trim().to_owned())
    }
}

/// One upload-session PUT.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// First byte.
    pub start: usize,
    /// Length.
    pub len: usize,
    /// Total size announced.
    pub total: usize,
}

#[derive(Default)]
struct Draft {
    json: Value,
    attachments: Vec<(String, String, Vec<u8>, bool)>,
}

struct Upload {
    draft: String,
    name: String,
    content_type: String,
    size: usize,
    data: Vec<u8>,
}

#[derive(Default)]
struct State {
    tenant: String,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    refresh_token: Option<String>,
    lifetime: u64,
    issued: u64,
    valid: HashMap<String, Instant>,
    refused_tokens: u64,
    token_requests: u64,
    send_script: VecDeque<(u16, Option<u64>)>,
    send_always: Option<u16>,
    deny_user_read: bool,
    bad_recipients: Vec<String>,
    drafts: HashMap<String, Draft>,
    uploads: HashMap<String, Upload>,
    next_id: u64,
    sent: Vec<Sent>,
    chunks: Vec<Chunk>,
    direct_attachments: usize,
    violations: Vec<String>,
    requests: Vec<String>,
    port: u16,
}

/// The fake.
pub struct GraphFake {
    state: Arc<Mutex<State>>,
    port: u16,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn resp(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn graph_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    resp(
        status,
        json!({ "error": { "code": code, "message": message } }),
    )
}

impl GraphFake {
    /// Starts the fake for tenant `tenant`, app `client_id` / `client_secret`;
    /// tokens live `lifetime` seconds.
    pub fn start(tenant: &str, client_id: &str, client_secret: &str, lifetime: u64) -> GraphFake {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "smarthost test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();

        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            lifetime,
            port,
            ..Default::default()
        }));
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        GraphFake {
            state,
            port,
            dir,
            _rt: rt,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The test CA's PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The token endpoint of the tenant.
    pub fn token_url(&self) -> String {
        let tenant = self.state.lock().unwrap().tenant.clone();
        format!("{}/{tenant}/oauth2/v2.0/token", self.url())
    }

    /// A `[server.NAME]` section for a graph server on this fake.
    pub fn server_toml(&self, name: &str, mailbox: &str, secret_toml: &str) -> String {
        let s = self.state.lock().unwrap();
        format!(
            "[server.{name}]\nkind = \"graph\"\ntenant_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = {secret_toml}\nmailbox = \"{mailbox}\"\nauthority = \"{}\"\ngraph_url = \"{}\"\nca_file = \"{}\"\n",
            s.tenant,
            s.client_id,
            self.url(),
            self.url(),
            self.ca_file().display()
        )
    }

    /// Expect this scope in client-credentials requests (default: `{url}/.default`).
    pub fn expect_scope(&self, scope: &str) {
        self.state.lock().unwrap().scope = Some(scope.to_owned());
    }

    /// Accept the refresh-token grant with this refresh token.
    pub fn accept_refresh_token(&self, token: &str) {
        self.state.lock().unwrap().refresh_token = Some(token.to_owned());
    }

    /// Tokens issued so far stop working (as if they expired).
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().valid.clear();
    }

    /// Whether `token` is currently valid.
    pub fn token_valid(&self, token: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .valid
            .get(token)
            .is_some_and(|t| Instant::now() < *t)
    }

    /// Requests refused with 401 for an invalid or expired token.
    pub fn refused_tokens(&self) -> u64 {
        self.state.lock().unwrap().refused_tokens
    }

    /// The last token issued.
    pub fn last_token(&self) -> String {
        format!("tok-{}", self.state.lock().unwrap().issued)
    }

    /// Answer the next `sendMail` / draft `send` with `status` (and Retry-After).
    pub fn fail_next_send(&self, status: u16, retry_after: Option<u64>) {
        self.state
            .lock()
            .unwrap()
            .send_script
            .push_back((status, retry_after));
    }

    /// Answer every send with `status`.
    pub fn fail_every_send(&self, status: u16) {
        self.state.lock().unwrap().send_always = Some(status);
    }

    /// Answer `GET /users/{mailbox}` with 403.
    pub fn deny_user_read(&self) {
        self.state.lock().unwrap().deny_user_read = true;
    }

    /// Refuse messages addressed to `rcpt` with 400 ErrorInvalidRecipients.
    pub fn refuse_recipient(&self, rcpt: &str) {
        self.state
            .lock()
            .unwrap()
            .bad_recipients
            .push(rcpt.to_lowercase());
    }

    /// Token requests answered so far.
    pub fn token_requests(&self) -> u64 {
        self.state.lock().unwrap().token_requests
    }

    /// Messages sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.state.lock().unwrap().sent.clone()
    }

    /// Upload-session PUTs so far.
    pub fn chunks(&self) -> Vec<Chunk> {
        self.state.lock().unwrap().chunks.clone()
    }

    /// Attachments added directly to drafts so far.
    pub fn direct_attachments(&self) -> usize {
        self.state.lock().unwrap().direct_attachments
    }

    /// Drafts created and not sent or deleted.
    pub fn open_drafts(&self) -> usize {
        self.state.lock().unwrap().drafts.len()
    }

    /// Every request as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Protocol violations seen (should be empty).
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// Waits (bounded) until `n` messages were sent.
    pub fn wait_sent(&self, n: usize, timeout: Duration) -> Vec<Sent> {
        let end = Instant::now() + timeout;
        loop {
            let s = self.sent();
            if s.len() >= n {
                return s;
            }
            assert!(
                Instant::now() < end,
                "expected {n} message(s) at the Graph fake, got {}; requests: {:?}; violations: {:?}",
                s.len(),
                self.requests(),
                self.violations()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let dec = |s: &str| {
        let s = s.replace('+', " ");
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 3 <= b.len() {
                let h =
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap();
                out.push(h);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (dec(k), dec(v)))
        .collect()
}

async fn handle(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return graph_error(400, "BadBody", "unreadable body"),
    };
    let mut s = st.lock().unwrap();
    s.requests.push(format!("{method} {path}"));
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    macro_rules! violation {
        ($($t:tt)*) => {{
            let m = format!($($t)*);
            s.violations.push(m.clone());
            return graph_error(400, "FakeViolation", &m);
        }};
    }

    // Graph answers 411 to a POST or PUT without Content-Length.
    if (method == hyper::Method::POST || method == hyper::Method::PUT)
        && header("content-length").parse::<usize>().ok() != Some(body.len())
    {
        violation!(
            "{method} {path}: Content-Length {:?} for {} bytes",
            header("content-length"),
            body.len()
        );
    }

    // Token endpoint.
    let token_path = format!("/{}/oauth2/v2.0/token", s.tenant);
    if path == token_path {
        if method != hyper::Method::POST {
            violation!("token endpoint: {method}");
        }
        if header("content-type") != "application/x-www-form-urlencoded" {
            violation!("token endpoint: content type {:?}", header("content-type"));
        }
        if !header("authorization").is_empty() {
            violation!("token endpoint: an Authorization header was sent");
        }
        let f = form(&body);
        s.token_requests += 1;
        if f.get("client_id") != Some(&s.client_id) {
            return resp(
                400,
                json!({"error": "unauthorized_client", "error_description": "AADSTS700016: Application not found in the directory.", "error_codes": [700016]}),
            );
        }
        if f.get("client_secret") != Some(&s.client_secret) {
            return resp(
                401,
                json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.", "error_codes": [7000215]}),
            );
        }
        match f.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {
                let want = s
                    .scope
                    .clone()
                    .unwrap_or_else(|| format!("https://127.0.0.1:{}/.default", s.port));
                if f.get("scope") != Some(&want) {
                    violation!("token endpoint: scope {:?}, want {want:?}", f.get("scope"));
                }
            }
            Some("refresh_token") => {
                if s.refresh_token.is_none() || f.get("refresh_token") != s.refresh_token.as_ref() {
                    return resp(
                        400,
                        json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
                    );
                }
            }
            other => violation!("token endpoint: grant_type {other:?}"),
        }
        s.issued += 1;
        let token = format!("tok-{}", s.issued);
        let expires = Instant::now() + Duration::from_secs(s.lifetime);
        s.valid.insert(token.clone(), expires);
        return resp(
            200,
            json!({"token_type": "Bearer", "expires_in": s.lifetime, "access_token": token}),
        );
    }

    // Upload sessions: authorised by their URL, no bearer token.
    if let Some(rest) = path.strip_prefix("/upload/") {
        if method != hyper::Method::PUT {
            violation!("upload: {method}");
        }
        if !header("authorization").is_empty() {
            violation!("upload: an Authorization header was sent to the upload URL");
        }
        let range = header("content-range");
        let Some((start, end, total)) = range
            .strip_prefix("bytes ")
            .and_then(|r| r.split_once('/'))
            .and_then(|(se, t)| {
                let (a, b) = se.split_once('-')?;
                Some((
                    a.parse::<usize>().ok()?,
                    b.parse::<usize>().ok()?,
                    t.parse::<usize>().ok()?,
                ))
            })
        else {
            violation!("upload: bad Content-Range {range:?}");
        };
        let Some(up) = s.uploads.get_mut(rest) else {
            violation!("upload: unknown session {rest}");
        };
        let len = end + 1 - start;
        if total != up.size || start != up.data.len() || body.len() != len {
            violation!(
                "upload: range {range} with {} bytes, session at {} of {}",
                body.len(),
                up.data.len(),
                up.size
            );
        }
        if len > 4 * 1024 * 1024 || (end + 1 < total && len % (320 * 1024) != 0) {
            violation!("upload: chunk of {len} bytes (must be ≤ 4 MiB and a multiple of 320 KiB)");
        }
        up.data.extend_from_slice(&body);
        let done = up.data.len() == up.size;
        s.chunks.push(Chunk { start, len, total });
        if done {
            let up = s.uploads.remove(rest).unwrap();
            let Some(d) = s.drafts.get_mut(&up.draft) else {
                violation!("upload: the draft is gone");
            };
            d.attachments
                .push((up.name, up.content_type, up.data, true));
            return resp(201, json!({}));
        }
        return resp(
            200,
            json!({"nextExpectedRanges": [format!("{}-", end + 1)]}),
        );
    }

    // Graph proper: bearer token required.
    let token = header("authorization");
    let Some(token) = token.strip_prefix("Bearer ") else {
        violation!("{method} {path}: no bearer token");
    };
    if s.valid.get(token).is_none_or(|t| Instant::now() >= *t) {
        s.refused_tokens += 1;
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        );
    }
    if body.len() > REQUEST_LIMIT {
        return graph_error(413, "RequestEntityTooLarge", "The request is too large.");
    }
    let Some(rest) = path.strip_prefix("/v1.0/users/") else {
        return graph_error(404, "ResourceNotFound", "no such resource");
    };
    let (mailbox, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let _ = mailbox;
    let segments: Vec<&str> = tail.split('/').filter(|x| !x.is_empty()).collect();
    let send_status = |s: &mut State| -> Option<(u16, Option<u64>)> {
        if let Some(st) = s.send_always {
            return Some((st, None));
        }
        s.send_script.pop_front()
    };
    match (method.as_str(), segments.as_slice()) {
        ("GET", []) => {
            if s.deny_user_read {
                return graph_error(
                    403,
                    "Authorization_RequestDenied",
                    "Insufficient privileges to complete the operation.",
                );
            }
            resp(
                200,
                json!({"displayName": "Relay Mailbox", "mail": mailbox, "userPrincipalName": mailbox}),
            )
        }
        ("POST", ["sendMail"]) => {
            if header("content-type") != "text/plain" {
                violation!("sendMail: content type {:?}", header("content-type"));
            }
            let Ok(mime) = B64.decode(&body) else {
                violation!("sendMail: the body is not base64");
            };
            if let Some((status, retry)) = send_status(&mut s) {
                let mut r = graph_error(status, "Scripted", "scripted failure");
                if let Some(sec) = retry {
                    r.headers_mut()
                        .insert("retry-after", sec.to_string().parse().unwrap());
                }
                return r;
            }
            let sent = Sent {
                via: Via::Mime,
                mime,
                draft: Value::Null,
                attachments: vec![],
            };
            let rcpts = sent.recipients();
            if let Some(bad) = rcpts.iter().find(|r| s.bad_recipients.contains(r)) {
                return graph_error(
                    400,
                    "ErrorInvalidRecipients",
                    &format!(
                        "At least one recipient is not valid., Recipient '{bad}' is not resolved. All recipients must be resolved before a message can be submitted."
                    ),
                );
            }
            if rcpts.is_empty() {
                violation!("sendMail: a message without recipients");
            }
            s.sent.push(sent);
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
        ("POST", ["messages"]) => {
            if header("content-type") != "application/json" {
                violation!("create draft: content type {:?}", header("content-type"));
            }
            let Ok(j) = serde_json::from_slice::<Value>(&body) else {
                violation!("create draft: not JSON");
            };
            s.next_id += 1;
            let id = format!("draft{}", s.next_id);
            s.drafts.insert(
                id.clone(),
                Draft {
                    json: j,
                    attachments: vec![],
                },
            );
            resp(201, json!({"id": id}))
        }
        ("POST", ["messages", id, "attachments"]) => {
            let id = id.to_string();
            let Ok(j) = serde_json::from_slice::<Value>(&body) else {
                violation!("attachment: not JSON");
            };
            if j["@odata.type"] != "#microsoft.graph.fileAttachment" {
                violation!("attachment: type {}", j["@odata.type"]);
            }
            let Some(bytes) = j["contentBytes"].as_str().and_then(|b| B64.decode(b).ok()) else {
                violation!("attachment: contentBytes not base64");
            };
            if bytes.len() > 3 * 1024 * 1024 {
                violation!(
                    "attachment: {} bytes sent directly (more than 3 MB)",
                    bytes.len()
                );
            }
            s.direct_attachments += 1;
            let Some(d) = s.drafts.get_mut(&id) else {
                return graph_error(404, "ErrorItemNotFound", "no such draft");
            };
            d.attachments.push((
                j["name"].as_str().unwrap_or("").to_owned(),
                j["contentType"].as_str().unwrap_or("").to_owned(),
                bytes,
                false,
            ));
            resp(201, json!({"id": "att"}))
        }
        ("POST", ["messages", id, "attachments", "createUploadSession"]) => {
            let id = id.to_string();
            let Ok(j) = serde_json::from_slice::<Value>(&body) else {
                violation!("upload session: not JSON");
            };
            let item = &j["AttachmentItem"];
            if item["attachmentType"] != "file" {
                violation!("upload session: attachmentType {}", item["attachmentType"]);
            }
            let Some(size) = item["size"].as_u64() else {
                violation!("upload session: no size");
            };
            if !s.drafts.contains_key(&id) {
                return graph_error(404, "ErrorItemNotFound", "no such draft");
            }
            s.next_id += 1;
            let key = format!("s{}", s.next_id);
            s.uploads.insert(
                key.clone(),
                Upload {
                    draft: id,
                    name: item["name"].as_str().unwrap_or("").to_owned(),
                    content_type: item["contentType"].as_str().unwrap_or("").to_owned(),
                    size: size as usize,
                    data: Vec::new(),
                },
            );
            resp(
                201,
                json!({"uploadUrl": format!("https://127.0.0.1:{}/upload/{key}", s.port), "expirationDateTime": "2030-01-01T00:00:00Z"}),
            )
        }
        ("POST", ["messages", id, "send"]) => {
            let id = id.to_string();
            if let Some((status, retry)) = send_status(&mut s) {
                let mut r = graph_error(status, "Scripted", "scripted failure");
                if let Some(sec) = retry {
                    r.headers_mut()
                        .insert("retry-after", sec.to_string().parse().unwrap());
                }
                return r;
            }
            let Some(d) = s.drafts.remove(&id) else {
                return graph_error(404, "ErrorItemNotFound", "no such draft");
            };
            s.sent.push(Sent {
                via: Via::Draft,
                mime: vec![],
                draft: d.json,
                attachments: d.attachments,
            });
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
        ("DELETE", ["messages", id]) => {
            let id = id.to_string();
            s.drafts.remove(&id);
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        _ => graph_error(404, "ResourceNotFound", &format!("{method} {path}")),
    }
}
