//! Binding the five Jupyter sockets and moving verified messages in and out of them.
//!
//! Each socket is served by its own tokio task, so a busy shell never delays heartbeat or
//! control. Incoming messages are decoded and verified before they are handed on; anything that
//! fails verification, or replays a message already seen, is logged and dropped.
//!
//! Every socket refuses frames and messages above [`crate::limits`] before allocating for them
//! (a patched zeromq decoder, see `vendor/zeromq/RUSTLOOP-PATCH.md`): the offending peer is
//! disconnected and the socket goes on serving the others. A peer that does not complete the
//! ZMTP handshake within [`HANDSHAKE_TIMEOUT`] is dropped too.

use super::connection::{Channel, ConnectionFile};
use super::message::{Incoming, Outgoing, Signer};
use super::replay::ReplayGuard;
use anyhow::Result;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use zeromq::{
    RepSocket, RouterRecvHalf, RouterSendHalf, RouterSocket, Socket, SocketOptions, SocketRecv,
    SocketSend, XPubSocket, ZmqMessage,
};

/// A peer that has not finished the ZMTP handshake this long after connecting is dropped
/// (real clients take milliseconds).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Options for every socket: the inbound size limits and the handshake timeout.
fn options() -> SocketOptions {
    let limits = crate::limits::get();
    let mut options = SocketOptions::default();
    options
        .max_message_size(limits.frame, limits.message)
        .handshake_timeout(HANDSHAKE_TIMEOUT);
    options
}

/// Bound sockets: receivers for requests and a [`Sender`] for everything outgoing.
pub struct Sockets {
    pub shell: mpsc::Receiver<Incoming>,
    pub control: mpsc::Receiver<Incoming>,
    pub stdin: mpsc::Receiver<Incoming>,
    pub sender: Sender,
}

/// Cheaply cloneable handle for sending replies and publishing on iopub.
#[derive(Clone)]
pub struct Sender {
    shell: RouterSendHalf,
    control: RouterSendHalf,
    stdin: RouterSendHalf,
    iopub: mpsc::UnboundedSender<Outgoing>,
    signer: Signer,
    session: std::sync::Arc<str>,
}

impl Sender {
    /// Queues a message on iopub. Messages are published in the order they are queued.
    pub fn publish(&self, message: Outgoing) {
        // The iopub task only ends at shutdown; a message published after that has no reader.
        let _ = self.iopub.send(message);
    }

    pub async fn reply(&self, channel: Channel, message: Outgoing) {
        let mut half = match channel {
            Channel::Shell => self.shell.clone(),
            Channel::Control => self.control.clone(),
            Channel::Stdin => self.stdin.clone(),
            Channel::Iopub | Channel::Heartbeat => {
                unreachable!("replies go to ROUTER sockets only")
            }
        };
        let frames = message.encode(&self.signer, &self.session);
        if message.identities.is_empty() {
            tracing::warn!(msg_type = %message.msg_type, "reply without routing identity dropped");
            return;
        }
        match ZmqMessage::try_from(frames) {
            Ok(zmq) => {
                if let Err(e) = half.send(zmq).await {
                    tracing::warn!(?channel, error = %e, "sending reply failed");
                }
            }
            Err(e) => tracing::error!("empty message: {e}"),
        }
    }
}

impl Sockets {
    /// Binds all five sockets where the connection file says and starts their tasks.
    pub async fn bind(file: &ConnectionFile, session: String) -> Result<Sockets> {
        let signer = Signer::new(&file.key);
        // One history of signatures for all channels, as in jupyter_client's Session.
        let replay = ReplayGuard::new();
        let (shell_tx, shell) = router(file, Channel::Shell, &signer, &replay).await?;
        let (control_tx, control) = router(file, Channel::Control, &signer, &replay).await?;
        let (stdin_tx, stdin) = router(file, Channel::Stdin, &signer, &replay).await?;

        let mut iopub = XPubSocket::with_options(options());
        let endpoint = file.endpoint(Channel::Iopub);
        iopub
            .bind(&endpoint)
            .await
            .map_err(|e| bind_error(Channel::Iopub, &endpoint, e))?;
        let (iopub_tx, iopub_rx) = mpsc::unbounded_channel();
        tokio::spawn(serve_iopub(
            iopub,
            iopub_rx,
            signer.clone(),
            session.clone(),
        ));

        let mut hb = RepSocket::with_options(options());
        let endpoint = file.endpoint(Channel::Heartbeat);
        hb.bind(&endpoint)
            .await
            .map_err(|e| bind_error(Channel::Heartbeat, &endpoint, e))?;
        tokio::spawn(serve_heartbeat(hb));

        Ok(Sockets {
            shell,
            control,
            stdin,
            sender: Sender {
                shell: shell_tx,
                control: control_tx,
                stdin: stdin_tx,
                iopub: iopub_tx,
                signer,
                session: session.into(),
            },
        })
    }
}

