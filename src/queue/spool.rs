//! The queue's files under `{spool}/queue/`: one `ID.msg` per message
//! (envelope and content, immutable once written) and one `ID.st` with its
//! delivery state (rewritten as it changes). Blocking I/O, called from
//! blocking threads; only [`Spool::sync`] is async.
//!
//! **Commit point.** An `ID.msg` file is written in one go and ends with a
//! trailer holding the SHA-256 of everything before it. The client's 250 is
//! sent only after a `syncfs(2)` that started after the file was complete
//! has returned. So at recovery a file with a valid trailer is committed
//! (delivered), and a file without one was never acknowledged (removed).
//! A complete file whose sync had not finished when the machine died is
//! indistinguishable from an acknowledged one and is delivered too: the
//! client may then send it again (a duplicate, never a loss).
//!
//! **Group commit.** Writers do not sync their own file. They ask the one
//! committer thread, which takes every request waiting at that moment and
//! answers them all with a single `syncfs` of the spool's file system: one
//! sync covers every message committed in the same window, so throughput
//! grows with concurrency instead of stopping at the disk's sync rate.
//! (`syncfs` flushes the whole file system the spool is on; a spool on its
//! own file system keeps other writers' data out of that sync.)

use crate::delivery::engine::Job;
use crate::message::Message;
use ring::digest;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

const MAGIC: &[u8; 7] = b"SHQ1msg";
const TRAILER_END: &[u8; 4] = b"END\n";
const TRAILER_LEN: u64 = 32 + 4;

/// The head of a message read back into memory (the rest stays in the
/// file); it holds the header section, which the rewrite needs.
const HEAD_IN_MEMORY: u64 = crate::message::HEADER_LIMIT as u64;

/// One recipient's delivery state (PRODUCT §4.1 `queue list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    /// Not tried yet.
    Pending,
    /// Tried and failed temporarily: retried.
    Deferred,
    /// Accepted by a server: never sent again.
    Delivered,
    /// Refused permanently or expired: in a DSN.
    Failed,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptState {
    /// The envelope recipient.
    pub address: String,
    /// Where it stands.
    pub state: RcptStatus,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

impl RcptState {
    /// Whether it still needs an attempt.
    pub fn open(&self) -> bool {
        matches!(self.state, RcptStatus::Pending | RcptStatus::Deferred)
    }
}

/// The mutable delivery state of a queued message (`ID.st`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt (milliseconds since the epoch).
    pub next_attempt_ms: i64,
    /// Held by an operator: not attempted until released.
    pub held: bool,
    /// Every envelope recipient.
    pub rcpts: Vec<RcptState>,
}

impl State {
    /// The state of a message not tried yet.
    pub fn new(rcpts: Vec<String>, now_ms: i64) -> State {
        State {
            attempts: 0,
            next_attempt_ms: now_ms,
            held: false,
            rcpts: rcpts
                .into_iter()
                .map(|address| RcptState {
                    address,
                    state: RcptStatus::Pending,
                    last_error: None,
                })
                .collect(),
        }
    }
}

/// A message found in the spool at start.
#[derive(Debug)]
pub struct Recovered {
    /// Its envelope.
    pub job: Job,
    /// Its state (from `ID.st`, or new when there is none).
    pub state: Option<State>,
    /// Content size in bytes.
    pub size: u64,
}

/// Whether an I/O error means the disk (or quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(122)
}

type SyncResult = Result<(), (io::ErrorKind, String)>;
type SyncReply = tokio::sync::oneshot::Sender<SyncResult>;
type WriteReply = tokio::sync::oneshot::Sender<io::Result<(Job, Message)>>;

/// What the committer thread is asked to do.
enum Op {
    /// Write a small message's file and answer once it is synced.
    Write(Box<(Job, Message)>, WriteReply),
    /// Answer once everything written so far is synced.
    Sync(SyncReply),
    /// Remove a message's files (no answer, no sync).
    Remove(String),
}

/// Messages up to this size are written by the committer itself (one
/// thread hop per message); larger ones on a blocking thread of their own,
/// so they do not hold up the others.
const COMMITTER_WRITES_UP_TO: u64 = 256 << 10;

/// The queue directory and its committer thread.
pub struct Spool {
    dir: PathBuf,
    tx: Mutex<mpsc::Sender<Op>>,
}

