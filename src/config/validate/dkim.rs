//! `[[dkim]]`: signing keys. Checked: the domain and selector are valid
//! names, the owner tenant exists (and is defined by the key's file when
//! it is an included one), one key per domain and owner; the key is loaded.

use super::Ctx;
use crate::config::Config;
use crate::config::load::Located;
use crate::config::raw::RawDkim;

/// Every key, loaded, into `cfg.dkim`.
pub(super) fn keys(cx: &mut Ctx<'_, '_>, cfg: &mut Config, keys: &[Located<RawDkim>]) {
    for l in keys {
        let d = &l.value;
        let p = &l.path;
        let domain = d.domain.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if domain.len() > 253 || !domain.contains('.') || !domain.split('.').all(label_ok) {
            cx.err(
                l.file,
                &p.clone().key("domain"),
                format!("{:?} is not a domain name (write internationalised domains in their xn-- form)", d.domain),
            );
            continue;
        }
        if !d.selector.split('.').all(label_ok) {
            cx.err(
                l.file,
                &p.clone().key("selector"),
                format!(
                    "{:?} is not a valid selector (letters, digits, '-', '_', dots)",
                    d.selector
                ),
            );
            continue;
        }
        if let Some(t) = &d.tenant
            && !cfg.tenants.contains_key(t)
        {
            cx.err(
                l.file,
                &p.clone().key("tenant"),
                format!("DKIM key {domain} names tenant {t:?}, which is not defined"),
            );
            continue;
        }
        if l.file > 0
            && !d
                .tenant
                .as_deref()
                .is_some_and(|t| cx.defined_in_file(l.file, t))
        {
            cx.err(
                l.file,
                &p.clone().key("tenant"),
                "a DKIM key in an included file must name a tenant that file defines",
            );
            continue;
        }
        if let Some(other) = cfg
            .dkim
            .iter()
            .find(|k| k.domain == domain && k.tenant == d.tenant)
        {
            cx.err(
                l.file,
                &p.clone().key("domain"),
                format!("a second key for {domain} (selector {:?} is already defined for it); only one key per domain signs", other.selector),
            );
            continue;
        }
        let Some(pem) = cx.secret_with(l.file, &p.clone().key("private_key"), &d.private_key, true)
        else {
            continue;
        };
        match crate::dkim::DkimKey::from_pem(&domain, &d.selector, d.tenant.clone(), pem.expose()) {
            Ok(k) => cfg.dkim.push(k),
            Err(m) => cx.err(l.file, &p.clone().key("private_key"), m),
        }
    }
}
