//! Command and data timeouts end the session with `421 4.4.2`.

mod common;

use common::relay::{Raw, TestRelay, simple_config};
use std::time::{Duration, Instant};

#[test]
fn idle_client_gets_421_after_command_timeout() {
    let relay = TestRelay::start(&simple_config("[limits]\ncommand_timeout = \"1s\"\n"));
    let started = Instant::now();
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    assert_eq!(c.reply(), "421 4.4.2 Timeout, closing connection\r\n");
    assert!(c.closed());
    let t = started.elapsed();
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_secs(5),
        "{t:?}"
    );
}

#[test]
fn stalled_data_gets_421_after_data_timeout() {
    let relay = TestRelay::start(&simple_config(
        "[limits]\ncommand_timeout = \"30s\"\ndata_timeout = \"1s\"\n",
    ));
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(b"Subject: half\r\n\r\nstarted but never fin");
    let started = Instant::now();
    assert_eq!(c.reply(), "421 4.4.2 Timeout, closing connection\r\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(relay.captured().is_empty());
}
