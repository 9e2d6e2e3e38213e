//! The relay keeps serving while other clients send garbage, stall, or
//! disconnect in the middle of DATA; none of that leaves a message behind.

mod common;

use common::relay::{Raw, TestRelay, simple_config};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn bad_clients_do_not_disturb_good_ones() {
    let relay = TestRelay::start(&simple_config(""));
    let addr = relay.addr("main");

    // A staller: connects and says nothing.
    let _staller = TcpStream::connect(addr).unwrap();
    // A client that stops half way through DATA and disconnects.
    let mut quitter = Raw::connect(addr);
    quitter.begin("gone@legacy.test", &["rcpt@example.com"]);
    quitter.send(b"Subject: never finished\r\n\r\nhalf a mess");
    drop(quitter);
    // A garbage sender, in a thread, for the whole test.
    let garbage = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let chunk: Vec<u8> = (0..512)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });

    for i in 0..5 {
        let mut c = Raw::connect(addr);
        c.begin("app@legacy.test", &["rcpt@example.com"]);
        c.send(format!("Subject: good {i}\r\n\r\nbody\r\n.\r\n").as_bytes());
        assert!(c.reply().starts_with("250 "));
        c.expect("QUIT", 221);
    }
    garbage.join().unwrap();
    let msgs = relay.wait_captured(5, Duration::from_secs(5));
    assert!(
        msgs.iter()
            .all(|m| m.json["original_mail_from"] == "app@legacy.test")
    );
}
