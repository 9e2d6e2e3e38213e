//! Table-driven tests of the header rewrite; every case also checks that the
//! bytes after the header section come out unchanged.

use super::*;
use mail_parser::MessageParser;

fn spec(sender: Option<&str>, name: Option<&str>, reply_to: Option<&str>) -> RewriteSpec {
    RewriteSpec {
        sender: sender.map(str::to_owned),
        display_name: name.map(str::to_owned),
        reply_to: reply_to.map(str::to_owned),
        ..Default::default()
    }
}

fn apply(raw: &[u8], s: &RewriteSpec) -> (String, Rewritten) {
    let r = rewrite(raw, s);
    let mut full = r.header.clone();
    full.extend_from_slice(&raw[r.body_offset..]);
    (String::from_utf8_lossy(&full).into_owned(), r)
}

/// Header section of the output as text (up to the first empty line).
fn head(out: &str) -> &str {
    out.split("\r\n\r\n").next().unwrap()
}

struct Case {
    name: &'static str,
    input: &'static str,
    spec: RewriteSpec,
    /// Exact expected header section (CRLF line endings, without the empty line).
    want: &'static str,
    replaced: bool,
}

#[test]
fn header_cases() {
    let cases = [
        Case {
            name: "address and display name replaced, old From becomes Reply-To",
            input: "From: Legacy App <app@legacy.test>\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n",
            spec: spec(Some("shop@acme.example"), Some("ACME Webshop"), None),
            want: "From: ACME Webshop <shop@acme.example>\r\nReply-To: Legacy App <app@legacy.test>\r\nTo: b@example.com\r\nSubject: hi",
            replaced: true,
        },
        Case {
            name: "no display name configured keeps the original name",
            input: "From: \"Doe, John\" <john@legacy.test>\r\n\r\nbody\r\n",
            spec: spec(Some("shop@acme.example"), None, None),
            want: "From: \"Doe, John\" <shop@acme.example>\r\nReply-To: \"Doe, John\" <john@legacy.test>",
            replaced: true,
        },
        Case {
            name: "configured Reply-To replaces the client's",
            input: "Reply-To: old@legacy.test\r\nFrom: app@legacy.test\r\n\r\nx",
            spec: spec(
                Some("shop@acme.example"),
                None,
                Some("support@acme.example"),
            ),
            want: "From: <shop@acme.example>\r\nReply-To: <support@acme.example>",
            replaced: true,
        },
        Case {
            name: "existing Reply-To kept when none is configured",
            input: "From: app@legacy.test\r\nReply-To: desk@legacy.test\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), None, None),
            want: "From: <shop@acme.example>\r\nReply-To: desk@legacy.test",
            replaced: true,
        },
        Case {
            name: "Sender removed when From is replaced",
            input: "Sender: agent@legacy.test\r\nFrom: app@legacy.test\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), None, None),
            want: "From: <shop@acme.example>\r\nReply-To: <app@legacy.test>",
            replaced: true,
        },
        Case {
            name: "same address (other case): only the display name changes, Sender kept",
            input: "Sender: agent@acme.example\r\nFrom: Old <SHOP@acme.example>\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), Some("New"), None),
            want: "Sender: agent@acme.example\r\nFrom: New <shop@acme.example>",
            replaced: false,
        },
        Case {
            name: "nothing to change leaves the bytes alone",
            input: "From:   Shop   <shop@acme.example>\r\nX-A: 1\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), None, None),
            want: "From:   Shop   <shop@acme.example>\r\nX-A: 1",
            replaced: false,
        },
        Case {
            name: "folded From header",
            input: "X-Before: 1\r\nFrom: \"Legacy\r\n Application\"\r\n\t<app@legacy.test>\r\nX-After: 2\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), Some("Shop"), None),
            want: "X-Before: 1\r\nFrom: Shop <shop@acme.example>\r\nReply-To: Legacy Application <app@legacy.test>\r\nX-After: 2",
            replaced: true,
        },
        Case {
            name: "several From addresses in one field become one, all go to Reply-To",
            input: "From: a@legacy.test, B <b@legacy.test>\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), None, None),
            want: "From: <shop@acme.example>\r\nReply-To: <a@legacy.test>, B <b@legacy.test>",
            replaced: true,
        },
        Case {
            name: "two From fields merge into one",
            input: "From: a@legacy.test\r\nTo: x@y.test\r\nFrom: b@legacy.test\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), Some("Shop"), None),
            want: "From: Shop <shop@acme.example>\r\nReply-To: <a@legacy.test>, <b@legacy.test>\r\nTo: x@y.test",
            replaced: true,
        },
        Case {
            name: "no From header: one is added",
            input: "To: b@example.com\r\nSubject: s\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), Some("Shop"), None),
            want: "From: Shop <shop@acme.example>\r\nTo: b@example.com\r\nSubject: s",
            replaced: true,
        },
        Case {
            name: "group syntax in From",
            input: "From: Team: a@legacy.test, b@legacy.test;\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), None, None),
            want: "From: <shop@acme.example>\r\nReply-To: <a@legacy.test>, <b@legacy.test>",
            replaced: true,
        },
        Case {
            name: "a malformed line ends the header section and stays as it is",
            input: "From: app@legacy.test\r\nthis is not a header\r\nFrom: other@x.test\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), None, None),
            want: "From: <shop@acme.example>\r\nReply-To: <app@legacy.test>",
            replaced: true,
        },
        Case {
            name: "no sender configured: From untouched, display name alone applies",
            input: "From: Old <app@legacy.test>\r\n\r\nx",
            spec: spec(None, Some("Shop"), None),
            want: "From: Shop <app@legacy.test>",
            replaced: false,
        },
        Case {
            name: "Reply-To only: added after From",
            input: "Subject: s\r\nFrom: app@legacy.test\r\n\r\nx",
            spec: spec(None, None, Some("support@acme.example")),
            want: "Subject: s\r\nFrom: app@legacy.test\r\nReply-To: <support@acme.example>",
            replaced: false,
        },
        Case {
            name: "header names are case-insensitive",
            input: "FROM: app@legacy.test\r\nreply-to: r@legacy.test\r\nsender: s@legacy.test\r\n\r\nx",
            spec: spec(
                Some("shop@acme.example"),
                None,
                Some("support@acme.example"),
            ),
            want: "From: <shop@acme.example>\r\nReply-To: <support@acme.example>",
            replaced: true,
        },
        Case {
            name: "display name with specials is quoted",
            input: "From: a@legacy.test\r\n\r\nx",
            spec: spec(Some("shop@acme.example"), Some("ACME, Inc. \"Shop\""), None),
            want: "From: \"ACME, Inc. \\\"Shop\\\"\" <shop@acme.example>\r\nReply-To: <a@legacy.test>",
            replaced: true,
        },
    ];
    for c in cases {
        let (out, r) = apply(c.input.as_bytes(), &c.spec);
        assert_eq!(head(&out), c.want, "case: {}", c.name);
        assert_eq!(r.from_replaced, c.replaced, "case: {}", c.name);
        assert_eq!(
            &c.input.as_bytes()[r.body_offset..],
            &out.as_bytes()[r.header.len()..],
            "case: {}",
            c.name
        );
    }
}

