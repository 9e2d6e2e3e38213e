//! A received message's bytes: the first part in memory (the header section
//! is always there when it fits in [`HEADER_LIMIT`]), the rest in an
//! unnamed temporary file, so a 50 MB message does not cost 50 MB of memory.
//! File I/O runs on blocking threads, never on the runtime's workers.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The header section is kept in memory up to this size; past it, header
/// lines are treated as part of the body (like Postfix's `header_size_limit`).
pub const HEADER_LIMIT: usize = 1 << 20;

/// Smallest spooling threshold: below this, writes would be too small.
const MIN_THRESHOLD: u64 = 64 << 10;

/// Size of the pieces read back from the spool file.
const CHUNK: u64 = 256 << 10;

/// The part of a message that lives in a file: `len` bytes from `base`.
#[derive(Debug, Clone)]
struct Tail {
    file: Arc<std::fs::File>,
    base: u64,
    len: u64,
}

/// Message content, complete.
#[derive(Debug)]
pub struct Message {
    /// The first bytes (all of them for small messages).
    pub head: Vec<u8>,
    tail: Option<Tail>,
}

impl Message {
    /// A message held entirely in memory.
    pub fn in_memory(bytes: Vec<u8>) -> Self {
        Message {
            head: bytes,
            tail: None,
        }
    }

    /// The message stored in `file` as `len` bytes from `base` (a queue
    /// file): the first `head_len` bytes are read into memory (they hold the
    /// header section), the rest stays in the file. Blocking.
    pub fn from_file(
        file: Arc<std::fs::File>,
        base: u64,
        len: u64,
        head_len: u64,
    ) -> io::Result<Message> {
        let n = head_len.min(len);
        let mut head = vec![0u8; n as usize];
        file.read_exact_at(&mut head, base)?;
        let tail = (len > n).then(|| Tail {
            file,
            base: base + n,
            len: len - n,
        });
        Ok(Message { head, tail })
    }

    /// Writes the whole content to `w`. Blocking (for blocking threads).
    pub fn write_to(&self, w: &mut impl io::Write) -> io::Result<()> {
        w.write_all(&self.head)?;
        if let Some(t) = &self.tail {
            let mut buf = vec![0u8; CHUNK.min(t.len) as usize];
            let mut at = 0;
            while at < t.len {
                let n = CHUNK.min(t.len - at) as usize;
                t.file.read_exact_at(&mut buf[..n], t.base + at)?;
                w.write_all(&buf[..n])?;
                at += n as u64;
            }
        }
        Ok(())
    }

    /// Total size in bytes.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.tail.as_ref().map_or(0, |t| t.len)
    }

    /// Whether the message has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether part of the message is on disk.
    pub fn is_spooled(&self) -> bool {
        self.tail.is_some()
    }

    /// Reads the content from byte `from` of the head onwards, in pieces.
    pub fn chunks(&self, from: usize) -> Chunks<'_> {
        Chunks {
            head: Some(&self.head[from.min(self.head.len())..]),
            tail: self.tail.clone(),
            offset: 0,
            buf: Vec::new(),
        }
    }

    /// Whether the content ends with CRLF (checks the last bytes, on disk if need be).
    pub async fn ends_with_crlf(&self) -> io::Result<bool> {
        match &self.tail {
            None => Ok(self.head.ends_with(b"\r\n") || self.head.is_empty()),
            Some(t) if t.len >= 2 => {
                let (f, at) = (t.file.clone(), t.base + t.len - 2);
                let last = tokio::task::spawn_blocking(move || {
                    let mut b = [0u8; 2];
                    f.read_exact_at(&mut b, at).map(|_| b)
                })
                .await
                .map_err(io::Error::other)??;
                Ok(&last == b"\r\n")
            }
            Some(t) => {
                let (f, at) = (t.file.clone(), t.base);
                let last = tokio::task::spawn_blocking(move || {
                    let mut b = [0u8; 1];
                    f.read_exact_at(&mut b, at).map(|_| b[0])
                })
                .await
                .map_err(io::Error::other)??;
                Ok(self.head.ends_with(b"\r") && last == b'\n')
            }
        }
    }
}

/// Pieces of a message's content, in order.
pub struct Chunks<'a> {
    head: Option<&'a [u8]>,
    tail: Option<Tail>,
    offset: u64,
    buf: Vec<u8>,
}

impl Chunks<'_> {
    /// The next piece, or `None` at the end.
    pub async fn next(&mut self) -> io::Result<Option<&[u8]>> {
        if let Some(h) = self.head.take()
            && !h.is_empty()
        {
            return Ok(Some(h));
        }
        let Some(Tail { file, base, len }) = self.tail.clone() else {
            return Ok(None);
        };
        if self.offset >= len {
            return Ok(None);
        }
        let n = CHUNK.min(len - self.offset) as usize;
        let at = base + self.offset;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(n, 0);
        let buf =
            tokio::task::spawn_blocking(move || file.read_exact_at(&mut buf, at).map(|_| buf))
                .await
                .map_err(io::Error::other)??;
        self.buf = buf;
        self.offset += n as u64;
        Ok(Some(&self.buf))
    }
}

