//! Multipart message codec and HMAC signing.
//!
//! A Jupyter message on the wire is `[identities..., "<IDS|MSG>", signature, header,
//! parent_header, metadata, content, buffers...]`. The signature is the hex HMAC-SHA256 of the
//! four JSON frames. Incoming messages whose signature is missing or wrong are rejected here, so
//! nothing above this module ever sees them. So are messages whose header, parent_header,
//! metadata or content is not a JSON object (a header that is an array would otherwise be
//! read positionally by serde and echoed back as `parent_header`).

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

const DELIMITER: &[u8] = b"<IDS|MSG>";
/// The protocol version rustloop implements.
pub const PROTOCOL_VERSION: &str = "5.3";

/// Why an incoming multipart message was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    NoDelimiter,
    MissingFrames(usize),
    BadSignature,
    BadJson(&'static str, String),
    NotAnObject(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NoDelimiter => write!(f, "no <IDS|MSG> delimiter"),
            DecodeError::MissingFrames(n) => {
                write!(f, "only {n} frames after the delimiter (need 5)")
            }
            DecodeError::BadSignature => write!(f, "missing or invalid HMAC signature"),
            DecodeError::BadJson(frame, e) => write!(f, "{frame} is not valid JSON: {e}"),
            DecodeError::NotAnObject(frame) => write!(f, "{frame} is not a JSON object"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Signs and verifies messages with the connection key. An empty key disables signing.
#[derive(Clone)]
pub struct Signer {
    mac: Option<Hmac<Sha256>>,
}

impl Signer {
    pub fn new(key: &str) -> Self {
        let mac = (!key.is_empty())
            .then(|| Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key"));
        Signer { mac }
    }

    /// Hex signature of the four JSON frames ("" when unsigned).
    pub fn sign(&self, parts: [&[u8]; 4]) -> String {
        match &self.mac {
            None => String::new(),
            Some(mac) => {
                let mut mac = mac.clone();
                for part in parts {
                    mac.update(part);
                }
                hex::encode(mac.finalize().into_bytes())
            }
        }
    }

    /// Constant-time check of a hex signature. Only lowercase hex is accepted (as
    /// jupyter_client does): each valid signature has exactly one spelling, so replay detection
    /// can compare signatures as sent.
    pub fn verify(&self, signature: &[u8], parts: [&[u8]; 4]) -> bool {
        match &self.mac {
            None => true,
            Some(mac) => {
                // A property of the attacker's input, not of the secret: no timing concern.
                if signature.iter().any(u8::is_ascii_uppercase) {
                    return false;
                }
                let Ok(expected) = hex::decode(signature) else {
                    return false;
                };
                let mut mac = mac.clone();
                for part in parts {
                    mac.update(part);
                }
                mac.verify_slice(&expected).is_ok()
            }
        }
    }
}

/// The header fields the kernel reads. The raw header is kept separately so that replies echo
/// it byte for byte as their `parent_header`.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    pub msg_id: String,
    pub msg_type: String,
}

/// A verified request from a client.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub identities: Vec<Bytes>,
    pub header: Header,
    /// The header frame exactly as received, reused as `parent_header` of every reply.
    pub raw_header: Bytes,
    pub content: Value,
    /// The signature frame as received ("" when the connection is unsigned), for replay
    /// detection.
    pub signature: Bytes,
    /// Binary buffers after the content frame (comm messages of widgets carry them).
    pub buffers: Vec<Bytes>,
}

impl Incoming {
    /// Decodes and verifies a multipart message.
    pub fn decode(frames: Vec<Bytes>, signer: &Signer) -> Result<Incoming, DecodeError> {
        let delim = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or(DecodeError::NoDelimiter)?;
        let rest = &frames[delim + 1..];
        if rest.len() < 5 {
            return Err(DecodeError::MissingFrames(rest.len()));
        }
        let (signature, header, parent, metadata, content) =
            (&rest[0], &rest[1], &rest[2], &rest[3], &rest[4]);
        if !signer.verify(signature, [header, parent, metadata, content]) {
            return Err(DecodeError::BadSignature);
        }
        if header.is_empty() {
            return Err(DecodeError::NotAnObject("header"));
        }
        let parsed = parse_object(header, "header")?;
        let parsed: Header = serde_json::from_value(parsed)
            .map_err(|e| DecodeError::BadJson("header", e.to_string()))?;
        parse_object(parent, "parent_header")?;
        parse_object(metadata, "metadata")?;
        let content = parse_object(content, "content")?;
        Ok(Incoming {
            identities: frames[..delim].to_vec(),
            header: parsed,
            raw_header: header.clone(),
            content,
            signature: signature.clone(),
            buffers: rest[5..].to_vec(),
        })
    }

    pub fn msg_type(&self) -> &str {
        &self.header.msg_type
    }
}

fn parse_object(frame: &[u8], name: &'static str) -> Result<Value, DecodeError> {
    if frame.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value =
        serde_json::from_slice(frame).map_err(|e| DecodeError::BadJson(name, e.to_string()))?;
    if !value.is_object() {
        return Err(DecodeError::NotAnObject(name));
    }
    Ok(value)
}

/// A message the kernel sends.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// ROUTER identities to route to (empty for iopub).
    pub identities: Vec<Bytes>,
    pub msg_type: String,
    /// Raw header of the request this answers, if any.
    pub parent: Option<Bytes>,
    pub metadata: Value,
    pub content: Value,
    pub buffers: Vec<Bytes>,
}

impl Outgoing {
    /// A message of `msg_type` with `content`, parented to nothing.
    pub fn new(msg_type: &str, content: Value) -> Self {
        Outgoing {
            identities: Vec::new(),
            msg_type: msg_type.to_owned(),
            parent: None,
            metadata: Value::Object(Default::default()),
            content,
            buffers: Vec::new(),
        }
    }

    /// A reply or side effect of `parent`: same identities (for ROUTER replies) and its header
    /// as parent_header.
    pub fn child_of(parent: &Incoming, msg_type: &str, content: Value) -> Self {
        Outgoing {
            identities: parent.identities.clone(),
            parent: Some(parent.raw_header.clone()),
            ..Outgoing::new(msg_type, content)
        }
    }

    /// Encodes with a fresh header for `session`.
    pub fn encode(&self, signer: &Signer, session: &str) -> Vec<Bytes> {
        let header = serde_json::json!({
            "msg_id": uuid::Uuid::new_v4().to_string(),
            "msg_type": self.msg_type,
            "session": session,
            "username": "rustloop",
            "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "version": PROTOCOL_VERSION,
        });
        let header = Bytes::from(serde_json::to_vec(&header).expect("JSON"));
        let parent = self
            .parent
            .clone()
            .unwrap_or_else(|| Bytes::from_static(b"{}"));
        let metadata = Bytes::from(serde_json::to_vec(&self.metadata).expect("JSON"));
        let content = Bytes::from(serde_json::to_vec(&self.content).expect("JSON"));
        let signature = signer.sign([&header, &parent, &metadata, &content]);
        let mut frames = Vec::with_capacity(self.identities.len() + 6 + self.buffers.len());
        frames.extend(self.identities.iter().cloned());
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(Bytes::from(signature));
        frames.extend([header, parent, metadata, content]);
        frames.extend(self.buffers.iter().cloned());
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(signer: &Signer) -> Vec<Bytes> {
        let mut out = Outgoing::new("execute_request", json!({"code": "1 + 1"}));
        out.identities = vec![Bytes::from_static(b"client-7")];
        out.buffers = vec![Bytes::from_static(b"\x00\x01binary")];
        out.encode(signer, "session-1")
    }

    #[test]
    fn round_trip_signed() {
        let signer = Signer::new("secret");
        let decoded = Incoming::decode(request(&signer), &signer).unwrap();
        assert_eq!(decoded.identities, vec![Bytes::from_static(b"client-7")]);
        assert_eq!(decoded.msg_type(), "execute_request");
        assert_eq!(decoded.content["code"], "1 + 1");
        assert_eq!(decoded.buffers, vec![Bytes::from_static(b"\x00\x01binary")]);
        let header: Value = serde_json::from_slice(&decoded.raw_header).unwrap();
        assert_eq!(header["session"], "session-1");
        assert_eq!(header["msg_id"], decoded.header.msg_id.as_str());
        let reply = Outgoing::child_of(&decoded, "execute_reply", json!({"status": "ok"}));
        let frames = reply.encode(&signer, "kernel");
        let back = Incoming::decode(frames, &signer).unwrap();
        // parent_header is echoed verbatim; identities route the reply back.
        assert_eq!(back.identities, decoded.identities);
        assert_eq!(back.msg_type(), "execute_reply");
    }

    #[test]
    fn signature_is_hex_hmac_sha256_of_the_four_frames() {
        // Python: hmac.new(b"key", b"abcd", hashlib.sha256).hexdigest()
        let expected = "2a31ec0ee8d878c9eece9fb0df79b3b90b2256240163aa5ee50d176d3d1121f8";
        let signer = Signer::new("key");
        assert_eq!(signer.sign([b"a", b"b", b"c", b"d"]), expected);
        assert!(signer.verify(expected.as_bytes(), [b"ab", b"", b"cd", b""]));
        assert_eq!(Signer::new("").sign([b"a", b"b", b"c", b"d"]), "");
    }

    #[test]
    fn tampered_content_is_rejected() {
        let signer = Signer::new("secret");
        let mut frames = request(&signer);
        let n = frames.len();
        frames[n - 2] = Bytes::from_static(br#"{"code": "std::process::exit(1)"}"#);
        assert_eq!(
            Incoming::decode(frames, &signer).unwrap_err(),
            DecodeError::BadSignature
        );
    }

    #[test]
    fn forged_signature_and_wrong_key_are_rejected() {
        let signer = Signer::new("secret");
        let mut frames = request(&signer);
        let sig_at = frames.iter().position(|f| f.as_ref() == DELIMITER).unwrap() + 1;
        frames[sig_at] = Bytes::from("0".repeat(64));
        assert_eq!(
            Incoming::decode(frames, &signer).unwrap_err(),
            DecodeError::BadSignature
        );
        let other = Signer::new("other");
        assert_eq!(
            Incoming::decode(request(&other), &signer).unwrap_err(),
            DecodeError::BadSignature
        );
    }

    #[test]
    fn missing_signature_is_rejected_when_signing() {
        let unsigned = Signer::new("");
        let signer = Signer::new("secret");
        assert_eq!(
            Incoming::decode(request(&unsigned), &signer).unwrap_err(),
            DecodeError::BadSignature
        );
        // ...but accepted by an unsigned kernel.
        assert!(Incoming::decode(request(&unsigned), &unsigned).is_ok());
    }

    #[test]
    fn uppercase_spelling_of_a_valid_signature_is_rejected() {
        let signer = Signer::new("secret");
        let mut frames = request(&signer);
        let sig_at = frames.iter().position(|f| f.as_ref() == DELIMITER).unwrap() + 1;
        assert!(Incoming::decode(frames.clone(), &signer).is_ok());
        frames[sig_at] = Bytes::from(frames[sig_at].to_ascii_uppercase());
        assert_eq!(
            Incoming::decode(frames, &signer).unwrap_err(),
            DecodeError::BadSignature
        );
    }

    #[test]
    fn non_hex_signature_is_rejected() {
        let signer = Signer::new("secret");
        let mut frames = request(&signer);
        let sig_at = frames.iter().position(|f| f.as_ref() == DELIMITER).unwrap() + 1;
        frames[sig_at] = Bytes::from_static(b"not hex at all");
        assert_eq!(
            Incoming::decode(frames, &signer).unwrap_err(),
            DecodeError::BadSignature
        );
    }

    #[test]
    fn missing_frames_and_delimiter() {
        let signer = Signer::new("secret");
        let frames = request(&signer);
        let delim = frames.iter().position(|f| f.as_ref() == DELIMITER).unwrap();
        let short = frames[..delim + 4].to_vec();
        assert_eq!(
            Incoming::decode(short, &signer).unwrap_err(),
            DecodeError::MissingFrames(3)
        );
        let no_delim: Vec<Bytes> = frames
            .into_iter()
            .filter(|f| f.as_ref() != DELIMITER)
            .collect();
        assert_eq!(
            Incoming::decode(no_delim, &signer).unwrap_err(),
            DecodeError::NoDelimiter
        );
    }

    /// Signed frames around the given JSON frames.
    fn signed(signer: &Signer, parts: [&'static [u8]; 4]) -> Vec<Bytes> {
        let signature = signer.sign(parts);
        let mut frames = vec![Bytes::from_static(DELIMITER), Bytes::from(signature)];
        frames.extend(parts.map(Bytes::from_static));
        frames
    }

    #[test]
    fn correctly_signed_non_objects_are_rejected() {
        let signer = Signer::new("secret");
        let header: &[u8] = br#"{"msg_id":"a","msg_type":"kernel_info_request"}"#;
        assert!(Incoming::decode(signed(&signer, [header, b"{}", b"{}", b"{}"]), &signer).is_ok());
        // serde would read an array positionally as a Header: it must not get that far.
        let array: &[u8] = br#"["a","kernel_info_request"]"#;
        assert_eq!(
            Incoming::decode(signed(&signer, [array, b"{}", b"{}", b"{}"]), &signer).unwrap_err(),
            DecodeError::NotAnObject("header")
        );
        assert_eq!(
            Incoming::decode(signed(&signer, [b"", b"{}", b"{}", b"{}"]), &signer).unwrap_err(),
            DecodeError::NotAnObject("header")
        );
        for (at, name) in [(1, "parent_header"), (2, "metadata"), (3, "content")] {
            for bad in [&b"[]"[..], b"1", b"\"x\"", b"null", b"true"] {
                let mut parts: [&'static [u8]; 4] = [header, b"{}", b"{}", b"{}"];
                parts[at] = bad;
                assert_eq!(
                    Incoming::decode(signed(&signer, parts), &signer).unwrap_err(),
                    DecodeError::NotAnObject(name),
                    "{name} = {}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }

    #[test]
    fn invalid_json_is_an_error_not_a_panic() {
        let signer = Signer::new("");
        let frames = vec![
            Bytes::from_static(DELIMITER),
            Bytes::new(),
            Bytes::from_static(b"{not json"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
        ];
        assert!(matches!(
            Incoming::decode(frames, &signer),
            Err(DecodeError::BadJson("header", _))
        ));
    }
}
