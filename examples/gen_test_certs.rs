//! Generate the test-only TLS material used by the integration tests.
//!
//! Usage: `cargo run --example gen_test_certs -- certs/`
//!
//! Writes into the given directory:
//! - `ca.crt` / `ca.key`: a self-signed test CA ("smarthost test CA"),
//! - `localhost.crt` / `localhost.key`: a server certificate signed by that CA
//!   with SANs `DNS:localhost`, `IP:127.0.0.1` and `IP:::1`,
//! - `README.md` explaining that these files are for tests only.
//!
//! Keys are ECDSA P-256, written as PKCS#8 PEM. Certificates are valid from
//! 1 January of the current year for 20 years.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// How long the generated certificates stay valid, in years.
const VALIDITY_YEARS: i32 = 20;

const README: &str = "# Test certificates — DO NOT USE IN PRODUCTION

These files are **test-only** TLS material for smarthost's integration tests.
The private keys are committed to the repository on purpose and are therefore
public: never trust `ca.crt` outside of tests and never deploy these keys.

| file | what |
| --- | --- |
| `ca.crt`, `ca.key` | self-signed test CA, CN \"smarthost test CA\" |
| `localhost.crt`, `localhost.key` | server cert signed by the test CA; SANs `DNS:localhost`, `IP:127.0.0.1`, `IP:::1`; EKU serverAuth |

Keys are ECDSA P-256 in PKCS#8 PEM. Both certificates are valid for about 20 years
from 1 January of the year they were generated.

## Regenerate

```sh
cargo run --example gen_test_certs -- certs/
```
";

/// Current calendar year (UTC), derived from the system clock.
fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_secs();
    let days = i64::try_from(secs / 86_400).expect("time out of range");
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if m <= 2 { y + 1 } else { y };
    i32::try_from(year).expect("year out of range")
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<(), Box<dyn std::error::Error>> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: gen_test_certs OUTPUT_DIR")?;
    std::fs::create_dir_all(&dir)?;

    let year = current_year();
    let not_before = date_time_ymd(year, 1, 1);
    let not_after = date_time_ymd(year + VALIDITY_YEARS, 1, 1);

    // Test CA.
    let mut ca_params = CertificateParams::default();
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, "smarthost test CA");
    ca_dn.push(DnType::OrganizationName, "smarthost tests");
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    // Server leaf for localhost.
    let mut leaf_params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    let mut leaf_dn = DistinguishedName::new();
    leaf_dn.push(DnType::CommonName, "localhost");
    leaf_dn.push(DnType::OrganizationName, "smarthost tests");
    leaf_params.distinguished_name = leaf_dn;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = not_before;
    leaf_params.not_after = not_after;
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

    write(&dir, "ca.crt", &ca.pem())?;
    write(&dir, "ca.key", &ca_key_pem)?;
    write(&dir, "localhost.crt", &leaf.pem())?;
    write(&dir, "localhost.key", &leaf_key.serialize_pem())?;
    write(&dir, "README.md", README)?;
    Ok(())
}
