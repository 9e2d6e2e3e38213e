//! The envelope of a received message: what the session learned of the
//! client and the transaction, handed to the delivery engine and stored
//! with a queued message. A leaf module (it needs only policy's types), so
//! session, delivery and queue share it without importing each other.

use crate::policy::{IdentifiedBy, RecipientPlan};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The envelope of a received message and what we know of its client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// MAIL FROM as sent (empty: null sender).
    pub mail_from: String,
    /// Every accepted recipient with its policy verdict.
    pub recipients: Vec<RecipientPlan>,
    /// The application.
    pub application: String,
    /// How it was identified.
    pub identified_by: IdentifiedBy,
    /// The client asked for SMTPUTF8 (or used non-ASCII addresses).
    pub smtputf8: bool,
    /// The client declared BODY=8BITMIME.
    pub body_8bit: bool,
    /// EHLO/HELO name.
    pub helo: String,
    /// AUTH user, if authenticated.
    pub auth_user: Option<String>,
    /// Negotiated TLS, if any.
    pub tls: Option<TlsInfo>,
    /// Client address.
    pub peer: SocketAddr,
}

/// A negotiated TLS session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}