#[test]
fn non_ascii_display_name_is_rfc2047_and_round_trips() {
    let raw = "From: =?UTF-8?B?SsO2cmcgTcO8bGxlcg==?= <legacy@app.example>\r\n\r\nbody\r\n";
    let (out, _) = apply(
        raw.as_bytes(),
        &spec(Some("relay@corp.example"), Some("Relay Bot – Zürich"), None),
    );
    assert!(out.is_ascii(), "{out}");
    let m = MessageParser::new().parse(out.as_bytes()).unwrap();
    let from = m.from().unwrap().first().unwrap();
    assert_eq!(from.name.as_deref(), Some("Relay Bot – Zürich"));
    assert_eq!(from.address.as_deref(), Some("relay@corp.example"));
    let rt = m.reply_to().unwrap().first().unwrap();
    assert_eq!(rt.name.as_deref(), Some("Jörg Müller"));
    assert_eq!(rt.address.as_deref(), Some("legacy@app.example"));
}

#[test]
fn utf8_address_is_written_raw() {
    let raw = "From: a@legacy.test\r\n\r\nx";
    let (out, _) = apply(
        raw.as_bytes(),
        &spec(Some("jörg@bücher.example"), None, None),
    );
    assert!(out.starts_with("From: <jörg@bücher.example>\r\n"), "{out}");
}

