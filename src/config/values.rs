//! Typed config values parsed at the edge: sizes, durations, send limits,
//! e-mail addresses, CIDRs, header text, secrets and blacklist entries.
//!
//! Every type here parses from the string form an administrator writes
//! (`"25MB"`, `"30s"`, `"100/day"`, `"10.0.0.0/8"`) and refuses anything it
//! cannot represent exactly, with a message that says what was expected.
//! Nothing here does I/O except [`SecretSource::resolve`].

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Implements `Deserialize` for a type through its `FromStr`, so the parse
/// error text reaches the config error report unchanged.
macro_rules! deserialize_from_str {
    ($ty:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$ty, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// A byte size such as `"25MB"`, `"512KiB"` or a plain integer of bytes.
///
/// Units are binary (`KB` = `KiB` = 1024 bytes, `MB` = 1024², `GB` = 1024³),
/// as in Postfix and most MTAs' documentation of message size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid size {s:?}: expected e.g. \"25MB\", \"512KB\" or bytes")
        })?;
        let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {s:?}: use B, KB, MB or GB"
                ));
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"25MB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `#[serde(deserialize_with = ...)]` helpers for keys written as a
/// [`Dur`] or a [`Size`] whose value the rest of the code reads as a plain
/// [`Duration`] or byte count: the parse (and its error text) stays the
/// newtype's.
pub mod plain {
    use super::{Dur, Size};
    use serde::{Deserialize, Deserializer};
    use std::net::SocketAddr;
    use std::time::Duration;

    /// A duration such as `"30s"`, held as a [`Duration`].
    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Dur::deserialize(d).map(Dur::get)
    }

    /// A size such as `"25MB"` or a number of bytes, held as bytes.
    pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Size::deserialize(d).map(Size::bytes)
    }

    /// Header text (no CR, LF or other control characters), held as a `String`.
    pub fn header_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        super::HeaderText::deserialize(d).map(|h| h.as_str().to_owned())
    }

    /// An address to bind, `IP:port` or `localhost:port`.
    pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_socket_addr(&s).map_err(serde::de::Error::custom)
    }
}

/// An address to bind: `IP:port` (`"127.0.0.1:2525"`, `"[::]:587"`) or
/// `localhost:port` (IPv4 loopback).
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse().map_err(|_| {
        format!(
            "invalid address {s:?}: expected IP:port such as \"127.0.0.1:2525\" or \"[::]:587\""
        )
    })
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

/// A duration such as `"30s"`, `"5m"`, `"1h30m"`, `"250ms"` or `"2d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid duration {s:?}: expected e.g. \"30s\", \"5m\", \"1h30m\"");
        let t = s.trim();
        if t.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                "d" => Duration::from_secs(n.saturating_mul(86_400)),
                _ => return Err(bad()),
            };
            total = total.saturating_add(part);
        }
        // Far beyond any useful timeout, and small enough that adding it to
        // a clock reading can never overflow.
        if total > Duration::from_secs(366 * 86_400) {
            return Err(format!("duration {s:?} is longer than a year"));
        }
        Ok(Dur(total))
    }
}
deserialize_from_str!(Dur, "a duration such as \"30s\" or \"5m\"");

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let s = self.0.as_secs();
        if s != 0 && s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s != 0 && s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

/// The window of a send limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// A sliding hour.
    Hour,
    /// A sliding day (24 hours).
    Day,
    /// A sliding week (7 days).
    Week,
}

impl Window {
    /// Length of the window.
    pub fn duration(self) -> Duration {
        match self {
            Window::Hour => Duration::from_secs(3600),
            Window::Day => Duration::from_secs(86_400),
            Window::Week => Duration::from_secs(7 * 86_400),
        }
    }
}

/// A send limit: at most `count` messages (or recipients) per sliding window,
/// written `"10000/day"`, `"500/hour"` or `"50000/week"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// How many units the window allows.
    pub count: u64,
    /// The sliding window.
    pub window: Window,
}

impl FromStr for Limit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid limit {s:?}: expected \"N/hour\", \"N/day\" or \"N/week\"");
        let (n, w) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("invalid limit {s:?}: the count must be at least 1"));
        }
        let window = match w.trim().to_ascii_lowercase().as_str() {
            "h" | "hour" => Window::Hour,
            "d" | "day" => Window::Day,
            "w" | "week" => Window::Week,
            _ => return Err(bad()),
        };
        Ok(Limit { count, window })
    }
}
deserialize_from_str!(Limit, "a limit such as \"10000/day\"");

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = match self.window {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
        };
        write!(f, "{}/{w}", self.count)
    }
}

