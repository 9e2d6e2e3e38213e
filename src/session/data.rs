//! The DATA decoder: finds the end of data, removes dot-stuffing, and
//! handles bare CR and LF. Pure and incremental: feed it whatever arrived.
//!
//! Only `<CR><LF>.<CR><LF>` ends the data — never `<LF>.<LF>`,
//! `<CR>.<CR>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>` or `<CR><LF>.<CR><CR><LF>`
//! (SMTP smuggling, RFC 5321 §4.1.1.4). smtp-proto's own receiver accepts
//! the last of these as the end, so the listener uses this one instead.
//!
//! A bare CR or LF inside the data is written as CRLF, so the message we
//! relay always has strict line endings; the decoder reports that it saw
//! one, and the session refuses the message unless the listener or the
//! application allows bare line endings.
//!
//! One exception, for legacy LF-only clients: with [`DataDecoder::lf_end`]
//! set (the session sets it only where bare LF is allowed and only for a
//! client none of whose lines so far ended in CRLF), `<LF>.<LF>` ends the
//! data too — unless a CRLF appeared in the content itself. A client that
//! speaks CRLF can therefore never have its `<LF>.<LF>` taken as the end,
//! so there is no differential for smuggling.

use memchr::memchr2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// At the start of a line that followed a CRLF (or the 354).
    Start,
    /// `.` at the start of a CRLF line.
    StartDot,
    /// `.` `\r` at the start of a CRLF line.
    StartDotCr,
    /// At the start of a line that followed a bare CR or LF: a `.` here is
    /// unstuffed but can never end the data.
    BareStart,
    /// `.` at the start of such a line.
    BareStartDot,
    /// Inside a line.
    Mid,
    /// Inside a line, after a `\r`.
    MidCr,
}

/// Incremental DATA decoder.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    st: St,
    /// A bare CR or LF was seen.
    pub saw_bare: bool,
    /// A byte above 127 was seen: the content is 8-bit.
    pub saw_8bit: bool,
    /// Bytes of content written so far (after unstuffing and normalisation).
    pub size: u64,
    /// Stop writing to the sink after this many bytes (the rest is counted
    /// and thrown away; the session then refuses the message).
    pub limit: u64,
    /// Accept `<LF>.<LF>` as the end while no CRLF has been seen (see the
    /// module docs).
    pub lf_end: bool,
    /// A CRLF line ending was seen in the content.
    pub saw_crlf: bool,
    /// The last bare line ending was a LF (not a CR).
    after_lf: bool,
}

