//! Just enough JSON to talk to the kernel, so the runtime needs no serde (a `:dep serde` with
//! other features would otherwise rebuild the shared runtime library): writing values here,
//! reading them (comm messages from the front end) in [`value`].

mod value;

pub use value::{Value, parse};

/// `s` as a quoted JSON string.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON object from already-encoded values.
pub fn object<'a>(fields: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&string(key));
        out.push(':');
        out.push_str(&value);
    }
    out.push('}');
    out
}

pub fn opt_string(s: Option<&str>) -> String {
    s.map(string).unwrap_or_else(|| "null".to_owned())
}

/// Lowercase hex, as the kernel expects binary buffers on the link.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes hex into bytes.
pub fn unhex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Decodes the lowercase hex the kernel uses for free text on the control connection.
pub fn unhex(s: &str) -> Option<String> {
    String::from_utf8(unhex_bytes(s)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(
            object([("t", string("x")), ("n", "1".into())]),
            r#"{"t":"x","n":1}"#
        );
        assert_eq!(unhex("68c3a9").as_deref(), Some("hé"));
        assert_eq!(unhex("6"), None);
        assert_eq!(hex(&[0, 1, 255]), "0001ff");
        assert_eq!(unhex_bytes("0001ff"), Some(vec![0, 1, 255]));
    }
}
