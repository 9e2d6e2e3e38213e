//! The inbound SMTP session: protocol state machine (`state`), DATA
//! decoding (`data`), the reply catalogue (`reply`), and the driver that
//! connects them to a socket.

pub mod admission;
pub mod data;
pub mod driver;
/// The reply catalogue lives in [`crate::reply`] (the engine uses it too).
pub use crate::reply;
pub mod state;
pub mod throttle;
