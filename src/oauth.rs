//! OAuth2 access tokens for upstreams that need them: SMTP with XOAUTH2
//! and Microsoft Graph.
//!
//! * Grants: client credentials (`scope`, Microsoft 365) and refresh token
//!   (`refresh_token`, Google), both as a form POST to the token endpoint.
//! * [`Tokens`] caches one token per server and settings. A token is
//!   refreshed before it expires (at three quarters of its lifetime, at most
//!   five minutes early), and refreshes are single-flight: concurrent
//!   deliveries that need a token wait for the one request in progress.
//! * [`Tokens::refresh`] forces a new token when the upstream refused the
//!   cached one (SMTP 535/454, Graph 401), unless another delivery already
//!   replaced that token.
//! * [`OAuthError`] carries the endpoint's error and its codes (such as
//!   `AADSTS7000215`); never the client secret, the refresh token or an
//!   access token. Every variant counts as failure class `auth`.
//!
//! This module owns no sockets of its own; it asks [`Https`] for requests.

use crate::config::values::Secret;
use crate::config::{OAuth, OAuthGrant};
use crate::upstream::https::{HttpError, Https, Request, form_encode};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Bound on one token request.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A token is refreshed at most this long before it expires.
const MAX_EARLY: Duration = Duration::from_secs(300);

/// Lifetime assumed when the endpoint gives none.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// The token endpoint could not be reached (or the answer was cut off).
    #[error("token endpoint {url}: {reason}")]
    Unreachable {
        /// The token endpoint.
        url: String,
        /// What failed (connect, TLS, timeout).
        reason: String,
    },
    /// The endpoint refused: `error` is its OAuth error (`invalid_client`),
    /// `codes` its numeric codes (Microsoft: `AADSTS7000215`).
    #[error("token endpoint {url} refused ({status}): {error}{}{description}", list(.codes))]
    Refused {
        /// The token endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// The OAuth `error` field.
        error: String,
        /// The endpoint's numeric error codes, as `AADSTS7000215`.
        codes: Vec<String>,
        /// `: ` and the start of `error_description`, or empty.
        description: String,
    },
    /// The endpoint answered 2xx without a usable token.
    #[error("token endpoint {url}: unusable answer: {reason}")]
    BadAnswer {
        /// The token endpoint.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

fn list(codes: &[String]) -> String {
    if codes.is_empty() {
        String::new()
    } else {
        format!(" [{}]", codes.join(", "))
    }
}

/// An access token. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    value: Secret,
    /// Which fetch produced it (to tell a stale token from a fresh one).
    generation: u64,
}

impl AccessToken {
    /// The token, to put into an `Authorization` header or XOAUTH2 string.
    pub fn expose(&self) -> &str {
        self.value.expose()
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken(<redacted> #{})", self.generation)
    }
}

/// A token as the endpoint gave it.
#[derive(Debug)]
pub struct Fetched {
    /// The access token.
    pub token: Secret,
    /// Its lifetime (`expires_in`).
    pub lifetime: Duration,
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
}

struct Slot {
    fingerprint: u64,
    state: tokio::sync::Mutex<Option<Cached>>,
}

/// Access tokens of every server, cached. Shared by all deliveries.
#[derive(Default)]
pub struct Tokens {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    generation: std::sync::atomic::AtomicU64,
    fetches: Mutex<HashMap<String, u64>>,
}

impl Tokens {
    /// A valid token for `server`, from the cache or fetched now.
    pub async fn get(
        &self,
        server: &str,
        oauth: &OAuth,
        https: &Https,
    ) -> Result<AccessToken, OAuthError> {
        self.get_with(server, fingerprint(oauth), None, || fetch(oauth, https))
            .await
    }

    /// A new token for `server` because `stale` was refused by the
    /// upstream; when another delivery already replaced `stale`, its
    /// replacement is returned without a new request.
    pub async fn refresh(
        &self,
        server: &str,
        oauth: &OAuth,
        https: &Https,
        stale: &AccessToken,
    ) -> Result<AccessToken, OAuthError> {
        self.get_with(server, fingerprint(oauth), Some(stale), || {
            fetch(oauth, https)
        })
        .await
    }

    /// How many tokens were fetched for `server` (for tests and logs).
    pub fn fetches(&self, server: &str) -> u64 {
        self.lock_fetches().get(server).copied().unwrap_or(0)
    }

