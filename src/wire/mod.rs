//! The Jupyter wire protocol over ZeroMQ.
//!
//! This layer knows nothing about Rust or evaluation. It owns:
//! - [`connection`]: reading and validating the connection file Jupyter hands the kernel;
//! - [`message`]: the multipart message codec (`<IDS|MSG>`, HMAC-SHA256 signatures checked in
//!   constant time, header / parent_header / metadata / content / buffers);
//! - [`replay`]: refusing a signed message seen before in the session;
//! - [`sockets`]: binding shell, control, stdin (ROUTER), iopub (XPUB, with `iopub_welcome`) and
//!   heartbeat (REP), and turning them into channels of verified messages.
//!
//! The kernel layer talks to it only through [`sockets::Sockets`], [`message::Incoming`] and
//! [`message::Outgoing`].

pub mod connection;
#[cfg(test)]
mod fuzz;
pub mod message;
pub mod replay;
pub mod sockets;

pub use connection::ConnectionFile;
pub use message::{Incoming, Outgoing};
pub use sockets::Sockets;