/// Collects a message while it arrives, moving it to disk past a threshold.
#[derive(Debug)]
pub struct Spooler {
    dir: PathBuf,
    threshold: usize,
    head: Vec<u8>,
    tail: Option<Tail>,
}

fn header_complete(head: &[u8]) -> bool {
    memchr::memmem::find(head, b"\r\n\r\n").is_some() || head.len() >= HEADER_LIMIT
}

impl Spooler {
    /// A spooler writing temporary files in `dir` once more than
    /// `threshold` bytes arrived.
    pub fn new(dir: &Path, threshold: u64) -> Self {
        Spooler {
            dir: dir.to_path_buf(),
            threshold: threshold.max(MIN_THRESHOLD) as usize,
            head: Vec::new(),
            tail: None,
        }
    }

    /// Whether `pending` bytes held by the session should be handed to a
    /// spooler with this `threshold` now.
    pub fn wants_at(threshold: u64, pending: usize) -> bool {
        pending as u64 >= threshold.max(MIN_THRESHOLD)
    }

    /// Takes more content. The header section stays in memory; the rest
    /// goes to the temporary file.
    pub async fn push(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        if self.tail.is_none()
            && (!header_complete(&self.head) || self.head.len() + chunk.len() <= self.threshold)
        {
            if self.head.is_empty() {
                self.head = chunk;
            } else {
                self.head.extend_from_slice(&chunk);
            }
            return Ok(());
        }
        if self.tail.is_none() {
            let dir = self.dir.clone();
            let f = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                tempfile::tempfile_in(&dir)
            })
            .await
            .map_err(io::Error::other)??;
            self.tail = Some(Tail {
                file: Arc::new(f),
                base: 0,
                len: 0,
            });
        }
        if let Some(t) = self.tail.as_mut() {
            let (file, at) = (t.file.clone(), t.len);
            let n = chunk.len() as u64;
            tokio::task::spawn_blocking(move || file.write_all_at(&chunk, at))
                .await
                .map_err(io::Error::other)??;
            t.len += n;
        }
        Ok(())
    }

    /// The complete message.
    pub async fn finish(mut self, rest: Vec<u8>) -> io::Result<Message> {
        if !rest.is_empty() {
            self.push(rest).await?;
        }
        Ok(Message {
            head: self.head,
            tail: self.tail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(m: &Message, from: usize) -> Vec<u8> {
        let mut c = m.chunks(from);
        let mut out = Vec::new();
        while let Some(b) = c.next().await.unwrap() {
            out.extend_from_slice(b);
        }
        out
    }

    #[tokio::test]
    async fn spools_past_the_threshold_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spooler::new(dir.path(), 64 << 10);
        let mut all = b"Subject: x\r\n\r\n".to_vec();
        s.push(all.clone()).await.unwrap();
        for i in 0..40u8 {
            let piece = vec![i; 10_000];
            all.extend_from_slice(&piece);
            s.push(piece).await.unwrap();
        }
        let m = s.finish(b"end\r\n".to_vec()).await.unwrap();
        all.extend_from_slice(b"end\r\n");
        assert!(m.is_spooled());
        assert!(m.head.len() < 100_000);
        assert_eq!(m.len(), all.len() as u64);
        assert_eq!(collect(&m, 0).await, all);
        assert_eq!(collect(&m, 9).await, &all[9..]);
        assert!(m.ends_with_crlf().await.unwrap());
    }

    #[tokio::test]
    async fn small_messages_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spooler::new(dir.path(), 1 << 20);
        s.push(b"a: b\r\n\r\nx".to_vec()).await.unwrap();
        let m = s.finish(Vec::new()).await.unwrap();
        assert!(!m.is_spooled());
        assert!(!m.ends_with_crlf().await.unwrap());
        assert_eq!(collect(&m, 0).await, b"a: b\r\n\r\nx");
    }

    #[tokio::test]
    async fn headers_stay_in_memory_even_past_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spooler::new(dir.path(), 64 << 10);
        let long_header = format!("X-Long: {}\r\n", "h".repeat(100_000));
        s.push(long_header.clone().into_bytes()).await.unwrap();
        s.push(b"\r\nbody".to_vec()).await.unwrap();
        let m = s.finish(Vec::new()).await.unwrap();
        assert!(m.head.starts_with(long_header.as_bytes()) && m.head.ends_with(b"\r\n\r\nbody"));
    }
}
