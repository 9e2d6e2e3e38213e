//! The SMTP transparency procedure for the outgoing DATA phase (RFC 5321
//! §4.5.2), across arbitrary chunk boundaries. Pure: bytes in, bytes out.
//!
//! A `.` that starts a line is doubled. Like mail-send, a line is taken to
//! start after any CR or LF (not only after CRLF), so that a bare CR or LF
//! in the content can never combine with a dot into an end-of-data marker
//! at a lenient receiver (SMTP smuggling). For CRLF-only content this is
//! exactly RFC 5321. The terminator is `CRLF.CRLF`, with a CRLF added only
//! when the content does not already end with one, so the receiver stores
//! the content byte for byte (CRATES.md pitfall 1).

/// Dot-stuffs content written in pieces.
#[derive(Debug)]
pub struct DotStuffer {
    /// The last byte seen was CR or LF (true at the start: the first byte
    /// begins a line).
    line_start: bool,
    /// The last two content bytes (0 where there were fewer).
    tail: [u8; 2],
    /// Any content was pushed.
    seen: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            tail: [0, 0],
            seen: false,
        }
    }
}

impl DotStuffer {
    /// Appends `input`, dot-stuffed, to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = input.last() else { return };
        out.reserve(input.len() + 8);
        let mut copied = 0;
        for dot in memchr::memchr_iter(b'.', input) {
            let starts_line = match dot {
                0 => self.line_start,
                _ => matches!(input[dot - 1], b'\r' | b'\n'),
            };
            if starts_line {
                // Copy up to and including the dot, then add the stuffed one.
                out.extend_from_slice(&input[copied..=dot]);
                out.push(b'.');
                copied = dot + 1;
            }
        }
        out.extend_from_slice(&input[copied..]);
        self.seen = true;
        self.line_start = matches!(last, b'\r' | b'\n');
        self.tail = match input.len() {
            1 => [self.tail[1], last],
            n => [input[n - 2], last],
        };
    }

    /// Appends the end-of-data marker to `out`: `.CRLF` after content that
    /// ends with CRLF (or no content at all), `CRLF.CRLF` otherwise.
    pub fn finish(&self, out: &mut Vec<u8>) {
        if self.seen && &self.tail != b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(pieces: &[&[u8]]) -> Vec<u8> {
        let mut s = DotStuffer::default();
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn leading_dots_are_doubled() {
        assert_eq!(stuff(&[b".a\r\n"]), b"..a\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r\n.\r\nb\r\n"]), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r\n..x\r\n"]), b"a\r\n...x\r\n.\r\n");
        assert_eq!(stuff(&[b"a.b\r\n"]), b"a.b\r\n.\r\n");
    }

    #[test]
    fn chunk_boundaries() {
        let whole = b"H: v\r\n\r\n.one\r\n..two\r\n.\r\nend.\r\n";
        let expected = stuff(&[whole]);
        for split in 0..whole.len() {
            let (a, b) = whole.split_at(split);
            assert_eq!(stuff(&[a, b]), expected, "split at {split}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(stuff(&bytes), expected);
    }

    #[test]
    fn terminator() {
        assert_eq!(stuff(&[]), b".\r\n");
        assert_eq!(stuff(&[b""]), b".\r\n");
        assert_eq!(stuff(&[b"x"]), b"x\r\n.\r\n");
        assert_eq!(stuff(&[b"x\r\n"]), b"x\r\n.\r\n");
        assert_eq!(stuff(&[b"x\r", b"\n"]), b"x\r\n.\r\n");
        assert_eq!(stuff(&[b"x\n"]), b"x\n\r\n.\r\n");
        assert_eq!(stuff(&[b"\r\n"]), b"\r\n.\r\n");
    }

    #[test]
    fn bare_cr_or_lf_before_a_dot_is_stuffed() {
        assert_eq!(stuff(&[b"a\n.\r\nb"]), b"a\n..\r\nb\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r.\r\nb\r\n"]), b"a\r..\r\nb\r\n.\r\n");
    }
}
