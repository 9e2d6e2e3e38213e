//! Client credentials: argon2id hashing for `hash-password` and the
//! verification the listener runs, never on the runtime's workers (one
//! verification costs tens of milliseconds and ~19 MiB).
//!
//! The listener verifies on a [`Verifier`]: a few dedicated threads, each
//! reusing one argon2 memory buffer. Allocating 19 MiB per check on
//! tokio's blocking pool (up to 512 threads, each with its own malloc
//! arena that keeps freed memory) left hundreds of MiB resident after a
//! burst of failed AUTHs; the buffers here are the whole cost, bounded by
//! the thread count.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// At most this many verifier threads, whatever the CPU count: each holds
/// its argon2 buffer (~19 MiB with the default parameters) for good.
pub const MAX_VERIFIER_THREADS: usize = 4;

/// Checks waiting for a verifier thread before callers wait to queue.
const QUEUE: usize = 64;

/// One password check for a verifier thread.
struct Job {
    hash: String,
    password: String,
    reply: oneshot::Sender<bool>,
}

/// Password verification on a small pool of dedicated threads, each with
/// one reused argon2 memory buffer (see the module docs).
pub struct Verifier {
    jobs: mpsc::Sender<Job>,
}

impl Verifier {
    /// Starts `threads` verifier threads (at least one, at most
    /// [`MAX_VERIFIER_THREADS`]). They end when the verifier is dropped.
    pub fn new(threads: usize) -> Verifier {
        let (jobs, rx) = mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.clamp(1, MAX_VERIFIER_THREADS) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("auth-verify-{i}"))
                .spawn(move || {
                    let mut memory: Vec<Block> = Vec::new();
                    loop {
                        // One thread waits for the next job at a time.
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                        let Some(job) = job else { return };
                        let ok = verify_reusing(&job.hash, &job.password, &mut memory);
                        let _ = job.reply.send(ok);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password verifier thread");
            }
        }
        Verifier { jobs }
    }

    /// Whether `password` matches the PHC string `hash` (see
    /// [`verify_password`]); waits for a verifier thread.
    pub async fn verify(&self, hash: String, password: String) -> bool {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            hash,
            password,
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// [`verify_password`] with the argon2 memory blocks in `memory`, grown
/// as needed and kept for the next check.
fn verify_reusing(hash: &str, password: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

/// Hashing failed (the parameters or the RNG).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// Hashes `password` with argon2id and the crate's recommended parameters,
/// returning a PHC string for `password_hash`.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`. Constant-time in the
/// password; a malformed hash never matches. Blocking: call it from
/// `spawn_blocking`.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reusing_memory_gives_the_same_answers() {
        let h = hash_password("s3cret").unwrap();
        let mut memory = Vec::new();
        assert!(verify_reusing(&h, "s3cret", &mut memory));
        assert!(!verify_reusing(&h, "s3cret ", &mut memory));
        assert!(verify_reusing(&h, "s3cret", &mut memory));
        assert!(!verify_reusing("not a hash", "s3cret", &mut memory));
        // A hash with other parameters grows the buffer.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert!(verify_reusing(&small, "pw", &mut memory));
        assert!(!verify_reusing(&small, "px", &mut memory));
        assert!(verify_reusing(&h, "s3cret", &mut memory));
    }

    #[tokio::test]
    async fn the_verifier_pool_answers() {
        let v = Verifier::new(2);
        let h = hash_password("s3cret").unwrap();
        assert!(v.verify(h.clone(), "s3cret".into()).await);
        assert!(!v.verify(h, "nope".into()).await);
    }

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cret "));
        assert!(!verify_password("not a hash", "s3cret"));
    }
}