    /// The cache logic with the fetch passed in (unit tests use a fake).
    pub async fn get_with<F, Fut>(
        &self,
        server: &str,
        fingerprint: u64,
        stale: Option<&AccessToken>,
        fetch: F,
    ) -> Result<AccessToken, OAuthError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Fetched, OAuthError>>,
    {
        let slot = self.slot(server, fingerprint);
        // Holding the slot's lock while fetching makes the refresh
        // single-flight: whoever comes next finds the new token.
        let mut state = slot.state.lock().await;
        if let Some(c) = state.as_ref() {
            let refused = stale.is_some_and(|s| s.generation == c.token.generation);
            if !refused && Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        *self.lock_fetches().entry(server.to_owned()).or_default() += 1;
        let fetched = match fetch().await {
            Ok(f) => f,
            Err(e) => {
                *state = None;
                return Err(e);
            }
        };
        let early = (fetched.lifetime / 4).min(MAX_EARLY);
        let token = AccessToken {
            value: fetched.token,
            generation: self
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        *state = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + fetched.lifetime - early,
        });
        tracing::debug!(
            server,
            lifetime_s = fetched.lifetime.as_secs(),
            "OAuth token fetched"
        );
        Ok(token)
    }

    fn slot(&self, server: &str, fingerprint: u64) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(server) {
            Some(s) if s.fingerprint == fingerprint => s.clone(),
            _ => {
                // New server or changed settings (a reload): a fresh slot.
                let s = Arc::new(Slot {
                    fingerprint,
                    state: tokio::sync::Mutex::new(None),
                });
                slots.insert(server.to_owned(), s.clone());
                s
            }
        }
    }

    fn lock_fetches(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.fetches.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What identifies a token: endpoint, client, secret, grant.
fn fingerprint(o: &OAuth) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    o.token_url.hash(&mut h);
    o.client_id.hash(&mut h);
    o.client_secret.expose().hash(&mut h);
    match &o.grant {
        OAuthGrant::ClientCredentials { scope } => ("cc", scope).hash(&mut h),
        OAuthGrant::RefreshToken {
            refresh_token,
            scope,
        } => ("rt", refresh_token.expose(), scope).hash(&mut h),
    }
    h.finish()
}

/// One token request.
async fn fetch(o: &OAuth, https: &Https) -> Result<Fetched, OAuthError> {
    let mut form: Vec<(&str, &str)> = vec![
        ("client_id", &o.client_id),
        ("client_secret", o.client_secret.expose()),
    ];
    match &o.grant {
        OAuthGrant::ClientCredentials { scope } => {
            form.extend([("grant_type", "client_credentials"), ("scope", scope)]);
        }
        OAuthGrant::RefreshToken {
            refresh_token,
            scope,
        } => {
            form.extend([
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose()),
            ]);
            if let Some(s) = scope {
                form.push(("scope", s));
            }
        }
    }
    let req = Request {
        method: hyper::Method::POST,
        url: o.token_url.clone(),
        headers: vec![
            (
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/x-www-form-urlencoded"),
            ),
            (
                hyper::header::ACCEPT,
                hyper::header::HeaderValue::from_static("application/json"),
            ),
        ],
        body: form_encode(&form).into(),
        timeout: TOKEN_TIMEOUT,
    };
    let secrets = secrets_of(o);
    let resp = https
        .send(req)
        .await
        .map_err(|e: HttpError| OAuthError::Unreachable {
            url: o.token_url.clone(),
            reason: scrub(&e.to_string(), &secrets),
        })?;
    parse_answer(&o.token_url, resp.status, &resp.body, &secrets)
}

fn secrets_of(o: &OAuth) -> Vec<&str> {
    let mut s = vec![o.client_secret.expose()];
    if let OAuthGrant::RefreshToken { refresh_token, .. } = &o.grant {
        s.push(refresh_token.expose());
    }
    s
}

/// Removes every secret from `text`, drops control characters, and
/// bounds the length: text from the endpoint ends up in logs.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut t: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        t = t.replace(s, "<redacted>");
    }
    if t.chars().count() > 200 {
        t = t.chars().take(200).collect::<String>() + "…";
    }
    t
}