/// Refuses characters that would let a value break out of a header line or
/// an SMTP command: CR, LF, NUL and every other control character.
pub fn check_header_text(s: &str) -> Result<(), String> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character {:?}; header values may not hold CR, LF, NUL or other control characters",
            c
        ));
    }
    Ok(())
}

/// Text that is safe to put into a header field (display names, subject
/// prefixes, host names): no control characters at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HeaderText(String);

impl HeaderText {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HeaderText {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        check_header_text(s)?;
        Ok(HeaderText(s.to_owned()))
    }
}
deserialize_from_str!(HeaderText, "text without control characters");

impl fmt::Display for HeaderText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address `local@domain`, syntax-checked.
///
/// The local part is a dot-atom or a quoted string (RFC 5321 §4.1.2) and may
/// hold UTF-8 (RFC 6531). The domain is a host name (UTF-8 labels allowed)
/// or an address literal. CR, LF, NUL, other controls and `<` `>` outside a
/// quoted string are refused, so an address can never inject a command or a
/// header line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// The address as written (local part as given, domain as given).
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The domain part.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
    /// Whether the address needs SMTPUTF8 to be carried.
    pub fn is_ascii(&self) -> bool {
        self.0.is_ascii()
    }
    /// The canonical form used for comparisons: lowercased as a whole.
    pub fn normalized(&self) -> String {
        normalize_address(&self.0)
    }
}

/// Normalises an address for comparison (blacklists, allow lists, "is
/// this the same sender" checks): lowercase, and the domain in its IDNA
/// ASCII form (UTS #46 mapping), so fullwidth letters, `。` for the dot
/// and U-labels compare equal to the plain ASCII domain; no trailing dot.
/// A domain IDNA refuses (e.g. an address literal) is only lowercased.
pub fn normalize_address(a: &str) -> String {
    let a = a.trim().trim_start_matches('<').trim_end_matches('>');
    let mut s = a.to_lowercase();
    if let Some(at) = s.rfind('@') {
        let domain = &s[at + 1..];
        if (!domain.is_ascii() || domain.contains("xn--"))
            && let Ok(ascii) = idna::domain_to_ascii(domain)
        {
            s.replace_range(at + 1.., &ascii);
        }
    }
    if s.ends_with('.') {
        s.pop();
    }
    s
}

fn valid_atom_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_local_part(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("the local part (before @) is empty".into());
    }
    if local.len() > 64 && local.is_ascii() {
        return Err("the local part is longer than 64 characters".into());
    }
    if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        let mut esc = false;
        for c in inner.chars() {
            if c.is_control() {
                return Err("control characters are not allowed".into());
            }
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                return Err("unescaped quote inside a quoted local part".into());
            }
        }
        if esc {
            return Err("quoted local part ends in a backslash".into());
        }
        return Ok(());
    }
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err(
                "the local part has an empty dot-separated part (\"..\" or a leading/trailing dot)"
                    .into(),
            );
        }
        if let Some(c) = atom.chars().find(|c| !valid_atom_char(*c)) {
            return Err(format!(
                "the local part contains {c:?}; quote it or remove it"
            ));
        }
    }
    Ok(())
}

/// Letters, digits, hyphen, and any non-ASCII character (IDN labels).
fn valid_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && !c.is_control())
}

fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("the domain (after @) is empty".into());
    }
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip = lit.strip_prefix("IPv6:").unwrap_or(lit);
        return ip
            .parse::<IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("invalid address literal [{lit}]"));
    }
    if domain.len() > 255 {
        return Err("the domain is longer than 255 characters".into());
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err("the domain has an empty label".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("domain label {label:?} starts or ends with '-'"));
        }
        if let Some(c) = label.chars().find(|c| !valid_domain_char(*c)) {
            return Err(format!("the domain contains {c:?}"));
        }
    }
    Ok(())
}

