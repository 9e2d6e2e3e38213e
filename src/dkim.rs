//! DKIM signing (PRODUCT §3.2, RFC 6376, RFC 8463): the `[[dkim]]` keys,
//! loaded and checked with the config, and the one function delivery
//! calls per hop, after the rewrite, on the header block it will send.
//!
//! Signing uses mail-auth 0.13 on ring (RSA-SHA256 and Ed25519-SHA256,
//! relaxed/relaxed) through its streaming signer, so a message spooled to
//! disk is hashed piece by piece and never loaded whole. The key is chosen
//! by the hop's From domain: a key for exactly that domain, else the key
//! of the nearest parent domain; a key owned by a tenant signs only that
//! tenant's (and its locations') mail. From is oversigned (listed once
//! more than it occurs), so nobody can add a second From later.
//!
//! This module reads no files itself: key material comes in as PEM text
//! (a secret) from config validation.

use crate::message::Message;
use crate::policy::Plan;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::common::crypto::{
    Algorithm as MaAlgorithm, DkimKey as MaKey, Ed25519Key, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::fmt;

/// Header fields signed when present. Only From is also signed where it
/// is absent (oversigned, RFC 6376 §8.15: one entry more than it occurs),
/// so that a second From cannot be added; listing other absent fields
/// would break the signature when a server downstream adds a missing
/// Date or Message-ID, as some do.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "X-Original-To",
];

/// The algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSA, signed as rsa-sha256.
    Rsa,
    /// Ed25519, signed as ed25519-sha256 (RFC 8463).
    Ed25519,
}

/// Lends a shared key to a per-message `DkimSigner` (whose header list
/// depends on the message).
struct KeyRef<'a>(&'a MaKey);

impl SigningKey for KeyRef<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> MaAlgorithm {
        self.0.algorithm()
    }
}

/// One `[[dkim]]` key, ready to sign.
pub struct DkimKey {
    /// Signing domain (`d=`), lowercase.
    pub domain: String,
    /// Selector (`s=`).
    pub selector: String,
    /// Owner tenant; `None`: a system key, usable for every tenant.
    pub tenant: Option<String>,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The public key as published: SubjectPublicKeyInfo DER for RSA, the
    /// raw 32 bytes for Ed25519.
    public_key: Vec<u8>,
    key: MaKey,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("tenant", &self.tenant)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a message could not be signed (it is then sent unsigned, and the
/// failure is logged: a missing signature is better than no mail).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// mail-auth refused (no signable header, a crypto failure).
    #[error("DKIM signing failed: {0}")]
    Sign(String),
    /// The spooled part of the message could not be read.
    #[error("reading the message for DKIM: {0}")]
    Io(#[from] std::io::Error),
}

/// DER length octets.
fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Wraps a PKCS#1 RSAPublicKey into a SubjectPublicKeyInfo, the form DKIM
/// records usually carry (`openssl rsa -pubout`).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID rsaEncryption, NULL }
    const ALG: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bit_string);
    bit_string.push(0);
    bit_string.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(ALG.len() + bit_string.len(), &mut out);
    out.extend_from_slice(ALG);
    out.extend_from_slice(&bit_string);
    out
}