/// The token endpoint's answer (RFC 6749 §5.1 and §5.2).
pub fn parse_answer(
    url: &str,
    status: u16,
    body: &[u8],
    secrets: &[&str],
) -> Result<Fetched, OAuthError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        let field = |k: &str| {
            json.as_ref()
                .and_then(|j| j.get(k))
                .and_then(|v| v.as_str())
                .map(|s| scrub(s, secrets))
        };
        let codes: Vec<String> = json
            .as_ref()
            .and_then(|j| j.get("error_codes"))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_u64())
                    .map(|c| format!("AADSTS{c}"))
                    .collect()
            })
            .unwrap_or_default();
        let description = field("error_description").unwrap_or_default();
        return Err(OAuthError::Refused {
            url: url.to_owned(),
            status,
            error: field("error").unwrap_or_else(|| format!("HTTP {status}")),
            codes,
            description: if description.is_empty() {
                String::new()
            } else {
                format!(": {description}")
            },
        });
    }
    let bad = |reason: &str| OAuthError::BadAnswer {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let json = json.ok_or_else(|| bad("not JSON"))?;
    let token = json
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty() && !t.chars().any(|c| c.is_control() || c == ' '))
        .ok_or_else(|| bad("no access_token"))?;
    if let Some(t) = json.get("token_type").and_then(|v| v.as_str())
        && !t.eq_ignore_ascii_case("bearer")
    {
        return Err(bad("token_type is not Bearer"));
    }
    let lifetime = match json.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(Duration::from_secs),
        Some(serde_json::Value::String(s)) => s.parse().ok().map(Duration::from_secs),
        _ => None,
    }
    .unwrap_or(DEFAULT_LIFETIME);
    Ok(Fetched {
        token: Secret::new(token),
        lifetime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fetched(n: u32, secs: u64) -> Fetched {
        Fetched {
            token: Secret::new(format!("tok{n}")),
            lifetime: Duration::from_secs(secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cached_refreshed_before_expiry_and_single_flight() {
        let tokens = Arc::new(Tokens::default());
        let calls = Arc::new(AtomicU32::new(0));
        let get = |tokens: Arc<Tokens>, calls: Arc<AtomicU32>| async move {
            tokens
                .get_with("s", 1, None, || async {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(fetched(n, 3600))
                })
                .await
                .unwrap()
        };
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            set.spawn(get(tokens.clone(), calls.clone()));
        }
        while let Some(t) = set.join_next().await {
            assert_eq!(t.unwrap().expose(), "tok0");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Lifetime 3600 s: refreshed 300 s early, not before.
        tokio::time::advance(Duration::from_secs(3299)).await;
        assert_eq!(get(tokens.clone(), calls.clone()).await.expose(), "tok0");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(get(tokens.clone(), calls.clone()).await.expose(), "tok1");
        assert_eq!(tokens.fetches("s"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_refresh_once_for_a_stale_token() {
        let tokens = Tokens::default();
        let first = tokens
            .get_with("s", 1, None, || async { Ok(fetched(0, 3600)) })
            .await
            .unwrap();
        let second = tokens
            .get_with("s", 1, Some(&first), || async { Ok(fetched(1, 3600)) })
            .await
            .unwrap();
        assert_eq!(second.expose(), "tok1");
        // Another delivery with the same stale token gets the new one.
        let third = tokens
            .get_with("s", 1, Some(&first), || async { Ok(fetched(2, 3600)) })
            .await
            .unwrap();
        assert_eq!(third.expose(), "tok1");
        // Changed settings: a new slot.
        let other = tokens
            .get_with("s", 2, None, || async { Ok(fetched(3, 3600)) })
            .await
            .unwrap();
        assert_eq!(other.expose(), "tok3");
        assert_eq!(tokens.fetches("s"), 3);
    }

    #[test]
    fn answers() {
        let ok = parse_answer(
            "u",
            200,
            br#"{"token_type":"Bearer","expires_in":3599,"access_token":"abc"}"#,
            &[],
        )
        .unwrap();
        assert_eq!((ok.token.expose(), ok.lifetime.as_secs()), ("abc", 3599));
        let e = parse_answer(
            "https://login.example/t/oauth2/v2.0/token",
            401,
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided: s3cr3t.","error_codes":[7000215]}"#,
            &["s3cr3t"],
        )
        .unwrap_err();
        let OAuthError::Refused { codes, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(codes, &["AADSTS7000215"]);
        let e = e.to_string();
        assert!(e.contains("invalid_client [AADSTS7000215]"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(parse_answer("u", 200, b"{}", &[]).is_err());
        assert!(
            parse_answer("u", 200, br#"{"access_token":"a","token_type":"mac"}"#, &[]).is_err()
        );
        let e = parse_answer("u", 500, b"<html>", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("HTTP 500"), "{e}");
    }
}