impl FromStr for EmailAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(format!(
                "invalid address {s:?}: contains the control character {c:?}"
            ));
        }
        let (local, domain) = s
            .rsplit_once('@')
            .ok_or_else(|| format!("invalid address {s:?}: expected local@domain"))?;
        check_local_part(local).map_err(|e| format!("invalid address {s:?}: {e}"))?;
        check_domain(domain).map_err(|e| format!("invalid address {s:?}: {e}"))?;
        Ok(EmailAddress(s.to_owned()))
    }
}
deserialize_from_str!(
    EmailAddress,
    "an e-mail address such as \"info@example.com\""
);

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An entry of a blacklist: a full address or a whole domain (`@domain`).
/// Stored normalised (lowercase, no angle brackets, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub enum BlacklistEntry {
    /// One exact address.
    Address(String),
    /// Every address at this domain (exact domain, not its subdomains).
    Domain(String),
}

impl BlacklistEntry {
    /// Whether `normalized_rcpt` (see [`normalize_address`]) is covered.
    pub fn matches(&self, normalized_rcpt: &str) -> bool {
        match self {
            BlacklistEntry::Address(a) => a == normalized_rcpt,
            BlacklistEntry::Domain(d) => normalized_rcpt
                .rsplit_once('@')
                .is_some_and(|(_, rd)| rd == d),
        }
    }
}

impl From<BlacklistEntry> for String {
    fn from(e: BlacklistEntry) -> String {
        e.to_string()
    }
}

impl fmt::Display for BlacklistEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlacklistEntry::Address(a) => f.write_str(a),
            BlacklistEntry::Domain(d) => write!(f, "@{d}"),
        }
    }
}

impl FromStr for BlacklistEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let n = normalize_address(s);
        if let Some(d) = n.strip_prefix('@') {
            check_domain(d).map_err(|e| format!("invalid entry {s:?}: {e}"))?;
            Ok(BlacklistEntry::Domain(d.to_owned()))
        } else {
            let a: EmailAddress = n.parse()?;
            Ok(BlacklistEntry::Address(a.0))
        }
    }
}
deserialize_from_str!(BlacklistEntry, "an address or \"@domain\"");

/// An IP network in CIDR notation (`"10.1.0.0/16"`, `"::1/128"`); a bare
/// address means a single host. Host bits must be zero. The network math
/// is `ipnet`'s; this type adds the config's parsing messages, the
/// IPv4-mapped match and the private/loopback checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    net: ipnet::IpNet,
}