impl DkimKey {
    /// Loads a key from PEM text (PKCS#1 or PKCS#8 RSA, PKCS#8 Ed25519).
    /// The error is worded for `check-config`.
    pub fn from_pem(
        domain: &str,
        selector: &str,
        tenant: Option<String>,
        pem: &str,
    ) -> Result<DkimKey, String> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a PEM private key ({e})"))?;
        let domain = domain.to_ascii_lowercase();
        let (algorithm, public_key, key) = match der {
            PrivateKeyDer::Pkcs1(_) => {
                let k = RsaKey::<Sha256>::from_key_der(der)
                    .map_err(|e| format!("invalid RSA key: {e}"))?;
                (Algorithm::Rsa, rsa_spki(&k.public_key()), MaKey::Rsa(k))
            }
            PrivateKeyDer::Pkcs8(p8) => {
                let bytes = p8.secret_pkcs8_der().to_vec();
                match RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(bytes.clone().into())) {
                    Ok(k) => (Algorithm::Rsa, rsa_spki(&k.public_key()), MaKey::Rsa(k)),
                    Err(rsa_err) => {
                        let k =
                            Ed25519Key::from_pkcs8_maybe_unchecked_der(&bytes).map_err(|_| {
                                format!(
                                    "neither an RSA (2048-4096 bits) nor an Ed25519 key ({rsa_err})"
                                )
                            })?;
                        (Algorithm::Ed25519, k.public_key(), MaKey::Ed25519(k))
                    }
                }
            }
            _ => {
                return Err(
                    "unsupported key type: DKIM keys are RSA or Ed25519 (EC keys are not part of DKIM)"
                        .into(),
                );
            }
        };
        Ok(DkimKey {
            domain,
            selector: selector.to_owned(),
            tenant,
            algorithm,
            public_key,
            key,
        })
    }

    /// The DNS TXT record to publish: its name and its value.
    pub fn dns_record(&self) -> (String, String) {
        let k = match self.algorithm {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        };
        (
            format!("{}._domainkey.{}", self.selector, self.domain),
            format!("v=DKIM1; k={k}; p={}", B64.encode(&self.public_key)),
        )
    }

    /// Whether this key may sign mail of the tenant whose chain (the
    /// tenant and its parents) is `tenants`, with From domain `domain`;
    /// `Some(labels)` with the number of labels matched (more is nearer).
    fn fits(&self, tenants: &[String], domain: &str) -> Option<usize> {
        if let Some(owner) = &self.tenant
            && !tenants.iter().any(|t| t == owner)
        {
            return None;
        }
        let exact = domain == self.domain;
        let parent = domain
            .strip_suffix(&self.domain)
            .is_some_and(|rest| rest.ends_with('.'));
        (exact || parent).then(|| self.domain.split('.').count())
    }
}

/// The domain of the first address in the header block's From field
/// (unfolded, RFC 2047 names allowed), lowercased.
pub fn from_domain(header: &[u8]) -> Option<String> {
    let mut lines = header.split_inclusive(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case(b"From:"))
            .map(|_| &line[5..])
        else {
            continue;
        };
        let mut value = rest.to_vec();
        while let Some(next) = lines.peek() {
            if matches!(next.first(), Some(b' ' | b'\t')) {
                value.extend_from_slice(next);
                lines.next();
            } else {
                break;
            }
        }
        let parsed = mail_parser::parsers::MessageStream::new(&value).parse_address();
        let first = parsed.as_address()?.first()?.address.as_deref()?.to_owned();
        let domain = first.rsplit_once('@')?.1.trim().trim_end_matches('.');
        return Some(domain.to_ascii_lowercase());
    }
    None
}

/// The key that signs a message of the tenant chain `tenants` with this
/// From domain: exact domain first, else the nearest parent domain; for
/// the same domain a tenant's own key before a system key.
pub fn choose<'k>(keys: &'k [DkimKey], tenants: &[String], domain: &str) -> Option<&'k DkimKey> {
    keys.iter()
        .filter_map(|k| {
            k.fits(tenants, domain)
                .map(|n| ((n, k.tenant.is_some()), k))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, k)| k)
}

/// Signs one hop's message: `header` is the final header block (the
/// `Received:` on top, then the rewritten fields), and the rest is the
/// message from `body_offset` (the empty line and the body, as delivery
/// sends it). Returns the `DKIM-Signature:` field to put before `header`,
/// or `None` when no key fits the tenant chain and From domain.
pub async fn sign(
    keys: &[DkimKey],
    tenants: &[String],
    header: &[u8],
    msg: &Message,
    body_offset: usize,
) -> Result<Option<Vec<u8>>, SignError> {
    if keys.is_empty() {
        return Ok(None);
    }
    let Some(domain) = from_domain(header) else {
        return Ok(None);
    };
    let Some(key) = choose(keys, tenants, &domain) else {
        return Ok(None);
    };
    Ok(Some(stream(key, header, msg, body_offset).await?))
}

/// Delivery's one call per hop: `header` with a `DKIM-Signature:` put
/// on top when a key of `plan` fits (see [`sign`]). A signing failure is
/// logged and the message goes out unsigned.
pub async fn sign_hop(plan: &Plan, header: Vec<u8>, msg: &Message, body_offset: usize) -> Vec<u8> {
    match sign(
        &plan.config().dkim,
        &plan.tenant_chain,
        &header,
        msg,
        body_offset,
    )
    .await
    {
        Ok(Some(mut sig)) => {
            sig.extend_from_slice(&header);
            sig
        }
        Ok(None) => header,
        Err(e) => {
            tracing::warn!(error = %e, "message sent without a DKIM signature");
            header
        }
    }
}

