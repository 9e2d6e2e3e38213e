//! smarthost: an SMTP submission proxy ("smart relay").
//!
//! The path of one message, and the module that owns each step:
//!
//! 1. [`config`] — the validated, immutable snapshot every step reads.
//! 2. [`auth`] — client password hashes (argon2id).
//! 3. [`policy`] — who is sending (application, tenant) and what the
//!    effective settings, recipients and server chain are. Pure.
//! 4. [`rewrite`] — the header changes (From, Reply-To, Sender, Subject,
//!    X-Original-To) on raw message bytes; the body is never touched. Pure.
//! 5. [`explain`] — the dry run of 3 and 4 for the CLI.
//! 6. [`cli`] — the command line.
//!
//! Modules that touch sockets or files sit at the edges; the pure ones take
//! everything, including the time, as arguments.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod blacklist;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod envelope;
pub mod explain;
pub mod health;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod notify;
pub mod oauth;
pub mod outcome;
pub mod policy;
pub mod proxy;
pub mod queue;
pub mod reply;
pub mod rewrite;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod util;
