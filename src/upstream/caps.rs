//! What an upstream's EHLO reply means for a message (pure): the keywords
//! for reports, whether the message may be sent at all (RFC 6531
//! SMTPUTF8, RFC 6152 8BITMIME, RFC 1870 SIZE), and the MAIL FROM
//! parameters to declare.

use super::Outgoing;
use super::classify::UpstreamError;
use crate::outcome::Capability;
use smtp_proto::response::generate::BitToString;
use smtp_proto::{EXT_8BIT_MIME, EXT_SIZE, EXT_SMTP_UTF8, EhloResponse};

/// The EHLO capabilities as keywords, e.g. `SIZE 10240000`, `AUTH PLAIN LOGIN`.
pub fn capability_names(caps: &EhloResponse<String>) -> Vec<String> {
    use smtp_proto::*;
    const NAMES: &[(u32, &str)] = &[
        (EXT_PIPELINING, "PIPELINING"),
        (EXT_SIZE, "SIZE"),
        (EXT_VRFY, "VRFY"),
        (EXT_ETRN, "ETRN"),
        (EXT_EXPN, "EXPN"),
        (EXT_HELP, "HELP"),
        (EXT_START_TLS, "STARTTLS"),
        (EXT_AUTH, "AUTH"),
        (EXT_ENHANCED_STATUS_CODES, "ENHANCEDSTATUSCODES"),
        (EXT_8BIT_MIME, "8BITMIME"),
        (EXT_BINARY_MIME, "BINARYMIME"),
        (EXT_CHUNKING, "CHUNKING"),
        (EXT_DSN, "DSN"),
        (EXT_SMTP_UTF8, "SMTPUTF8"),
        (EXT_REQUIRE_TLS, "REQUIRETLS"),
        (EXT_DELIVER_BY, "DELIVERBY"),
        (EXT_MT_PRIORITY, "MT-PRIORITY"),
        (EXT_FUTURE_RELEASE, "FUTURERELEASE"),
        (EXT_NO_SOLICITING, "NO-SOLICITING"),
        (EXT_MTRK, "MTRK"),
        (EXT_RRVS, "RRVS"),
        (EXT_ATRN, "ATRN"),
        (EXT_BURL, "BURL"),
        (EXT_CHECKPOINT, "CHECKPOINT"),
        (EXT_CONNEG, "CONNEG"),
        (EXT_CONPERM, "CONPERM"),
        (EXT_ONEX, "ONEX"),
        (EXT_VERB, "VERB"),
    ];
    let mut out = Vec::new();
    for &(bit, name) in NAMES {
        if !caps.has_capability(bit) {
            continue;
        }
        out.push(match bit {
            EXT_SIZE if caps.size > 0 => format!("SIZE {}", caps.size),
            EXT_AUTH => {
                let mechs: Vec<&str> = (0..64)
                    .map(|i| 1u64 << i)
                    .filter(|m| caps.auth_mechanisms & m != 0)
                    .map(|m| m.to_mechanism())
                    .rev()
                    .collect();
                format!("AUTH {}", mechs.join(" ")).trim_end().to_owned()
            }
            _ => name.to_owned(),
        });
    }
    out
}

/// Checks what the message needs against what the server offers (RFC 6531
/// SMTPUTF8, RFC 6152 8BITMIME, RFC 1870 SIZE).
pub fn check_capabilities(
    caps: &EhloResponse<String>,
    msg: &Outgoing<'_>,
) -> Result<(), UpstreamError> {
    if msg.smtputf8 && !caps.has_capability(EXT_SMTP_UTF8) {
        return Err(UpstreamError::Capability(
            Capability::Smtputf8,
            "the message needs SMTPUTF8, which the server does not offer".into(),
        ));
    }
    if msg.body_8bit && !caps.has_capability(EXT_8BIT_MIME) {
        return Err(UpstreamError::Capability(
            Capability::EightBitMime,
            "the message has 8-bit content and the server does not offer 8BITMIME".into(),
        ));
    }
    let size = msg.size();
    if caps.has_capability(EXT_SIZE) && caps.size > 0 && size > caps.size as u64 {
        return Err(UpstreamError::Capability(
            Capability::Size,
            format!(
                "the message ({size} bytes) exceeds the server's SIZE limit ({} bytes)",
                caps.size
            ),
        ));
    }
    Ok(())
}

/// The MAIL FROM parameters for this message on this server.
pub fn mail_params(caps: &EhloResponse<String>, msg: &Outgoing<'_>) -> String {
    let mut p = String::new();
    if caps.has_capability(EXT_SIZE) {
        p.push_str(&format!(" SIZE={}", msg.size()));
    }
    if msg.body_8bit && caps.has_capability(EXT_8BIT_MIME) {
        p.push_str(" BODY=8BITMIME");
    }
    if msg.smtputf8 {
        p.push_str(" SMTPUTF8");
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn caps(bits: u32) -> EhloResponse<String> {
        let mut c = EhloResponse::new("x".to_owned());
        c.capabilities = bits;
        c
    }

    #[test]
    fn capability_keywords() {
        let mut c = caps(EXT_SIZE | smtp_proto::EXT_AUTH | EXT_8BIT_MIME);
        c.size = 1000;
        c.auth_mechanisms = smtp_proto::AUTH_PLAIN | smtp_proto::AUTH_LOGIN;
        assert_eq!(
            capability_names(&c),
            ["SIZE 1000", "AUTH PLAIN LOGIN", "8BITMIME"]
        );
    }

    fn outgoing<'a>(message: &'a Message, smtputf8: bool, body_8bit: bool) -> Outgoing<'a> {
        Outgoing {
            mail_from: "a@x.example",
            rcpt_to: &[],
            header: b"X: y\r\n",
            message,
            body_offset: 0,
            smtputf8,
            body_8bit,
            partial: false,
            keep: true,
        }
    }

    #[test]
    fn needs_and_params() {
        let m = Message::in_memory(b"\r\nbody\r\n".to_vec());
        let mut all = caps(EXT_SIZE | EXT_8BIT_MIME | EXT_SMTP_UTF8);
        all.size = 100;
        let full = outgoing(&m, true, true);
        assert_eq!(full.size(), 14);
        assert!(check_capabilities(&all, &full).is_ok());
        assert_eq!(mail_params(&all, &full), " SIZE=14 BODY=8BITMIME SMTPUTF8");
        assert_eq!(mail_params(&caps(0), &outgoing(&m, false, false)), "");
        assert!(check_capabilities(&caps(EXT_8BIT_MIME), &full).is_err());
        assert!(check_capabilities(&caps(EXT_SMTP_UTF8), &full).is_err());
        all.size = 10;
        assert!(check_capabilities(&all, &full).is_err());
        // SIZE without a number sets no limit.
        all.size = 0;
        assert!(check_capabilities(&all, &full).is_ok());
    }
}
