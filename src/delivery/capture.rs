//! The capture outbox server kind (PRODUCT §3.5): one `.eml` and one
//! `.json` envelope file per message, each written to a temporary name,
//! fsynced and renamed, so a reader never sees half a message. The `.json`
//! is renamed last: when it exists, the `.eml` is complete.

use crate::message::Message;
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// The envelope file's content.
#[derive(Debug, Serialize)]
pub struct CaptureEnvelope<'a> {
    /// Message id.
    pub id: &'a str,
    /// Seconds since the epoch when the message was accepted.
    pub received_at: i64,
    /// MAIL FROM as relayed (after rewriting).
    pub mail_from: &'a str,
    /// Recipients as relayed (after blacklist and test mode).
    pub rcpt_to: &'a [String],
    /// MAIL FROM as the client sent it.
    pub original_mail_from: &'a str,
    /// Every recipient the client gave, with what policy did to it.
    pub recipients: &'a [crate::policy::RecipientPlan],
    /// Application.
    pub application: &'a str,
    /// Tenant.
    pub tenant: &'a str,
    /// This server's name.
    pub server: &'a str,
    /// Client address.
    pub client_ip: std::net::IpAddr,
    /// EHLO name.
    pub helo: &'a str,
    /// AUTH user.
    pub auth_user: Option<&'a str>,
    /// TLS version, if the client used TLS.
    pub tls: Option<&'a str>,
    /// Size of the `.eml` in bytes.
    pub size: u64,
}

async fn write_atomic(
    dir: &Path,
    name: &str,
    parts: impl AsyncFnOnce(&mut tokio::fs::File) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .await?;
    let res = async {
        parts(&mut f).await?;
        f.flush().await?;
        f.sync_all().await
    }
    .await;
    if let Err(e) = res {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    drop(f);
    tokio::fs::rename(&tmp, &dest).await?;
    Ok(dest)
}

/// Writes `header` followed by the message from `body_offset` as
/// `{id}.eml`, then the envelope as `{id}.json`, into `dir`.
pub async fn store(
    dir: &Path,
    id: &str,
    header: &[u8],
    msg: &Message,
    body_offset: usize,
    env: &CaptureEnvelope<'_>,
) -> io::Result<u64> {
    tokio::fs::create_dir_all(dir).await?;
    let mut size = header.len() as u64;
    write_atomic(dir, &format!("{id}.eml"), async |f| {
        let mut w = tokio::io::BufWriter::with_capacity(256 << 10, f);
        w.write_all(header).await?;
        let mut chunks = msg.chunks(body_offset);
        while let Some(c) = chunks.next().await? {
            size += c.len() as u64;
            w.write_all(c).await?;
        }
        w.flush().await
    })
    .await?;
    let env = CaptureEnvelope { size, ..*env };
    let json = serde_json::to_vec_pretty(&env).map_err(io::Error::other)?;
    let eml = dir.join(format!("{id}.eml"));
    if let Err(e) = write_atomic(dir, &format!("{id}.json"), async |f| {
        f.write_all(&json).await
    })
    .await
    {
        let _ = tokio::fs::remove_file(&eml).await;
        return Err(e);
    }
    // The directory entries themselves must survive a crash too.
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
    Ok(size)
}
