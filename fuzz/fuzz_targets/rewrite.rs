//! Arbitrary messages through the header rewrite: it must not panic, and
//! whatever follows the header section must come out byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::rewrite::{RewriteSpec, rewrite};

fuzz_target!(|data: &[u8]| {
    // The first byte picks which parts of the spec are set, so every
    // combination gets exercised.
    let Some((&sel, msg)) = data.split_first() else { return };
    let pick = |bit: u8, v: &str| (sel & (1 << bit) != 0).then(|| v.to_owned());
    let spec = RewriteSpec {
        sender: pick(0, "shop@acme.example"),
        display_name: pick(1, "Shöp, \"The\" Store"),
        reply_to: pick(2, "support@acme.example"),
        subject_prefix: pick(3, if sel & 0x80 != 0 { "[TEST]" } else { "[PRÜF] " }),
        original_recipients: if sel & (1 << 4) != 0 { vec!["a@b.example".into()] } else { Vec::new() },
        add_date: pick(5, "Mon, 23 Nov 2026 01:02:03 +0000"),
        add_message_id: pick(6, "<fuzz@relay.test>"),
    };
    let out = rewrite(msg, &spec);
    // The body starts where the header section ended in the input, and
    // what follows it there is never looked at again.
    assert!(out.body_offset <= msg.len());
    // Every field we add starts a line of its own.
    let h = &out.header;
    let at_line_start = |needle: &[u8]| {
        h.starts_with(needle) || h.windows(needle.len() + 1).any(|w| w[0] == b'\n' && &w[1..] == needle)
    };
    if spec.reply_to.is_some() {
        assert!(at_line_start(b"Reply-To: <support@acme.example>"));
    }
    if !spec.original_recipients.is_empty() {
        assert!(h.starts_with(b"X-Original-To: <a@b.example>"));
    }
});