#[test]
fn subject_prefix() {
    let p = |prefix: &str| RewriteSpec {
        subject_prefix: Some(prefix.into()),
        ..Default::default()
    };
    let cases: [(&str, &str, &str); 7] = [
        (
            "Subject: Order 42\r\n",
            "[TEST] ",
            "Subject: [TEST] Order 42",
        ),
        // Encoded subject: the prefix is spliced before the encoded word,
        // separated by the prefix's own space; the encoded bytes stay as they were.
        (
            "Subject: =?UTF-8?B?QmVzdGVsbHVuZyDDvGJlcg==?=\r\n",
            "[TEST] ",
            "Subject: [TEST] =?UTF-8?B?QmVzdGVsbHVuZyDDvGJlcg==?=",
        ),
        // Folded subject keeps its folding.
        (
            "Subject: a long\r\n subject\r\n",
            "[TEST] ",
            "Subject: [TEST] a long\r\n subject",
        ),
        // Already prefixed: unchanged.
        (
            "Subject: [TEST] again\r\n",
            "[TEST] ",
            "Subject: [TEST] again",
        ),
        // No Subject: one is added with the prefix alone.
        ("X-A: 1\r\n", "[TEST] ", "Subject: [TEST]\r\nX-A: 1"),
        // Prefix without a space before an encoded word: all of it is encoded.
        (
            "Subject: =?UTF-8?B?w7xiZXI=?=\r\n",
            "[TEST]",
            "Subject: =?utf-8?B?W1RFU1Rdw7xiZXI=?=",
        ),
        // Non-ASCII prefix: encoded.
        (
            "Subject: Bestellung\r\n",
            "[PRÜFUNG] ",
            "Subject: =?utf-8?B?W1BSw5xGVU5HXSBCZXN0ZWxsdW5n?=",
        ),
    ];
    for (input, prefix, want) in cases {
        let raw = format!("{input}\r\nbody");
        let (out, _) = apply(raw.as_bytes(), &p(prefix));
        assert_eq!(head(&out), want, "input {input:?}");
        let m = MessageParser::new().parse(out.as_bytes()).unwrap();
        let subj = m.subject().unwrap_or_default();
        assert!(
            subj.starts_with(prefix.trim_end()),
            "{subj:?} from {input:?}"
        );
    }
}

#[test]
fn x_original_to_in_test_mode() {
    let s = RewriteSpec {
        original_recipients: vec!["a@example.com".into(), "b@example.org".into()],
        ..Default::default()
    };
    let (out, _) = apply(b"Subject: s\r\n\r\nx", &s);
    assert_eq!(
        head(&out),
        "X-Original-To: <a@example.com>, <b@example.org>\r\nSubject: s"
    );
}

#[test]
fn lf_only_messages_get_lf_headers() {
    let raw = b"From: a@legacy.test\nSubject: s\n\nbody\n";
    let r = rewrite(raw, &spec(Some("shop@acme.example"), None, None));
    assert_eq!(
        r.header,
        b"From: <shop@acme.example>\nReply-To: <a@legacy.test>\nSubject: s\n"
    );
    assert_eq!(&raw[r.body_offset..], b"\nbody\n");
}

#[test]
fn message_without_headers_keeps_its_body_as_body() {
    let raw = b"Hello: this looks like a header\r\n";
    // "Hello:" is a valid field, so it is a header; the case below is not.
    let r = rewrite(
        b"just text, no header\r\nmore\r\n",
        &spec(Some("shop@acme.example"), None, None),
    );
    assert_eq!(r.header, b"From: <shop@acme.example>\r\n\r\n");
    assert_eq!(r.body_offset, 0);
    let r2 = rewrite(raw, &spec(Some("shop@acme.example"), None, None));
    assert!(
        r2.header
            .starts_with(b"From: <shop@acme.example>\r\nHello:")
    );
}

