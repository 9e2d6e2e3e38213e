#!/usr/bin/env bash
# The whole test suite, as README.md and .ci/run call it. Installs the
# third-party peers the integration tests talk to (swaks, Postfix with
# smtp-sink, Cyrus SASL tools) when they are missing, then runs the format
# check, clippy, the provider check and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v swaks >/dev/null || need+=(swaks)
[ -x /usr/sbin/postfix ] && [ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v saslpasswd2 >/dev/null || need+=(sasl2-bin)
[ -e /usr/lib/x86_64-linux-gnu/sasl2/libplain.so ] || ls /usr/lib/*/sasl2/libplain.so >/dev/null 2>&1 || need+=(libsasl2-modules)
command -v python3 >/dev/null || need+=(python3)
# aiosmtpd is the XOAUTH2 peer (tests/xoauth2.rs); Debian's python3 imports it.
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need+=(python3-aiosmtpd)
# promtool checks the /metrics output (tests/metrics.rs).
command -v promtool >/dev/null || need+=(prometheus)
# Headless Chromium loads the status page (tests/status_page.rs).
command -v chromium >/dev/null || need+=(chromium)
# HAProxy sends PROXY protocol v2 in front of the relay (tests/proxy_protocol.rs).
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# dkimpy verifies our DKIM signatures (tests/dkim.rs); PyNaCl for Ed25519.
# Debian's packages go to the system Python, which tests/dkim.rs runs.
/usr/bin/python3 -c 'import dkim' 2>/dev/null || need+=(python3-dkim)
/usr/bin/python3 -c 'import nacl' 2>/dev/null || need+=(python3-nacl)
# redis-server backs the shared send limits (tests/send_limits.rs).
command -v redis-server >/dev/null || need+=(redis-server)
# swaks needs Net::SSLeay for --tls (only a Recommends of swaks).
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl)
# systemd-nspawn boots a real systemd around the shipped unit (tests/systemd_unit.rs).
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Postfix asks how to configure the system instance; the tests never use it.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Only the ring provider may be compiled in: with aws-lc-rs as well, rustls
# panics at run time when it has to pick a default provider.
if cargo tree --locked -i aws-lc-rs >/dev/null 2>&1; then
  echo "aws-lc-rs is in the dependency tree; only ring is allowed" >&2
  cargo tree --locked -i aws-lc-rs >&2
  exit 1
fi
cargo test --locked --all-targets
# The fuzz targets must keep building (running them: see fuzz/README.md).
cargo check --locked --manifest-path fuzz/Cargo.toml --bins
