//! The commit log: what makes a small message durable before its 250
//! without syncing the file system, and without a file of its own.
//!
//! A committed message's `ID.msg` bytes are appended, as a record, to a
//! *segment*: a file of fixed size that was filled with zeros and synced
//! when it was made, so appending to it changes no file-system metadata
//! and its `fdatasync` is one data write and a cache flush, not a journal
//! commit. One `fdatasync` answers every message of a batch (group
//! commit). Neither `syncfs` (which writes out every other writer's dirty
//! data on the file system) nor a per-file `fsync` (which waits for the
//! journal) is on the path of a 250: on the benchmark machine, with a
//! neighbour writing large files, the segment's `fdatasync` took
//! 0.1–0.3 ms where `syncfs` took 0.4–38 ms (ARCHITECTURE.md, "The
//! queue").
//!
//! **Files only when needed.** Most messages are delivered and done
//! while their record is in the active segment: they never get an
//! `ID.msg` (no create, write, unlink, or inode churn). Their content is
//! read back from the log if needed (`Spool::load`).
//!
//! **Checkpoint.** When a segment is full it is sealed; the spool gives
//! each message it still holds its own `ID.msg`, and a background thread
//! syncs those files (usually few: most messages are done by then) and
//! the directory: they are then durable by themselves, and the segment is
//! retired (renamed `free-N.wal`) and later reused under a new sequence
//! number. At most [`MAX_SEGMENTS`] segments exist; when none is free, or
//! one cannot be made (a full disk), the spool falls back to writing and
//! syncing each message's file for that batch.
//!
//! **Records.** `kind (1) | segment seq (8, LE) | length (4, LE) | body |
//! first 8 bytes of SHA-256 over everything before`. Kind `M` carries the
//! complete `ID.msg` bytes, kind `D` a message id that is done (delivered,
//! failed or deleted); `D` records are not synced by themselves (losing
//! one costs a duplicate delivery, never a loss). A record whose sequence
//! number is not the segment's (left over from the segment's previous
//! use), or whose checksum fails (torn by a crash), ends the segment.
//!
//! **Replay.** At start every live segment is read in sequence order; the
//! messages they hold that are not marked done and whose `ID.msg` is
//! missing or incomplete are written to their files, the file system is
//! synced, and the segments are retired. From then on the directory scan
//! of `spool.rs` sees every committed message.

use ring::digest;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

/// Size of one segment.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// Segments in existence at most (live, sealed and free together).
pub const MAX_SEGMENTS: usize = 8;

/// Kind of a record holding a message's `ID.msg` bytes.
pub const KIND_MESSAGE: u8 = b'M';
/// Kind of a record marking a message done.
pub const KIND_DONE: u8 = b'D';
const HEADER: usize = 1 + 8 + 4;
const CHECK: usize = 8;

/// Encodes one record (public for the fuzz target).
pub fn record(kind: u8, seq: u64, body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let sum = digest::digest(&digest::SHA256, &out[start..]);
    out.extend_from_slice(&sum.as_ref()[..CHECK]);
}

/// Decodes the records of a segment with sequence number `seq`, up to
/// the first one that is not part of this use of the segment (public for
/// the fuzz target).
pub fn records(buf: &[u8], seq: u64) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER + CHECK <= buf.len() {
        let kind = buf[at];
        let rseq = u64::from_le_bytes(buf[at + 1..at + 9].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(buf[at + 9..at + 13].try_into().expect("4 bytes")) as usize;
        if !matches!(kind, KIND_MESSAGE | KIND_DONE) || rseq != seq {
            break;
        }
        let end = at + HEADER + len;
        if end + CHECK > buf.len() {
            break;
        }
        let sum = digest::digest(&digest::SHA256, &buf[at..end]);
        if sum.as_ref()[..CHECK] != buf[end..end + CHECK] {
            break;
        }
        out.push((kind, &buf[at + HEADER..end]));
        at = end + CHECK;
    }
    out
}

struct Segment {
    file: Arc<File>,
    seq: u64,
    /// Where the next record goes.
    at: u64,
}

