//! The connection file: where to bind, which transport, and the signing key.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;

/// Transport named by the connection file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Ipc,
}

/// The parts of a Jupyter connection file the kernel uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectionFile {
    #[serde(default = "default_transport")]
    pub transport: Transport,
    pub ip: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    #[serde(default)]
    pub key: String,
    #[serde(default = "default_scheme")]
    pub signature_scheme: String,
    /// Every other field, kept so that security options we cannot honour are noticed.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn default_transport() -> Transport {
    Transport::Tcp
}

fn default_scheme() -> String {
    "hmac-sha256".to_owned()
}

/// Which of the five sockets an endpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Shell,
    Control,
    Stdin,
    Iopub,
    Heartbeat,
}

impl ConnectionFile {
    /// Reads and validates a connection file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read connection file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid connection file {}", path.display()))
    }

    /// Parses and validates connection-file JSON.
    pub fn parse(text: &str) -> Result<Self> {
        let file: ConnectionFile = serde_json::from_str(text)?;
        file.validate()?;
        Ok(file)
    }

    fn validate(&self) -> Result<()> {
        // Signing: only HMAC-SHA256 is implemented; an empty key means "unsigned" per the spec.
        if !self.key.is_empty() && self.signature_scheme != "hmac-sha256" {
            bail!(
                "signature_scheme {:?} is not supported (rustloop implements hmac-sha256)",
                self.signature_scheme
            );
        }
        // CurveZMQ or any other transport security: the pure-Rust zeromq crate cannot encrypt,
        // and silently running in the clear would be worse than refusing.
        for field in self.other.keys() {
            let lower = field.to_ascii_lowercase();
            if lower.contains("curve") || lower.contains("zap") || lower == "security" {
                bail!(
                    "the connection file asks for transport security ({field}), which rustloop's \
                     ZeroMQ implementation cannot provide; refusing to start unencrypted"
                );
            }
        }
        if self.ip.is_empty() {
            bail!("\"ip\" is empty");
        }
        Ok(())
    }

    /// The ZeroMQ endpoint for one channel, exactly as the file describes it.
    pub fn endpoint(&self, channel: Channel) -> String {
        let port = match channel {
            Channel::Shell => self.shell_port,
            Channel::Control => self.control_port,
            Channel::Stdin => self.stdin_port,
            Channel::Iopub => self.iopub_port,
            Channel::Heartbeat => self.hb_port,
        };
        match self.transport {
            Transport::Tcp => {
                if self.ip.contains(':') {
                    format!("tcp://[{}]:{port}", self.ip)
                } else {
                    format!("tcp://{}:{port}", self.ip)
                }
            }
            // jupyter_client's convention: ipc://{ip}-{port}
            Transport::Ipc => format!("ipc://{}-{port}", self.ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = r#"{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4,
        "hb_port": 5, "ip": "127.0.0.1", "key": "k", "transport": "tcp",
        "signature_scheme": "hmac-sha256", "kernel_name": "rustloop"}"#;

    #[test]
    fn tcp_endpoints() {
        let file = ConnectionFile::parse(TCP).unwrap();
        assert_eq!(file.endpoint(Channel::Shell), "tcp://127.0.0.1:1");
        assert_eq!(file.endpoint(Channel::Heartbeat), "tcp://127.0.0.1:5");
    }

    #[test]
    fn ipc_endpoints() {
        let text = TCP
            .replace("\"tcp\"", "\"ipc\"")
            .replace("127.0.0.1", "/tmp/kernel-x");
        let file = ConnectionFile::parse(&text).unwrap();
        assert_eq!(file.endpoint(Channel::Iopub), "ipc:///tmp/kernel-x-2");
    }

    #[test]
    fn rejects_unknown_scheme_and_curve() {
        let md5 = TCP.replace("hmac-sha256", "hmac-md5");
        assert!(ConnectionFile::parse(&md5).is_err());
        let curve = TCP.replace("\"kernel_name\"", "\"curve_secret_key\": \"x\", \"k2\"");
        let err = ConnectionFile::parse(&curve).unwrap_err().to_string();
        assert!(err.contains("transport security"), "{err}");
    }

    #[test]
    fn empty_key_means_unsigned_any_scheme() {
        let text = TCP
            .replace("\"key\": \"k\"", "\"key\": \"\"")
            .replace("hmac-sha256", "");
        assert!(ConnectionFile::parse(&text).is_ok());
    }

    #[test]
    fn missing_port_is_an_error() {
        let text = TCP.replace("\"hb_port\": 5,", "");
        assert!(ConnectionFile::parse(&text).is_err());
    }
}
