//! The inbound SMTP session: protocol state machine (`state`), DATA
//! decoding (`data`), the reply catalogue (`reply`), the driver that
//! connects them to a socket, and the narrow handle (`services`) through
//! which a session reaches the rest of the relay.

pub mod admission;
pub mod data;
pub mod driver;
/// The reply catalogue lives in [`crate::reply`] (the engine uses it too).
pub use crate::reply;
pub mod services;
pub mod state;
pub mod throttle;
