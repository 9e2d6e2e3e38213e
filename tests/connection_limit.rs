//! `max_connections`: the next client gets `421 4.3.2` and is closed at
//! once; nothing queues; a freed slot is usable again.

mod common;

use common::relay::{Raw, TestRelay, simple_config};
use std::time::{Duration, Instant};

#[test]
fn over_the_limit_gets_421_and_close() {
    let relay = TestRelay::start(&simple_config("[limits]\nmax_connections = 2\n"));
    let addr = relay.addr("main");
    let mut a = Raw::connect(addr);
    let _b = Raw::connect(addr);
    let mut c = Raw::connect_no_greeting(addr);
    assert_eq!(
        c.reply(),
        "421 4.3.2 Too many connections, try again later\r\n"
    );
    assert!(c.closed());
    // The sessions in progress are not disturbed.
    a.expect("NOOP", 250);
    a.expect("QUIT", 221);
    drop(a);
    // The freed slot is available again (the release is asynchronous, so
    // allow it a moment, bounded).
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Raw::connect_no_greeting(addr);
        let g = d.reply();
        if g.starts_with("220 ") {
            d.expect("QUIT", 221);
            break;
        }
        assert!(Instant::now() < end, "slot never freed: {g}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