/// One line a launcher can act on: which channel, which address, and why (zeromq's own error
/// repeats the operating system's message through its source chain).
fn bind_error(channel: Channel, endpoint: &str, error: zeromq::ZmqError) -> anyhow::Error {
    let name = format!("{channel:?}").to_ascii_lowercase();
    let why = match &error {
        zeromq::ZmqError::Network(io) if io.kind() == std::io::ErrorKind::AddrInUse => {
            "the address is already in use (another process holds this port)".to_owned()
        }
        zeromq::ZmqError::Network(io) => io.to_string(),
        other => other.to_string(),
    };
    anyhow::anyhow!("cannot bind {name} to {endpoint}: {why}")
}

async fn router(
    file: &ConnectionFile,
    channel: Channel,
    signer: &Signer,
    replay: &ReplayGuard,
) -> Result<(RouterSendHalf, mpsc::Receiver<Incoming>)> {
    let endpoint = file.endpoint(channel);
    let mut socket = RouterSocket::with_options(options());
    socket
        .bind(&endpoint)
        .await
        .map_err(|e| bind_error(channel, &endpoint, e))?;
    let (send, recv) = socket.split();
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(serve_router(
        channel,
        recv,
        tx,
        signer.clone(),
        replay.clone(),
    ));
    Ok((send, rx))
}

async fn serve_router(
    channel: Channel,
    mut recv: RouterRecvHalf,
    tx: mpsc::Sender<Incoming>,
    signer: Signer,
    replay: ReplayGuard,
) {
    loop {
        let frames = match recv.recv().await {
            Ok(message) => message.into_vec(),
            Err(e) => {
                tracing::debug!(?channel, error = %e, "recv failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        match Incoming::decode(frames, &signer) {
            Ok(message) if !replay.first_time(&message.signature) => tracing::warn!(
                ?channel,
                msg_type = %message.header.msg_type,
                msg_id = %message.header.msg_id,
                "dropped a replayed message (its signature was seen before in this session)"
            ),
            Ok(message) => {
                tracing::debug!(
                    ?channel,
                    msg_type = %message.header.msg_type,
                    msg_id = %message.header.msg_id,
                    "received"
                );
                if tx.send(message).await.is_err() {
                    return; // kernel is shutting down
                }
            }
            Err(e) => tracing::warn!(?channel, error = %e, "dropped invalid message"),
        }
    }
}

async fn serve_iopub(
    mut socket: XPubSocket,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    signer: Signer,
    session: String,
) {
    loop {
        tokio::select! {
            biased;
            message = rx.recv() => {
                let Some(mut message) = message else { return };
                let topic = format!("kernel.{session}.{}", message.msg_type);
                message.identities = vec![Bytes::from(topic)];
                send_iopub(&mut socket, &message, &signer, &session).await;
            }
            subscription = socket.recv() => {
                let Ok(subscription) = subscription else { continue };
                let Some(frame) = subscription.get(0) else { continue };
                // XPUB delivers subscriptions as b"\x01<topic>"; welcome every new subscriber
                // (JEP 65) so clients know iopub is connected before they send requests.
                if frame.first() == Some(&1) {
                    let topic = String::from_utf8_lossy(&frame[1..]).into_owned();
                    let mut welcome = Outgoing::new("iopub_welcome", json!({"subscription": topic}));
                    welcome.identities = vec![Bytes::from_static(b"kernel.iopub_welcome")];
                    send_iopub(&mut socket, &welcome, &signer, &session).await;
                }
            }
        }
    }
}

async fn send_iopub(socket: &mut XPubSocket, message: &Outgoing, signer: &Signer, session: &str) {
    let frames = message.encode(signer, session);
    if let Ok(zmq) = ZmqMessage::try_from(frames)
        && let Err(e) = socket.send(zmq).await
    {
        tracing::warn!(error = %e, "iopub send failed");
    }
}

async fn serve_heartbeat(mut socket: RepSocket) {
    loop {
        match socket.recv().await {
            Ok(ping) => {
                if let Err(e) = socket.send(ping).await {
                    tracing::debug!(error = %e, "heartbeat send failed");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat recv failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