#[test]
fn bodies_are_never_touched() {
    let bodies: Vec<Vec<u8>> = vec![
        b"plain\r\n".to_vec(),
        "UTF-8 body: Grüße, 日本語\r\n".as_bytes().to_vec(),
        vec![
            0x00, 0xff, 0xfe, b'\r', b'\n', 0x80, 0x81, b'.', b'\r', b'\n',
        ],
        b"From: not a header\r\nSubject: nor this\r\n\r\n.\r\n..leading dots\r\n".to_vec(),
        b"bare\nlf\rcr\r\n\r\n\r\n".to_vec(),
        (0u8..=255).collect(),
        Vec::new(),
    ];
    let headers = [
        "From: a@legacy.test\r\nSubject: s\r\n\r\n",
        "From: a@legacy.test\r\n\r\n",
        "Subject: s\r\n\r\n",
    ];
    let s = RewriteSpec {
        sender: Some("shop@acme.example".into()),
        display_name: Some("Shöp".into()),
        reply_to: Some("r@acme.example".into()),
        subject_prefix: Some("[TEST] ".into()),
        original_recipients: vec!["x@y.test".into()],
        add_date: Some("Mon, 23 Nov 2026 01:02:03 +0000".into()),
        add_message_id: Some("<id@relay.test>".into()),
    };
    for h in headers {
        for b in &bodies {
            let mut raw = h.as_bytes().to_vec();
            raw.extend_from_slice(b);
            let r = rewrite(&raw, &s);
            // The separator line and the body come straight from the input.
            assert_eq!(
                &raw[r.body_offset..],
                [b"\r\n".as_slice(), b].concat().as_slice()
            );
        }
    }
}

#[test]
fn envelope_sender_keeps_null_sender() {
    let s = spec(Some("shop@acme.example"), None, None);
    assert_eq!(envelope_sender("", &s), "");
    assert_eq!(envelope_sender("app@legacy.test", &s), "shop@acme.example");
    assert_eq!(
        envelope_sender("app@legacy.test", &RewriteSpec::default()),
        "app@legacy.test"
    );
}

#[test]
fn a_last_field_without_line_ending_is_not_glued_to_ours() {
    // Found by the rewrite fuzz target.
    let s = RewriteSpec {
        reply_to: Some("r@acme.example".into()),
        ..Default::default()
    };
    let r = rewrite(b"Subject: x", &s);
    assert_eq!(r.header, b"Subject: x\r\nReply-To: <r@acme.example>\r\n");
    let s = spec(Some("shop@acme.example"), None, None);
    let r = rewrite(b"X-A: 1\r\nSender: y@z.test", &s);
    assert_eq!(r.header, b"From: <shop@acme.example>\r\nX-A: 1\r\n");
}

#[test]
fn a_non_header_line_gets_an_explicit_boundary_before_it() {
    // Found in review: without the empty line, a lenient parser skipping
    // the bad line would read the second From as a header.
    let raw = b"From: app@legacy.test\r\nBad line\r\nFrom: spoof@z.test\r\n\r\nbody\r\n";
    let (out, r) = apply(raw, &spec(Some("shop@acme.example"), None, None));
    assert_eq!(
        out,
        "From: <shop@acme.example>\r\nReply-To: <app@legacy.test>\r\n\r\nBad line\r\nFrom: spoof@z.test\r\n\r\nbody\r\n"
    );
    assert_eq!(
        &raw[r.body_offset..],
        b"Bad line\r\nFrom: spoof@z.test\r\n\r\nbody\r\n"
    );
    // Headers with no empty line and a body straight after them.
    let (out, _) = apply(b"Subject: hi\r\nThis is body\r\n", &RewriteSpec::default());
    assert_eq!(out, "Subject: hi\r\n\r\nThis is body\r\n");
    // A message that is only headers stays as it is.
    let (out, _) = apply(b"Subject: hi\r\n", &RewriteSpec::default());
    assert_eq!(out, "Subject: hi\r\n");
}

#[test]
fn date_and_message_id_are_added_only_when_missing() {
    let s = RewriteSpec {
        add_date: Some("Mon, 23 Nov 2026 01:02:03 +0000".into()),
        add_message_id: Some("<id1@relay.test>".into()),
        ..Default::default()
    };
    let (out, _) = apply(b"Subject: s\r\n\r\nbody", &s);
    assert_eq!(
        head(&out),
        "Subject: s\r\nDate: Mon, 23 Nov 2026 01:02:03 +0000\r\nMessage-ID: <id1@relay.test>"
    );
    let (out, _) = apply(b"Message-Id: <own@app>\r\nDATE: x\r\n\r\nbody", &s);
    assert_eq!(head(&out), "Message-Id: <own@app>\r\nDATE: x");
}
