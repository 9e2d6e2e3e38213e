//! The queue's commit log records (`smarthost::queue::wal`), as replay
//! reads them after a crash.
//!
//! Arbitrary bytes decode without a panic, and every record found
//! re-encodes to exactly the bytes it was read from (so decoding consumes
//! a prefix). Records built from the input decode back to themselves, and
//! after the encoding is cut short or one byte of it is changed, what is
//! decoded is a prefix of what was written: a torn or corrupted record
//! ends the segment, it is never read as a different one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::queue::wal::{KIND_DONE, KIND_MESSAGE, record, records};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let seq = u64::from(data[0]);
    let (cut, flip) = (u16::from_le_bytes([data[1], data[2]]) as usize, data[3]);
    let rest = &data[4..];

    // 1. Arbitrary bytes.
    let found = records(rest, seq);
    let mut again = Vec::new();
    for (kind, body) in &found {
        record(*kind, seq, body, &mut again);
    }
    assert!(rest.starts_with(&again), "decoded records are a prefix of the input");

    // 2. Records built from the input: bodies split at 0xff bytes.
    let want: Vec<(u8, &[u8])> = rest
        .split(|b| *b == 0xff)
        .enumerate()
        .map(|(i, body)| (if i % 2 == 0 { KIND_MESSAGE } else { KIND_DONE }, body))
        .collect();
    let mut enc = Vec::new();
    for (kind, body) in &want {
        record(*kind, seq, body, &mut enc);
    }
    assert_eq!(records(&enc, seq), want);
    // Another use of the segment sees none of them.
    assert!(records(&enc, seq + 1).is_empty());

    // 3. Torn and corrupted.
    if !enc.is_empty() {
        let torn = &enc[..cut % enc.len()];
        let got = records(torn, seq);
        assert!(want.starts_with(&got));
        let mut bad = enc.clone();
        let at = cut % bad.len();
        bad[at] ^= flip | 1;
        let got = records(&bad, seq);
        assert!(want.starts_with(&got), "a changed byte never yields a different record");
    }
});