impl Spool {
    /// Opens (creating) `dir` and starts the committer thread.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let handle = File::open(dir)?;
        let (tx, rx) = mpsc::channel::<Op>();
        // The committer's own handle: only its file methods are used (its
        // sender is never used, so the thread ends when `Spool` is dropped).
        let owner = Spool {
            dir: dir.to_path_buf(),
            tx: Mutex::new(mpsc::channel().0),
        };
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || committer(&owner, handle, rx))?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            tx: Mutex::new(tx),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn msg_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.st"))
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(op)
            .map_err(|_| io::Error::other("the spool committer stopped"))
    }

    /// Waits until everything written before this call is on stable
    /// storage (one `syncfs` shared with every concurrent caller).
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Sync(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((kind, text))) => Err(io::Error::new(kind, text)),
            Err(_) => Err(io::Error::other("the spool committer stopped")),
        }
    }

    /// Writes `ID.msg` and waits until it is on stable storage (group
    /// commit); gives the job and message back. On error nothing is left
    /// behind.
    pub async fn commit(self: &Arc<Self>, job: Job, msg: Message) -> io::Result<(Job, Message)> {
        let stopped = || io::Error::other("the spool committer stopped");
        if msg.len() > COMMITTER_WRITES_UP_TO {
            let me = self.clone();
            let (job, msg) = tokio::task::spawn_blocking(move || {
                me.write_message(&job, &msg).map(|()| (job, msg))
            })
            .await
            .map_err(io::Error::other)??;
            if let Err(e) = self.sync().await {
                let (me, id) = (self.clone(), job.id.clone());
                let _ = tokio::task::spawn_blocking(move || me.remove(&id)).await;
                return Err(e);
            }
            return Ok((job, msg));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Write(Box::new((job, msg)), tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Removes a message's files in the background (it is done).
    pub fn remove_later(&self, id: &str) {
        if self.send(Op::Remove(id.to_owned())).is_err() {
            self.remove(id);
        }
    }

    /// Writes `ID.msg` (not yet synced). On error nothing is left behind.
    pub fn write_message(&self, job: &Job, msg: &Message) -> io::Result<()> {
        let path = self.msg_path(&job.id);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let res = (|| {
            let meta = serde_json::to_vec(job).map_err(io::Error::other)?;
            let mut w = HashingWriter {
                inner: BufWriter::with_capacity(64 << 10, f),
                ctx: digest::Context::new(&digest::SHA256),
            };
            w.write_all(MAGIC)?;
            w.write_all(&(meta.len() as u32).to_le_bytes())?;
            w.write_all(&meta)?;
            w.write_all(&msg.len().to_le_bytes())?;
            msg.write_to(&mut w)?;
            let sum = w.ctx.finish();
            let mut inner = w.inner;
            inner.write_all(sum.as_ref())?;
            inner.write_all(TRAILER_END)?;
            inner.flush()
        })();
        if res.is_err() {
            let _ = fs::remove_file(&path);
        }
        res
    }

    /// Writes `ID.st` atomically (temporary file, then rename; not synced).
    pub fn write_state(&self, id: &str, state: &State) -> io::Result<()> {
        let tmp = self.dir.join(format!("{id}.st.tmp"));
        let res = (|| {
            let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
            fs::write(&tmp, bytes)?;
            fs::rename(&tmp, self.state_path(id))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Removes a message's files (it is done).
    pub fn remove(&self, id: &str) {
        // The state file first: a message file without state is retried
        // from scratch, never the other way round.
        let _ = fs::remove_file(self.state_path(id));
        if let Err(e) = fs::remove_file(self.msg_path(id))
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::error!(id, error = %e, "cannot remove a delivered message from the spool");
        }
    }

    /// Reads a queued message back: its envelope and its content (the
    /// header section in memory, the rest read from the file as it is sent).
    pub fn load(&self, id: &str) -> io::Result<(Job, Message)> {
        let f = File::open(self.msg_path(id))?;
        let (job, data_at, len) = read_meta(&f)?;
        let msg = Message::from_file(Arc::new(f), data_at, len, HEAD_IN_MEMORY)?;
        Ok((job, msg))
    }

    /// Finds every committed message; removes what was never acknowledged
    /// (files without a valid trailer, temporary files, orphan states).
    pub fn recover(&self) -> io::Result<Vec<Recovered>> {
        let mut out = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in &names {
            let path = self.dir.join(name);
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if let Some(id) = name.strip_suffix(".st") {
                if !self.msg_path(id).exists() {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let Some(id) = name.strip_suffix(".msg") else {
                continue;
            };
            match verify(&path) {
                Ok(Some((job, size))) if job.id == id => {
                    let state = fs::read(self.state_path(id))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<State>(&b).ok());
                    out.push(Recovered { job, state, size });
                }
                Ok(_) => {
                    tracing::warn!(file = %path.display(), "removing a queue file that was never committed");
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(self.state_path(id));
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot read a queue file; left in place");
                }
            }
        }
        Ok(out)
    }
}

/// Reads the envelope of an `ID.msg` file: (job, where the content
/// starts, content length).
fn read_meta(f: &File) -> io::Result<(Job, u64, u64)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut head = [0u8; 11];
    f.read_exact_at(&mut head, 0)?;
    if &head[..7] != MAGIC {
        return Err(bad("not a queue file"));
    }
    let meta_len = u32::from_le_bytes(head[7..11].try_into().expect("4 bytes")) as u64;
    if meta_len > 64 << 20 {
        return Err(bad("envelope too large"));
    }
    let mut meta = vec![0u8; meta_len as usize];
    f.read_exact_at(&mut meta, 11)?;
    let job: Job = serde_json::from_slice(&meta).map_err(|e| bad(&e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact_at(&mut len, 11 + meta_len)?;
    Ok((job, 11 + meta_len + 8, u64::from_le_bytes(len)))
}

/// Checks a queue file's trailer; `None` when it is incomplete or corrupt.
fn verify(path: &Path) -> io::Result<Option<(Job, u64)>> {
    let mut f = File::open(path)?;
    let total = f.metadata()?.len();
    let Ok((job, data_at, len)) = read_meta(&f) else {
        return Ok(None);
    };
    if data_at + len + TRAILER_LEN != total {
        return Ok(None);
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut left = data_at + len;
    let mut buf = vec![0u8; 256 << 10];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n])?;
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    f.read_exact(&mut trailer)?;
    let ok = &trailer[..32] == ctx.finish().as_ref() && &trailer[32..] == TRAILER_END;
    Ok(ok.then_some((job, len)))
}

struct HashingWriter<W: Write> {
    inner: W,
    ctx: digest::Context,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The committer: takes every request waiting when it wakes, writes the
/// small messages among them, removes what is done, and answers all
/// writes and syncs after one `syncfs`.
fn committer(spool: &Spool, dir: File, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut writes = Vec::new();
        let mut syncs = Vec::new();
        for op in std::iter::once(first).chain(rx.try_iter().take(1023)) {
            match op {
                Op::Write(b, tx) => {
                    let (job, msg) = *b;
                    let r = spool.write_message(&job, &msg);
                    writes.push((r, job, msg, tx));
                }
                Op::Sync(tx) => syncs.push(tx),
                Op::Remove(id) => spool.remove(&id),
            }
        }
        if writes.is_empty() && syncs.is_empty() {
            continue;
        }
        let r: SyncResult = rustix::fs::syncfs(&dir).map_err(|e| {
            let e = io::Error::from(e);
            (e.kind(), e.to_string())
        });
        for (w, job, msg, tx) in writes {
            let w = match (w, &r) {
                (Ok(()), Ok(())) => Ok((job, msg)),
                (Ok(()), Err((kind, text))) => {
                    // Not durable: the client must not get a 250, and the
                    // message must not be delivered behind its back.
                    spool.remove(&job.id);
                    Err(io::Error::new(*kind, text.clone()))
                }
                (Err(e), _) => Err(e),
            };
            let _ = tx.send(w);
        }
        for tx in syncs {
            let _ = tx.send(r.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::policy::{IdentifiedBy, RcptVerdict, RecipientPlan};

    fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            received_at: 1,
            envelope: Envelope {
                mail_from: "a@b.test".into(),
                recipients: vec![RecipientPlan {
                    original: "c@d.test".into(),
                    verdict: RcptVerdict::Deliver,
                }],
                application: "app".into(),
                identified_by: IdentifiedBy::ClientIp,
                smtputf8: false,
                body_8bit: false,
                helo: "h".into(),
                auth_user: None,
                tls: None,
                peer: "127.0.0.1:1".parse().unwrap(),
            },
            received: "Received: x\r\n".into(),
            dsn: None,
            session: None,
        }
    }

    #[tokio::test]
    async fn written_messages_are_recovered_and_torn_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let body = b"Subject: x\r\n\r\nhello\r\n".to_vec();
        s.write_message(&job("m1"), &Message::in_memory(body.clone()))
            .unwrap();
        s.write_message(&job("m2"), &Message::in_memory(body.clone()))
            .unwrap();
        s.sync().await.unwrap();
        // m2 torn: cut its trailer off, as a crash in the middle would.
        let p2 = dir.path().join("m2.msg");
        let len = fs::metadata(&p2).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&p2)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        fs::write(dir.path().join("m3.msg"), b"garbage").unwrap();
        fs::write(dir.path().join("x.st.tmp"), b"{").unwrap();
        let mut st = State::new(vec!["c@d.test".into()], 5);
        st.rcpts[0].state = RcptStatus::Deferred;
        s.write_state("m1", &st).unwrap();
        let found = s.recover().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].job.id, "m1");
        assert_eq!(found[0].state.as_ref(), Some(&st));
        assert_eq!(found[0].size, body.len() as u64);
        assert!(!p2.exists() && !dir.path().join("m3.msg").exists());
        assert!(!dir.path().join("x.st.tmp").exists());
        let (j, m) = s.load("m1").unwrap();
        assert_eq!(j.envelope.mail_from, "a@b.test");
        let mut out = Vec::new();
        m.write_to(&mut out).unwrap();
        assert_eq!(out, body);
        s.remove("m1");
        assert!(s.recover().unwrap().is_empty());
    }

    #[test]
    fn a_duplicate_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let m = Message::in_memory(b"x\r\n".to_vec());
        s.write_message(&job("m1"), &m).unwrap();
        assert!(s.write_message(&job("m1"), &m).is_err());
        assert!(s.load("m1").is_ok(), "the first file stays");
    }
}