/// Where a committed message's bytes lie in the log.
#[derive(Clone)]
pub struct Location {
    /// The segment's sequence number.
    pub seq: u64,
    /// The segment (kept open: it is not reused before the message's own
    /// file is written).
    pub file: Arc<File>,
    /// Offset of the bytes.
    pub at: u64,
    /// Their length.
    pub len: u64,
}

impl Location {
    /// Reads the message's `ID.msg` bytes back.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.len as usize];
        self.file.read_exact_at(&mut buf, self.at)?;
        Ok(buf)
    }
}

/// A message found in the commit log at start: its id and its complete
/// `ID.msg` bytes.
pub struct Replayed {
    /// Queue id.
    pub id: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// Retired segments, ready for reuse (filled by the checkpoint thread).
type Free = Arc<Mutex<Vec<PathBuf>>>;

/// The commit log of one spool directory; used by the committer thread
/// only.
pub struct Wal {
    dir: PathBuf,
    dir_fd: File,
    active: Option<Segment>,
    next_seq: u64,
    /// Segments that exist (any state).
    count: usize,
    free: Free,
    /// The segments found at start, retired by [`Wal::retire_replayed`].
    replayed: Vec<(u64, PathBuf)>,
    checkpoint: mpsc::Sender<Sealed>,
    /// Segments sealed since the last [`Wal::take_sealed`]: their
    /// checkpoint waits until the caller has written the files of the
    /// messages they still hold.
    sealed: Vec<u64>,
    /// Ids of messages done whose marks are not written yet; encoded
    /// only when written, with the sequence number of the segment they go
    /// to (a mark encoded for one segment and written into the next would
    /// end that segment's replay at its first record).
    pending: Vec<String>,
    /// Bytes the pending marks take once encoded.
    pending_len: u64,
    /// The log failed (I/O error): it is no longer used.
    broken: bool,
    /// The last time a new segment could not be made (the disk is full,
    /// say): not tried again for [`RETRY_MAKE`].
    make_failed: Option<std::time::Instant>,
}

/// How long after a failure to make a segment the next one is tried.
const RETRY_MAKE: std::time::Duration = std::time::Duration::from_secs(10);

fn seg_name(seq: u64) -> String {
    format!("{seq:016}.wal")
}

/// The name of segment `seq` once retired.
fn free_name(seq: u64) -> String {
    format!("free-{seq:016}.wal")
}

impl Wal {
    /// Opens the log in `dir` (creating it), replays what it holds, and
    /// starts the checkpoint thread. `spool_dir` is where the messages'
    /// files live (and the file system that is synced).
    pub fn open(dir: &Path, spool_dir: &Path) -> io::Result<(Wal, Vec<Replayed>)> {
        fs::create_dir_all(dir)?;
        let dir_fd = File::open(dir)?;
        let mut live: Vec<(u64, PathBuf)> = Vec::new();
        let mut free: Vec<PathBuf> = Vec::new();
        let mut max_free = 0;
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if let Some(seq) = name
                .strip_suffix(".wal")
                .and_then(|s| s.parse::<u64>().ok())
            {
                live.push((seq, path));
            } else if let Some(seq) = name
                .strip_prefix("free-")
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                max_free = max_free.max(seq);
                free.push(path);
            } else {
                // A segment being made when the process stopped.
                let _ = fs::remove_file(&path);
            }
        }
        live.sort();
        // Every message of every live segment, minus those marked done.
        let mut found: Vec<Replayed> = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        for (seq, path) in &live {
            let buf = fs::read(path)?;
            for (kind, body) in records(&buf, *seq) {
                match kind {
                    KIND_MESSAGE => {
                        if let Some(id) = super::spool::id_of(body) {
                            found.push(Replayed {
                                id,
                                bytes: body.to_vec(),
                            });
                        }
                    }
                    _ => {
                        done.insert(String::from_utf8_lossy(body).into_owned());
                    }
                }
            }
        }
        found.retain(|r| !done.contains(&r.id));
        // Never a sequence number used before: a reused segment may still
        // hold records of its earlier uses, which must not read as live.
        let next_seq = live.last().map_or(0, |(s, _)| *s).max(max_free) + 1;
        let count = live.len() + free.len();
        let free: Free = Arc::new(Mutex::new(free));
        let (tx, rx) = mpsc::channel::<Sealed>();
        let spool_fd = File::open(spool_dir)?;
        {
            let (free, dir_fd, dir) = (free.clone(), dir_fd.try_clone()?, dir.to_path_buf());
            std::thread::Builder::new()
                .name("spool-checkpoint".into())
                .spawn(move || checkpointer(&dir, &dir_fd, &spool_fd, &free, rx))?;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            dir_fd,
            active: None,
            next_seq,
            count,
            free,
            replayed: live,
            checkpoint: tx,
            sealed: Vec::new(),
            pending: Vec::new(),
            pending_len: 0,
            broken: false,
            make_failed: None,
        };
        // The replayed segments are retired once the caller has written
        // back what they hold and synced (see `retire_replayed`).
        Ok((wal, found))
    }

    /// After replay: the messages are durable in their own files; every
    /// segment that existed at start is retired (synchronously).
    pub fn retire_replayed(&mut self) -> io::Result<()> {
        let mut g = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for (seq, path) in std::mem::take(&mut self.replayed) {
            let to = self.dir.join(free_name(seq));
            match fs::rename(&path, &to) {
                Ok(()) => g.push(to),
                // Retired meanwhile by a stopping predecessor's checkpoint
                // (a restart within one process, as in tests).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        drop(g);
        self.dir_fd.sync_all()
    }

    /// Whether records can be appended now (a segment is active or can be
    /// had). False when the log is broken or every segment is waiting for
    /// its checkpoint: the caller then syncs the file system instead.
    fn ready(&mut self, need: u64) -> bool {
        if self.broken {
            return false;
        }
        if let Some(s) = &self.active
            && s.at + need <= SEGMENT_BYTES
        {
            return true;
        }
        if need > SEGMENT_BYTES {
            return false;
        }
        // Seal the active segment (its checkpoint runs in the background,
        // see `take_sealed`) and take the next one.
        if let Some(s) = self.active.take() {
            self.sealed.push(s.seq);
        }
        match self.activate() {
            Ok(true) => true,
            Ok(false) => false,
            Err(e) => {
                tracing::error!(target: "smarthost::queue", error = %e, "the queue's commit log failed; syncing the file system instead");
                self.broken = true;
                false
            }
        }
    }

    /// Makes a free (or new) segment the active one; false when there is
    /// none and no more may be made.
    fn activate(&mut self) -> io::Result<bool> {
        let seq = self.next_seq;
        let path = self.dir.join(seg_name(seq));
        let reuse = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let file = match reuse {
            Some(old) => {
                fs::rename(&old, &path)?;
                OpenOptions::new().read(true).write(true).open(&path)?
            }
            None if self.count < MAX_SEGMENTS
                && self.make_failed.is_none_or(|t| t.elapsed() >= RETRY_MAKE) =>
            {
                let tmp = self.dir.join(format!("new-{seq:016}"));
                match make_segment(&tmp, &path) {
                    Ok(f) => {
                        self.count += 1;
                        self.make_failed = None;
                        f
                    }
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        self.make_failed = Some(std::time::Instant::now());
                        tracing::warn!(target: "smarthost::queue", error = %e, "cannot make a commit log segment; syncing the file system instead for now");
                        return Ok(false);
                    }
                }
            }
            None => return Ok(false),
        };
        // The segment's name (its sequence number) is durable before a
        // record relies on it.
        self.dir_fd.sync_all()?;
        self.next_seq += 1;
        self.active = Some(Segment {
            file: Arc::new(file),
            seq,
            at: 0,
        });
        Ok(true)
    }

    /// Segments sealed since the last call. The caller writes the files of
    /// the messages they still hold, then calls [`Wal::checkpoint`].
    pub fn take_sealed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.sealed)
    }

    /// Retires sealed segment `seq` in the background, once `files` (the
    /// messages it still held, now written to their own files) are synced
    /// and so is the spool directory.
    pub fn checkpoint(&mut self, seq: u64, files: Vec<PathBuf>) {
        let path = self.dir.join(seg_name(seq));
        if self.checkpoint.send(Sealed { seq, path, files }).is_err() {
            self.broken = true;
        }
    }

    /// Appends messages' `ID.msg` bytes and syncs the segment(s): on `Ok`
    /// the messages are durable, and where each one lies is returned (in
    /// order). `Err` means the log cannot take them now (the caller syncs
    /// otherwise).
    pub fn commit(&mut self, files: &[&[u8]]) -> io::Result<Vec<Location>> {
        let mut touched: Vec<Arc<File>> = Vec::new();
        let mut out = Vec::with_capacity(files.len());
        // The batch's records for one segment go out in one write: `buf`
        // holds them, `dest` says where they start.
        let mut buf = Vec::with_capacity(
            files
                .iter()
                .map(|b| HEADER + b.len() + CHECK)
                .sum::<usize>()
                + self.pending_len as usize,
        );
        let mut dest: Option<(Arc<File>, u64)> = None;
        for body in files {
            let need = (HEADER + body.len() + CHECK) as u64 + self.pending_len;
            if self
                .active
                .as_ref()
                .is_none_or(|s| s.at + need > SEGMENT_BYTES)
            {
                // The active segment is sealed below: what is buffered for
                // it goes out first.
                self.write_buffered(&mut buf, &mut dest)?;
            }
            if !self.ready(need) {
                return Err(io::Error::other("no commit log segment available"));
            }
            let s = self.active.as_mut().expect("ready");
            if dest.is_none() {
                dest = Some((s.file.clone(), s.at));
                touched.push(s.file.clone());
            }
            let start = buf.len();
            for id in self.pending.drain(..) {
                record(KIND_DONE, s.seq, id.as_bytes(), &mut buf);
            }
            self.pending_len = 0;
            let body_at = s.at + (buf.len() - start + HEADER) as u64;
            record(KIND_MESSAGE, s.seq, body, &mut buf);
            s.at += (buf.len() - start) as u64;
            out.push(Location {
                seq: s.seq,
                file: s.file.clone(),
                at: body_at,
                len: body.len() as u64,
            });
        }
        self.write_buffered(&mut buf, &mut dest)?;
        for f in &touched {
            if let Err(e) = f.sync_data() {
                self.broken = true;
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Writes the records buffered by [`Wal::commit`] where they belong.
    fn write_buffered(
        &mut self,
        buf: &mut Vec<u8>,
        dest: &mut Option<(Arc<File>, u64)>,
    ) -> io::Result<()> {
        if let Some((file, at)) = dest.take()
            && let Err(e) = file.write_all_at(buf, at)
        {
            self.broken = true;
            return Err(e);
        }
        buf.clear();
        Ok(())
    }

    /// Marks message `id` done; written with the next commit or
    /// [`Wal::flush_done`] (it needs no sync of its own: losing it costs a
    /// duplicate, never a loss).
    pub fn done(&mut self, id: &str) {
        self.pending_len += (HEADER + id.len() + CHECK) as u64;
        self.pending.push(id.to_owned());
        if self.pending_len > 64 << 10 {
            self.flush_done();
        }
        // With no segment to write them to for long, the oldest go
        // (duplicates at worst).
        while self.pending_len > 1 << 20 {
            let id = self.pending.remove(0);
            self.pending_len -= (HEADER + id.len() + CHECK) as u64;
        }
    }

    /// Writes the "done" marks that are waiting into the active segment
    /// (not synced); they wait when there is none or it is full.
    pub fn flush_done(&mut self) {
        if self.pending.is_empty() || self.broken {
            return;
        }
        let Some(s) = &mut self.active else {
            return;
        };
        if s.at + self.pending_len > SEGMENT_BYTES {
            return;
        }
        let mut buf = Vec::with_capacity(self.pending_len as usize);
        for id in &self.pending {
            record(KIND_DONE, s.seq, id.as_bytes(), &mut buf);
        }
        if s.file.write_all_at(&buf, s.at).is_ok() {
            s.at += buf.len() as u64;
            self.pending.clear();
            self.pending_len = 0;
        }
    }

    /// Makes everything written to the active segment durable (the
    /// "done" marks; at shutdown).
    pub fn sync_active(&mut self) -> io::Result<()> {
        self.flush_done();
        match &self.active {
            Some(s) if !self.broken => s.file.sync_data(),
            _ => Ok(()),
        }
    }
}

/// Makes a segment: `SEGMENT_BYTES` of zeros, synced, under its name.
fn make_segment(tmp: &Path, path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    let zeros = vec![0u8; 1 << 20];
    let mut w = &f;
    for _ in 0..SEGMENT_BYTES / zeros.len() as u64 {
        w.write_all(&zeros)?;
    }
    f.sync_all()?;
    fs::rename(tmp, path)?;
    Ok(f)
}

/// A sealed segment handed to the checkpoint.
struct Sealed {
    seq: u64,
    path: PathBuf,
    /// Files written for the messages it still held.
    files: Vec<PathBuf>,
}

/// Retires sealed segments: the files written for the messages they
/// still held are synced (each by itself: no `syncfs`, so other writers'
/// data is not on this path either), then the spool directory, and the
/// segment is renamed free for reuse.
fn checkpointer(
    dir: &Path,
    dir_fd: &File,
    spool_fd: &File,
    free: &Mutex<Vec<PathBuf>>,
    rx: mpsc::Receiver<Sealed>,
) {
    // Segments arrive in sequence order and are retired in that order; one
    // whose retirement failed is tried again (with the ones after it)
    // every second, so replay never sees a gap.
    let mut waiting: std::collections::VecDeque<Sealed> = std::collections::VecDeque::new();
    let mut renamed: Vec<PathBuf> = Vec::new();
    loop {
        let got = if waiting.is_empty() && renamed.is_empty() {
            match rx.recv() {
                Ok(s) => Some(s),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(s) => Some(s),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                // Stopping: what is not retired is replayed at the next start.
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        waiting.extend(got);
        waiting.extend(rx.try_iter());
        let synced = waiting
            .iter()
            .flat_map(|s| &s.files)
            .try_for_each(|f| match File::open(f) {
                Ok(f) => f.sync_data(),
                // Delivered and removed meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            })
            .and_then(|()| spool_fd.sync_all());
        if let Err(e) = synced {
            tracing::error!(target: "smarthost::queue", error = %e, "queue checkpoint: cannot sync the spool; retrying");
            continue;
        }
        while let Some(s) = waiting.front() {
            let to = dir.join(free_name(s.seq));
            match fs::rename(&s.path, &to) {
                Ok(()) => {
                    renamed.push(to);
                    waiting.pop_front();
                }
                Err(e) => {
                    tracing::error!(target: "smarthost::queue", error = %e, "queue checkpoint: cannot retire a commit log segment; retrying");
                    break;
                }
            }
        }
        // Free for reuse once the renames are durable.
        if dir_fd.sync_all().is_ok() {
            free.lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&mut renamed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_stop_at_stale_or_torn_ones() {
        let mut buf = Vec::new();
        record(KIND_MESSAGE, 7, b"hello", &mut buf);
        record(KIND_DONE, 7, b"id1", &mut buf);
        let good = buf.len();
        record(KIND_MESSAGE, 6, b"stale", &mut buf);
        let r = records(&buf, 7);
        assert_eq!(
            r,
            vec![(KIND_MESSAGE, &b"hello"[..]), (KIND_DONE, &b"id1"[..])]
        );
        // Torn: the last record's checksum cut short.
        let mut torn = buf[..good].to_vec();
        record(KIND_MESSAGE, 7, b"world", &mut torn);
        torn.truncate(torn.len() - 3);
        torn.resize(torn.len() + 64, 0);
        assert_eq!(records(&torn, 7).len(), 2);
        // Zeros (a fresh segment) hold nothing.
        assert!(records(&[0u8; 128], 1).is_empty());
    }
}
