//! The status page in a real browser (headless Chromium, Debian package
//! `chromium`): the DOM shows every server; after an upstream is stopped
//! and a delivery fails over, that server shows as down with its last
//! error; the browser submits the page's own "send test mail" form with
//! the token and the message reaches the sink; a config value holding
//! `<script>` is shown escaped; a screenshot is written to
//! `target/test-artifacts/status_page.png`. The token never appears in
//! the relay's log or in any page.

mod common;

use common::admin::request;
use common::postfix::{SmtpSink, free_port};
use common::process::Proc;
use common::relay::Raw;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "SENTINEL-status-token-0a7c41";

fn config(admin: u16, primary: u16, backup: u16) -> String {
    format!(
        r#"
[system]
hostname = "relay.test"
default_sender = "relay@relay.test"

[admin]
address = "127.0.0.1:{admin}"
token = "{TOKEN}"

[health]
failures = 1
cooldown = "10m"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.primary]
host = "127.0.0.1"
port = {primary}
security = "none"
connect_timeout = "2s"

[server.backup]
host = "127.0.0.1"
port = {backup}
security = "none"
limit = "1000/day"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.shop]
sender = "shop@relay.test"

[tenant.demo]
sender = "demo@relay.test"
display_name = "<script>alert('x')</script> Demo"
test_mode = {{ redirect_to = "qa@relay.test", subject_prefix = "[TEST] " }}

[application.till]
tenant = "shop"
client_ips = ["127.0.0.1"]
primary = "primary"
fallback = "backup"
"#
    )
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium with `args` (bounded by `timeout(1)`); returns stdout.
fn chromium(args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("90")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium (Debian package `chromium`) is not installed");
    assert!(
        out.status.success(),
        "chromium failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dump_dom(url: &str) -> String {
    chromium(&["--dump-dom".to_owned(), url.to_owned()])
}

/// The `<tr>` of server `name` in a dumped DOM.
fn server_row<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("data-server=\"{name}\""))
        .unwrap_or_else(|| panic!("no row for server {name}:\n{dom}"));
    let end = dom[start..].find("</tr>").unwrap() + start;
    &dom[start..end]
}