impl DataDecoder {
    /// A decoder at the start of the data, writing at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        DataDecoder {
            st: St::Start,
            saw_bare: false,
            saw_8bit: false,
            size: 0,
            limit,
            lf_end: false,
            saw_crlf: false,
            after_lf: true,
        }
    }

    /// Whether `<LF>.<LF>` may end the data now.
    fn lf_ends(&self) -> bool {
        self.lf_end && !self.saw_crlf && self.after_lf
    }

    /// Whether more bytes arrived than `limit` allows.
    pub fn over_limit(&self) -> bool {
        self.size > self.limit
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.size);
        let take = (bytes.len() as u64).min(room) as usize;
        out.extend_from_slice(&bytes[..take]);
        self.size += bytes.len() as u64;
    }

    fn bare(&mut self, out: &mut Vec<u8>) {
        self.saw_bare = true;
        self.after_lf = false;
        self.emit(out, b"\r\n");
    }

    fn bare_lf(&mut self, out: &mut Vec<u8>) {
        self.bare(out);
        self.after_lf = true;
    }

    /// Decodes `input` into `out`. Returns `Some(n)` when the end of data
    /// was found after consuming `n` bytes of `input` (the rest belongs to
    /// the next command), `None` when all of `input` was consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.st {
                St::Mid => {
                    // Fast path: copy everything up to the next CR or LF.
                    let run = memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    if run > 0 {
                        if !self.saw_8bit {
                            self.saw_8bit = input[i..i + run].iter().any(|b| *b >= 0x80);
                        }
                        self.emit(out, &input[i..i + run]);
                        i += run;
                        continue;
                    }
                    if b == b'\r' {
                        self.st = St::MidCr;
                    } else {
                        self.bare_lf(out);
                        self.st = St::BareStart;
                    }
                }
                St::MidCr => match b {
                    b'\n' => {
                        self.emit(out, b"\r\n");
                        self.saw_crlf = true;
                        self.st = St::Start;
                    }
                    b'\r' => self.bare(out), // the earlier CR was bare; this one is pending
                    _ => {
                        self.bare(out);
                        self.st = St::BareStart;
                        continue; // reprocess b at the start of a (bare) line
                    }
                },
                St::Start => match b {
                    b'.' => self.st = St::StartDot,
                    _ => {
                        self.st = St::Mid;
                        continue;
                    }
                },
                St::StartDot => match b {
                    b'\r' => self.st = St::StartDotCr,
                    b'\n' if self.lf_ends() => {
                        // "." as the first line of an LF-only client's data.
                        return Some(i + 1);
                    }
                    b'\n' => {
                        // <CRLF>.<LF>: not the end. A line "." with a bare LF.
                        self.emit(out, b".");
                        self.bare_lf(out);
                        self.st = St::BareStart;
                    }
                    _ => {
                        // ".x" → "x" and "..x" → ".x" (RFC 5321 §4.5.2)
                        self.st = St::Mid;
                        continue;
                    }
                },
                St::StartDotCr => {
                    if b == b'\n' {
                        return Some(i + 1);
                    }
                    // <CRLF>.<CR> followed by something else: the CR is bare.
                    self.bare(out);
                    self.st = St::BareStart;
                    continue;
                }
                St::BareStart => match b {
                    b'.' => self.st = St::BareStartDot,
                    _ => {
                        self.st = St::Mid;
                        continue;
                    }
                },
                St::BareStartDot => {
                    if b == b'\n' && self.lf_ends() {
                        return Some(i + 1);
                    }
                    if b != b'.' {
                        self.emit(out, b".");
                    }
                    self.st = St::Mid;
                    if b != b'.' {
                        continue;
                    }
                    self.emit(out, b".");
                }
            }
            i += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in every possible two-way split and in single bytes;
    /// all must agree. Returns (content, consumed, saw_bare) or None when
    /// the data did not end.
    fn decode(input: &[u8]) -> Option<(Vec<u8>, usize, bool)> {
        let whole = {
            let mut d = DataDecoder::new(u64::MAX);
            let mut out = Vec::new();
            d.feed(input, &mut out).map(|n| (out, n, d.saw_bare))
        };
        for split in 0..=input.len() {
            let mut d = DataDecoder::new(u64::MAX);
            let mut out = Vec::new();
            let r = match d.feed(&input[..split], &mut out) {
                Some(n) => Some((out, n, d.saw_bare)),
                None => d
                    .feed(&input[split..], &mut out)
                    .map(|n| (out, n + split, d.saw_bare)),
            };
            assert_eq!(
                r,
                whole,
                "split at {split} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut d = DataDecoder::new(u64::MAX);
        let mut out = Vec::new();
        let mut end = None;
        for (i, b) in input.iter().enumerate() {
            if d.feed(std::slice::from_ref(b), &mut out).is_some() {
                end = Some(i + 1);
                break;
            }
        }
        assert_eq!(end.map(|n| (out, n, d.saw_bare)), whole, "byte by byte");
        whole
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let (out, n, bare) = decode(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n").unwrap();
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(n, 23);
        assert!(!bare);
    }

    #[test]
    fn empty_message_and_stuffed_first_line() {
        // The two smtp-proto quirks: "." straight after 354, and "..x" as the first line.
        assert_eq!(decode(b".\r\n").unwrap().0, b"");
        assert_eq!(decode(b"..x\r\n.\r\n").unwrap().0, b".x\r\n");
        assert_eq!(
            decode(b"a\r\n..\r\n...b\r\n.\r\n").unwrap().0,
            b"a\r\n.\r\n..b\r\n"
        );
    }

    #[test]
    fn smuggling_sequences_never_end_the_data() {
        for seq in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\r\r\nMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y>\r\n",
        ] {
            assert_eq!(decode(seq), None, "{:?}", String::from_utf8_lossy(seq));
            // ...and once the real end comes, the smuggled text is content and
            // the bare endings are reported.
            let full = [seq, b"\r\n.\r\n"].concat();
            let (out, n, bare) = decode(&full).unwrap();
            assert_eq!(n, full.len());
            assert!(bare, "{:?}", String::from_utf8_lossy(seq));
            assert!(out.windows(9).any(|w| w == b"MAIL FROM"));
            // Whatever went in, what comes out has only CRLF line endings.
            for (i, b) in out.iter().enumerate() {
                if *b == b'\n' {
                    assert_eq!(out[i - 1], b'\r');
                }
                if *b == b'\r' {
                    assert_eq!(out.get(i + 1), Some(&b'\n'));
                }
            }
        }
    }

    #[test]
    fn bare_lf_is_normalised() {
        let (out, _, bare) = decode(b"line1\nline2\r\nline3\rline4\r\n.\r\n").unwrap();
        assert_eq!(out, b"line1\r\nline2\r\nline3\r\nline4\r\n");
        assert!(bare);
        // Dots after bare line ends are unstuffed but never terminate.
        let (out, _, _) = decode(b"a\n..b\n.\nc\r\n.\r\n").unwrap();
        assert_eq!(out, b"a\r\n.b\r\n.\r\nc\r\n");
    }

    #[test]
    fn eight_bit_and_binary_bytes_pass_through() {
        let body: Vec<u8> = (0u8..=255).filter(|b| *b != b'\r' && *b != b'\n').collect();
        let mut input = body.clone();
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, _, bare) = decode(&input).unwrap();
        assert_eq!(&out[..body.len()], &body[..]);
        assert!(!bare);
        let mut d = DataDecoder::new(u64::MAX);
        d.feed(b"plain ascii\r\n.\r\n", &mut Vec::new());
        assert!(!d.saw_8bit);
        let mut d = DataDecoder::new(u64::MAX);
        d.feed(&input, &mut Vec::new());
        assert!(d.saw_8bit);
    }

    #[test]
    fn limit_counts_but_stops_storing() {
        let mut d = DataDecoder::new(4);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"0123456789\r\n.\r\n", &mut out), Some(15));
        assert_eq!(out, b"0123");
        assert!(d.over_limit());
        assert_eq!(d.size, 12);
    }

    fn decode_lf(input: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut d = DataDecoder::new(u64::MAX);
        d.lf_end = true;
        let mut out = Vec::new();
        d.feed(input, &mut out).map(|n| (out, n))
    }

    #[test]
    fn lf_only_clients_may_end_with_lf_dot_lf() {
        assert_eq!(
            decode_lf(b"Subject: x\n\nbody\n.\nQUIT\n"),
            Some((b"Subject: x\r\n\r\nbody\r\n".to_vec(), 19))
        );
        assert_eq!(decode_lf(b".\n"), Some((Vec::new(), 2)));
        // Dot-stuffing still applies.
        assert_eq!(
            decode_lf(b"a\n..b\n.\n"),
            Some((b"a\r\n.b\r\n".to_vec(), 8))
        );
        // Once the content has a CRLF, only <CRLF>.<CRLF> ends it.
        for seq in [
            &b"a\r\nb\n.\nc"[..],
            b"a\r\n.\nc",
            b"a\r.\nc",
            b"a\r\n.\r\r\nc",
        ] {
            assert_eq!(decode_lf(seq), None, "{:?}", String::from_utf8_lossy(seq));
        }
        assert_eq!(
            decode_lf(b"a\r\nb\n.\nc\r\n.\r\n").map(|x| x.0),
            Some(b"a\r\nb\r\n.\r\nc\r\n".to_vec())
        );
        // Without the flag, <LF>.<LF> is content.
        assert_eq!(decode(b"a\n.\n"), None);
    }
}