impl Cidr {
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.net.prefix_len()
    }
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.net.network()
    }
    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.1.2.3`, as a dual-stack socket reports them) match IPv4
    /// networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.net.contains(&ip)
    }
    /// Whether the network spans every address of its family.
    pub fn is_everything(&self) -> bool {
        self.prefix() == 0
    }
    /// Whether this network lies inside `other`.
    pub fn within(&self, other: &Cidr) -> bool {
        other.net.contains(&self.net)
    }

    /// Whether this network and `other` share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.within(other) || other.within(self)
    }

    /// Whether every address in the network is private: loopback, RFC 1918,
    /// shared (100.64/10), link-local, unique-local IPv6.
    pub fn is_private(&self) -> bool {
        const PRIVATE: [&str; 9] = [
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "::1/128",
            "fc00::/7",
            "fe80::/10",
        ];
        PRIVATE
            .iter()
            .any(|p| p.parse::<Cidr>().is_ok_and(|net| self.within(&net)))
    }

    /// The networks [`Cidr::is_private`] treats as not public.
    fn private_nets() -> Vec<ipnet::IpNet> {
        [
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "::1/128",
            "fc00::/7",
            "fe80::/10",
        ]
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect()
    }

    /// How many public addresses the union of `nets` covers, as
    /// (IPv4 addresses, IPv6 addresses): overlaps count once, private
    /// ranges not at all. The open-relay guard compares this with a /8
    /// (IPv6: /16), so many narrow entries cannot add up to the Internet.
    pub fn public_span(nets: &[Cidr]) -> (u128, u128) {
        let all: Vec<ipnet::IpNet> = nets
            .iter()
            .filter_map(|c| ipnet::IpNet::new(c.addr(), c.prefix()).ok())
            .map(|n| n.trunc())
            .collect();
        let private = Self::private_nets();
        let size = |n: &ipnet::IpNet| -> u128 {
            let host_bits = u32::from(n.max_prefix_len() - n.prefix_len());
            1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
        };
        let (mut v4, mut v6) = (0u128, 0u128);
        for n in ipnet::IpNet::aggregate(&all) {
            // Aggregated networks are disjoint, and two CIDR blocks either
            // nest or do not meet.
            let hidden: u128 = private
                .iter()
                .map(|p| {
                    if p.contains(&n) {
                        size(&n)
                    } else if n.contains(p) {
                        size(p)
                    } else {
                        0
                    }
                })
                .sum();
            let public = size(&n).saturating_sub(hidden);
            match n {
                ipnet::IpNet::V4(_) => v4 = v4.saturating_add(public),
                ipnet::IpNet::V6(_) => v6 = v6.saturating_add(public),
            }
        }
        (v4, v6)
    }

    /// Whether every address in the network is a loopback address.
    pub fn is_loopback(&self) -> bool {
        match self.addr() {
            IpAddr::V4(a) => a.is_loopback() && self.prefix() >= 8,
            IpAddr::V6(a) => a.is_loopback() && self.prefix() == 128,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid network {s:?}: {why}");
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match p {
            Some(p) => p
                .parse()
                .map_err(|_| bad("the prefix length is not a number"))?,
            None => max,
        };
        let net = ipnet::IpNet::new(addr, prefix)
            .map_err(|_| bad("the prefix length is too long for the address family"))?;
        if net.trunc() != net {
            return Err(bad("host bits are set; write the network address"));
        }
        Ok(Cidr { net })
    }
}
deserialize_from_str!(Cidr, "an IP network such as \"10.1.0.0/16\"");

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix())
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads a file referenced by the config, refusing anything over `max`
/// bytes, so a path such as `/dev/zero` cannot exhaust memory.
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    match read_limited_io(path, max) {
        Ok(Some(buf)) => Ok(buf),
        Ok(None) => Err(format!("{} is larger than {max} bytes", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// [`read_limited`] keeping the I/O error (the file watcher tells a missing
/// file from a failed read); `Ok(None)` when the file is larger than `max`.
pub fn read_limited_io(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= max).then_some(buf))
}

/// Where a secret comes from, as written in the config: a string, or
/// `{ env = "NAME" }`, or `{ file = "path" }` (relative to the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, { env = \"NAME\" } or { file = \"path\" }"
)]
pub enum SecretSource {
    /// The secret itself.
    Inline(String),
    /// Read from an environment variable at load time.
    Env {
        /// Name of the environment variable.
        env: String,
    },
    /// Read from a file at load time (one trailing newline is dropped).
    File {
        /// Path of the file.
        file: String,
    },
}

impl SecretSource {
    /// The file the secret is read from, if it is `{ file = ... }`.
    pub fn file_path(&self, base: &Path) -> Option<std::path::PathBuf> {
        match self {
            SecretSource::File { file } => Some(base.join(file)),
            _ => None,
        }
    }

    /// Reads the secret. This is the only I/O in this module; it happens
    /// while the config is loaded, never later.
    pub fn resolve(&self, base: &Path) -> Result<Secret, String> {
        let s = self.resolve_multiline(base)?;
        if s.value.contains(['\r', '\n']) {
            return Err("the secret contains CR, LF or NUL".into());
        }
        Ok(s)
    }

    /// Reads a secret that may span lines (a PEM private key).
    pub fn resolve_multiline(&self, base: &Path) -> Result<Secret, String> {
        let v = match self {
            SecretSource::Inline(s) => s.clone(),
            SecretSource::Env { env } => std::env::var(env)
                .map_err(|_| format!("environment variable {env} is not set (or not UTF-8)"))?,
            SecretSource::File { file } => {
                let p = base.join(file);
                let bytes = read_limited(&p, 64 * 1024)
                    .map_err(|e| format!("cannot read secret file: {e}"))?;
                let mut s = String::from_utf8(bytes)
                    .map_err(|_| format!("secret file {} is not UTF-8", p.display()))?;
                if s.ends_with('\n') {
                    s.pop();
                    if s.ends_with('\r') {
                        s.pop();
                    }
                }
                s
            }
        };
        if v.is_empty() {
            return Err("the secret is empty".into());
        }
        if v.contains('\0') {
            return Err("the secret contains CR, LF or NUL".into());
        }
        Ok(Secret::new(v))
    }
}

/// A secret. Its `Debug` and `Display` print `<redacted>`, so a secret
/// cannot reach a log line or a config dump by accident.
///
/// As a config value it deserialises its [`SecretSource`] (a string,
/// `{ env }` or `{ file }`) and is read in place by [`Secret::resolve`],
/// which `validate` calls relative to the file that set it (with file,
/// line and key on failure); so a table holding a secret needs no
/// validated twin. A config with a secret that could not be read is
/// refused, so an unread secret never reaches the rest of the code.
#[derive(Clone, Default, Deserialize)]
#[serde(from = "SecretSource")]
pub struct Secret {
    value: String,
    /// Where it comes from, until it is read; `None` once read, when built
    /// from its value, or for the `Default` (empty: only a refused config,
    /// one missing a required secret, holds it).
    source: Option<SecretSource>,
}

impl From<SecretSource> for Secret {
    fn from(source: SecretSource) -> Self {
        Secret {
            value: String::new(),
            source: Some(source),
        }
    }
}

/// Hashed by value: the pool's fingerprint of a server's settings
/// (`upstream::pool::Key`) changes when its password does.
impl std::hash::Hash for Secret {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}

/// Secrets are equal when their values are (a reload compares them).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for Secret {}

impl Secret {
    /// Creates a secret from its value.
    pub fn new(v: impl Into<String>) -> Self {
        Secret {
            value: v.into(),
            source: None,
        }
    }
    /// The secret value; call only where it is sent to its peer.
    pub fn expose(&self) -> &str {
        &self.value
    }
    /// Reads the secret its source names, relative to `base` (the config
    /// file's directory); single-line unless `multiline`. Returns the file
    /// it read, if any (the watcher watches it). Nothing to do for a
    /// secret already read.
    pub fn resolve(
        &mut self,
        base: &Path,
        multiline: bool,
    ) -> (Option<std::path::PathBuf>, Result<(), String>) {
        let Some(source) = &self.source else {
            return (None, Ok(()));
        };
        let file = source.file_path(base);
        let read = if multiline {
            source.resolve_multiline(base)
        } else {
            source.resolve(base)
        };
        match read {
            Ok(s) => {
                *self = s;
                (file, Ok(()))
            }
            Err(m) => (file, Err(m)),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, v) in [
            ("25MB", 25 << 20),
            ("512KB", 512 << 10),
            ("1gb", 1 << 30),
            ("100", 100),
            ("7 MiB", 7 << 20),
        ] {
            assert_eq!(s.parse::<Size>().unwrap().0, v, "{s}");
        }
        for s in ["", "MB", "25XB", "-1MB", "99999999999999999999GB"] {
            assert!(s.parse::<Size>().is_err(), "{s}");
        }
    }

    #[test]
    fn durations() {
        for (s, v) in [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("2d", 172_800_000),
        ] {
            assert_eq!(s.parse::<Dur>().unwrap().0.as_millis(), v, "{s}");
        }
        for s in [
            "",
            "s",
            "30",
            "30x",
            "1.5h",
            "h30",
            "367d",
            "200000000000000d",
        ] {
            assert!(s.parse::<Dur>().is_err(), "{s}");
        }
        assert_eq!(Dur(Duration::from_secs(300)).to_string(), "5m");
    }

    #[test]
    fn limits() {
        let l: Limit = "10000/day".parse().unwrap();
        assert_eq!((l.count, l.window), (10000, Window::Day));
        assert_eq!("5/h".parse::<Limit>().unwrap().window, Window::Hour);
        assert_eq!("7/Week".parse::<Limit>().unwrap().window, Window::Week);
        for s in ["", "10", "10/month", "0/day", "x/day", "/day"] {
            assert!(s.parse::<Limit>().is_err(), "{s}");
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "a@b.example",
            "first.last+tag@sub.example.com",
            "jörg@bücher.example",
            "\"john doe\"@example.com",
            "user@[127.0.0.1]",
            "user@[IPv6:::1]",
        ] {
            assert!(ok.parse::<EmailAddress>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "nodomain",
            "@example.com",
            "a@",
            "a..b@example.com",
            ".a@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "a\r\n@example.com",
            "a@example.com\r\nRCPT TO:<x@y>",
            "a\0@example.com",
            "a<b@example.com",
            "a@-example.com",
            "a@example..com",
            "a@[999.1.1.1]",
        ] {
            assert!(bad.parse::<EmailAddress>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn blacklist_entries() {
        let d: BlacklistEntry = " @Competitor.Example. ".parse().unwrap();
        assert_eq!(d, BlacklistEntry::Domain("competitor.example".into()));
        assert!(d.matches("joe@competitor.example"));
        assert!(!d.matches("joe@sub.competitor.example"));
        let a: BlacklistEntry = "<Former@Example.COM>".parse().unwrap();
        assert_eq!(a, BlacklistEntry::Address("former@example.com".into()));
        let spans = |v: &[&str]| {
            Cidr::public_span(&v.iter().map(|s| s.parse().unwrap()).collect::<Vec<_>>())
        };
        assert_eq!(spans(&["10.0.0.0/8", "127.0.0.1"]), (0, 0));
        assert_eq!(spans(&["192.0.2.0/24", "192.0.2.0/25"]), (256, 0));
        // 223 public /8s, each allowed alone, together cover most of IPv4.
        let eights: Vec<String> = (1..=223u8)
            .filter(|i| ![10, 127].contains(i))
            .map(|i| format!("{i}.0.0.0/8"))
            .collect();
        let e: Vec<&str> = eights.iter().map(String::as_str).collect();
        // 172.16/12, 192.168/16, 100.64/10, 169.254/16 are not counted.
        let private = (1u128 << 20) + (1 << 16) + (1 << 22) + (1 << 16);
        assert_eq!(spans(&e).0, 221 * (1u128 << 24) - private);
        assert_eq!(spans(&["2001:db8::/32"]).1, 1u128 << 96);
        assert!(a.matches(&normalize_address("FORMER@example.com")));
        // Fullwidth letters and the ideographic full stop are the same
        // domain, in the list and in the recipient (issue 14 item 8).
        let d: BlacklistEntry = "@competitor.example".parse().unwrap();
        assert!(d.matches(&normalize_address("x@ｃｏｍｐｅｔｉｔｏｒ.example")));
        assert!(d.matches(&normalize_address("x@competitor。example")));
        assert!(d.matches(&normalize_address("x@COMPETITOR.example.")));
        let u: BlacklistEntry = "@ｃｏｍｐｅｔｉｔｏｒ。example".parse().unwrap();
        assert_eq!(u, d);
        let idn: BlacklistEntry = "@bücher.example".parse().unwrap();
        assert!(idn.matches(&normalize_address("a@xn--bcher-kva.example")));
        assert!(idn.matches(&normalize_address("a@BÜCHER.example")));
        assert!(!a.matches("other@example.com"));
        assert!("@".parse::<BlacklistEntry>().is_err());
        assert!("nobody".parse::<BlacklistEntry>().is_err());
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let h: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(h.prefix(), 32);
        assert!(h.contains("192.0.2.7".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.is_everything() && all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!("::1".parse::<Cidr>().unwrap().is_loopback());
        assert!("10.1.0.0/16".parse::<Cidr>().unwrap().is_private());
        assert!("fd00:1::/32".parse::<Cidr>().unwrap().is_private());
        assert!(!"0.0.0.0/1".parse::<Cidr>().unwrap().is_private());
        assert!(!"192.0.2.0/24".parse::<Cidr>().unwrap().is_private());
        assert!(c.overlaps(&"10.1.2.0/24".parse().unwrap()));
        assert!(!c.overlaps(&"10.2.0.0/16".parse().unwrap()));
        assert!("127.0.0.0/8".parse::<Cidr>().unwrap().is_loopback());
        for bad in ["10.1.0.1/16", "10.0.0.0/33", "x/8", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn header_text_refuses_controls() {
        assert!("ACME Webshop – Zürich".parse::<HeaderText>().is_ok());
        for bad in ["a\r\nBcc: x@y", "a\nb", "a\0", "a\tb", "a\x1b[31m"] {
            assert!(bad.parse::<HeaderText>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_redacted_and_resolved() {
        let dir = std::env::temp_dir();
        let s = SecretSource::Inline("hunter2".into())
            .resolve(&dir)
            .unwrap();
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
        let missing = SecretSource::Env {
            env: "SMARTHOST_TEST_SURELY_UNSET_VAR".into(),
        };
        assert!(
            missing
                .resolve(&dir)
                .unwrap_err()
                .contains("SMARTHOST_TEST_SURELY_UNSET_VAR")
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "from-file\n").unwrap();
        let fs = SecretSource::File {
            file: f.path().to_string_lossy().into_owned(),
        };
        assert_eq!(fs.resolve(&dir).unwrap().expose(), "from-file");
        assert!(SecretSource::Inline("a\r\nb".into()).resolve(&dir).is_err());
    }
}