/// The header fields to list in `h=`: those of [`SIGNED_HEADERS`] present
/// in `header`, and From once more (mail-auth lists every instance it
/// finds, then once each entry it found none for: the second "From").
fn signed_fields(header: &[u8]) -> Vec<&'static str> {
    let present = |name: &str| {
        header
            .split(|b| *b == b'\n')
            .filter(|l| !matches!(l.first(), Some(b' ' | b'\t')))
            .filter_map(|l| l.iter().position(|b| *b == b':').map(|i| &l[..i]))
            .any(|n| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    };
    let mut fields = vec!["From"];
    fields.extend(SIGNED_HEADERS.iter().copied().filter(|f| present(f)));
    fields
}

async fn stream(
    key: &DkimKey,
    header: &[u8],
    msg: &Message,
    body_offset: usize,
) -> Result<Vec<u8>, SignError> {
    let signer = DkimSigner::from_key(KeyRef(&key.key))
        .domain(key.domain.as_str())
        .selector(key.selector.as_str())
        .headers(signed_fields(header))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    let mut s = signer.sign_streaming();
    s.write(header);
    let mut chunks = msg.chunks(body_offset);
    while let Some(c) = chunks.next().await? {
        s.write(c);
    }
    let sig = s.finish().map_err(|e| SignError::Sign(e.to_string()))?;
    let mut out = sig.to_header().into_bytes();
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domain_reads_folded_and_encoded_fields() {
        let h = b"Received: from x\r\n\tby y\r\nSubject: s\r\nFrom: =?utf-8?B?SsO2cmc=?=\r\n <Jo@Sub.ACME.example>\r\nTo: a@b\r\n";
        assert_eq!(from_domain(h).as_deref(), Some("sub.acme.example"));
        assert_eq!(from_domain(b"To: a@b\r\n"), None);
        assert_eq!(
            from_domain(b"from: plain@x.example\r\n").as_deref(),
            Some("x.example")
        );
    }

    #[test]
    fn only_present_fields_are_signed_and_from_once_more() {
        let h = b"Received: from x\r\n\tby y; Date: no\r\nFrom: a@b.example\r\nsubject: s\r\nTo: c@d\r\n";
        assert_eq!(signed_fields(h), ["From", "From", "Subject", "To"]);
        assert_eq!(signed_fields(b"To: c@d\r\n"), ["From", "To"]);
    }

    fn key(domain: &str, selector: &str, tenant: Option<&str>) -> DkimKey {
        let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            B64.encode(der.as_ref())
        );
        DkimKey::from_pem(domain, selector, tenant.map(str::to_owned), &pem).unwrap()
    }

    #[test]
    fn the_nearest_domain_and_the_tenants_own_key_win() {
        let keys = [
            key("Acme.example", "sys", None),
            key("acme.example", "own", Some("acme")),
            key("mail.acme.example", "mail", None),
            key("other.example", "other", Some("other")),
        ];
        // Tenant chains by name, nearest first ("store" is a location of
        // "acme").
        let (acme, store, stranger) = ("acme", "store", "stranger");
        let pick = |chain: &[&str], d: &str| {
            let chain: Vec<String> = chain.iter().map(|t| t.to_string()).collect();
            choose(&keys, &chain, d).map(|k| k.selector.as_str())
        };
        assert_eq!(pick(&[acme], "acme.example"), Some("own"));
        assert_eq!(pick(&[store, acme], "shop.acme.example"), Some("own"));
        assert_eq!(pick(&[acme], "x.mail.acme.example"), Some("mail"));
        assert_eq!(pick(&[stranger], "acme.example"), Some("sys"));
        assert_eq!(pick(&[stranger], "other.example"), None);
        assert_eq!(pick(&[acme], "notacme.example"), None);
        assert_eq!(pick(&[acme], "example"), None);
        let (name, value) = keys[0].dns_record();
        assert_eq!(name, "sys._domainkey.acme.example");
        assert!(value.starts_with("v=DKIM1; k=ed25519; p="));
    }

    #[test]
    fn spki_wraps_the_pkcs1_key() {
        // A 270-byte PKCS#1 key (2048 bits) gets the usual 294-byte SPKI.
        let spki = rsa_spki(&[0u8; 270]);
        assert_eq!(spki.len(), 294);
        assert_eq!(&spki[..4], &[0x30, 0x82, 0x01, 0x22]);
    }
}