#[test]
fn status_page_in_headless_chromium() {
    let primary = SmtpSink::start();
    let backup = SmtpSink::start();
    let admin_port = free_port();
    let relay = Proc::start(&config(admin_port, primary.port(), backup.port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let url = format!("http://{admin}/");

    // Every server, all up; the <script> display name escaped.
    let dom = dump_dom(&url);
    for s in ["primary", "backup", "outbox"] {
        assert!(
            server_row(&dom, s).contains("data-health=\"up\""),
            "{s}:\n{dom}"
        );
    }
    assert!(
        dom.contains("&lt;script&gt;alert('x')&lt;/script&gt; Demo"),
        "display name not shown escaped:\n{dom}"
    );
    assert!(
        !dom.contains("<script>alert"),
        "a config value became markup:\n{dom}"
    );
    assert!(
        dom.contains("class=\"banner test-mode\""),
        "no test-mode banner:\n{dom}"
    );
    assert!(dom.contains("id=\"queue\""), "{dom}");

    // Stop the primary; a delivery fails over from it to the backup.
    drop(primary);
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("till@pos.local", &["customer@example.com"]);
    c.send(b"Subject: after the primary died\r\n\r\nbody\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250 "), "{r}");
    c.cmd("QUIT");
    backup.wait_for_messages(1, Duration::from_secs(20));

    let dom = dump_dom(&url);
    let row = server_row(&dom, "primary");
    assert!(
        row.contains("data-health=\"down\""),
        "primary not shown down:\n{row}"
    );
    assert!(row.contains("class=\"health down\""), "{row}");
    assert!(
        row.to_ascii_lowercase().contains("refused"),
        "no last error for primary:\n{row}"
    );
    assert!(server_row(&dom, "backup").contains("data-health=\"up\""));
    // The backup's limit is enforced: one message used one unit.
    assert!(
        server_row(&dom, "backup").contains("999"),
        "limit budget missing or not counted:\n{}",
        server_row(&dom, "backup")
    );
    assert!(
        dom.contains("data-outcome=\"delivered\""),
        "no recent delivery:\n{dom}"
    );

    // The screenshot, as a test artifact.
    let shot = artifacts().join("status_page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1280,1400".to_owned(),
        url.clone(),
    ]);
    let png = std::fs::read(&shot).expect("no screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n"), "not a PNG");

    // The browser submits the page's own form, filled in with the token.
    let page = request(admin, "GET", "/", &[], None).body;
    let start = page
        .find("<form id=\"test-mail\"")
        .expect("no test-mail form");
    let end = page[start..].find("</form>").unwrap() + start + "</form>".len();
    let form = page[start..end].replace(
        "action=\"/test-mail\"",
        &format!("action=\"{url}test-mail\""),
    );
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("submit.html");
    std::fs::write(
        &local,
        format!(
            "<!DOCTYPE html><html><body>{form}<script>\n\
             const f = document.getElementById('test-mail');\n\
             f.server.value = 'backup';\n\
             f.to.value = 'ops@example.com';\n\
             f.token.value = '{TOKEN}';\n\
             f.requestSubmit();\n\
             </script></body></html>"
        ),
    )
    .unwrap();
    let result = chromium(&[
        "--virtual-time-budget=10000".to_owned(),
        "--dump-dom".to_owned(),
        format!("file://{}", local.display()),
    ]);
    assert!(
        result.contains("data-result=\"accepted\""),
        "the form did not deliver:\n{result}"
    );
    assert!(
        !result.contains(TOKEN),
        "the token is echoed in the result page"
    );
    let got = backup.wait_for_messages(2, Duration::from_secs(20));
    assert!(
        got.iter().any(|m| m.rcpt_to == ["ops@example.com"]
            && String::from_utf8_lossy(&m.data).contains("smarthost test message via backup")),
        "{got:#?}"
    );

    // A wrong token in the form is refused and sends nothing.
    let r = request(
        admin,
        "POST",
        "/test-mail",
        &[],
        Some((
            "application/x-www-form-urlencoded",
            "server=backup&to=ops%40example.com&from=&token=wrong",
        )),
    );
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Wrong admin token"));
    assert_eq!(backup.received().len(), 2);

    let log = relay.log().join("\n");
    assert!(!log.contains(TOKEN), "the token is in the relay's log");
    assert!(
        log.contains(r#"who="status page" what="test mail""#),
        "no audit line:\n{log}"
    );
}

/// GET / through the router in process (no socket: a non-loopback admin
/// address is only named, never bound); returns status and headers.
fn get_root(toml: &str, auth: Option<&str>) -> (u16, Vec<(String, String)>) {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = smarthost::config::load_str(toml, "smarthost.toml", dir.path()).unwrap();
    let relay = smarthost::server::Relay::new(cfg);
    let mut req = axum::http::Request::get("/");
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let req = req.body(axum::body::Body::empty()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resp = rt
        .block_on(smarthost::admin::router(relay).oneshot(req))
        .unwrap();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    (resp.status().as_u16(), headers)
}

#[test]
fn status_page_needs_the_token_off_loopback() {
    use base64::Engine;
    let port = 9925;
    let toml = config(port, 1, 2).replace(
        &format!("address = \"127.0.0.1:{port}\""),
        "address = \"0.0.0.0:9925\"",
    );
    let (status, headers) = get_root(&toml, None);
    assert_eq!(status, 401);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v.starts_with("Basic"))
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{TOKEN}"))
    );
    assert_eq!(get_root(&toml, Some(&basic)).0, 200);
    assert_eq!(get_root(&toml, Some(&format!("Bearer {TOKEN}"))).0, 200);
    assert_eq!(get_root(&toml, Some("Bearer nope")).0, 401);
    assert_eq!(get_root(&toml, Some("Basic YWRtaW46bm9wZQ==")).0, 401);
    // status_public opens it; without a token it is closed (403).
    let public = toml.replace("[admin]\n", "[admin]\nstatus_public = true\n");
    assert_eq!(get_root(&public, None).0, 200);
    let tokenless = toml.replace(&format!("token = \"{TOKEN}\"\n"), "");
    assert_eq!(get_root(&tokenless, None).0, 403);
    // On loopback it is open.
    assert_eq!(get_root(&config(port, 1, 2), None).0, 200);
}
