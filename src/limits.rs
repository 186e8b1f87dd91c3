//! Inbound size limits: how large a frame or a message from the network (the five Jupyter
//! sockets) or from the evaluation process (the link) may be before it is refused.
//!
//! One setting for the whole process tree: `--max-message-size` / `--max-frame-size` on
//! `rustloop kernel`, else the environment variables [`MESSAGE_ENV`] / [`FRAME_ENV`], else
//! [`DEFAULT`] (256 MiB). The kernel exports the values it uses, so the evaluation process and
//! the runtime crate in it apply the same ones. Sizes are bytes, with an optional `K`, `M` or
//! `G` suffix (binary multiples: `64M` is 64 MiB).

use std::sync::OnceLock;

pub const MESSAGE_ENV: &str = "RUSTLOOP_MAX_MESSAGE_SIZE";
pub const FRAME_ENV: &str = "RUSTLOOP_MAX_FRAME_SIZE";
/// Generous: a Jupyter message is rarely more than a few MiB, even with binary buffers.
pub const DEFAULT: usize = 256 * 1024 * 1024;
/// Below this nothing works (a kernel_info_request alone is about 500 bytes).
const MINIMUM: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single ZeroMQ frame or link frame.
    pub frame: usize,
    /// Largest multipart message (its frames together).
    pub message: usize,
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

/// The limits in force (from the environment on first use, unless [`set`] ran before).
pub fn get() -> Limits {
    *LIMITS.get_or_init(|| {
        from_values(
            std::env::var(MESSAGE_ENV).ok().as_deref(),
            std::env::var(FRAME_ENV).ok().as_deref(),
        )
        .unwrap_or_else(|e| {
            tracing::warn!("{e}; using the default limits");
            from_values(None, None).expect("defaults are valid")
        })
    })
}

/// Fixes the limits from the command line (falling back to the environment) and exports them
/// for the processes the kernel starts. Call before any other thread exists.
pub fn configure(message: Option<&str>, frame: Option<&str>) -> Result<Limits, String> {
    let message = message
        .map(str::to_owned)
        .or_else(|| std::env::var(MESSAGE_ENV).ok());
    let frame = frame
        .map(str::to_owned)
        .or_else(|| std::env::var(FRAME_ENV).ok());
    let limits = from_values(message.as_deref(), frame.as_deref())?;
    // SAFETY: documented precondition: single-threaded (called from main before the runtime).
    unsafe {
        std::env::set_var(MESSAGE_ENV, limits.message.to_string());
        std::env::set_var(FRAME_ENV, limits.frame.to_string());
    }
    let _ = LIMITS.set(limits);
    Ok(get())
}

fn from_values(message: Option<&str>, frame: Option<&str>) -> Result<Limits, String> {
    let message = match message {
        Some(text) => parse_size(text).map_err(|e| format!("{MESSAGE_ENV}: {e}"))?,
        None => DEFAULT,
    };
    // A frame can never be larger than its message.
    let frame = match frame {
        Some(text) => parse_size(text)
            .map_err(|e| format!("{FRAME_ENV}: {e}"))?
            .min(message),
        None => message,
    };
    Ok(Limits { frame, message })
}

/// `1048576`, `1024K`, `1M`, `1G` (binary multiples).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => {
            return Err(format!(
                "cannot read {text:?} as a size (e.g. 268435456 or 256M)"
            ));
        }
    };
    let value: usize = digits
        .parse()
        .map_err(|_| format!("cannot read {text:?} as a size (e.g. 268435456 or 256M)"))?;
    let bytes = value
        .checked_mul(1usize << shift)
        .filter(|&b| b <= isize::MAX as usize / 4)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes < MINIMUM {
        return Err(format!("{text:?} is too small (at least {MINIMUM} bytes)"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("268435456"), Ok(DEFAULT));
        assert_eq!(parse_size("256M"), Ok(DEFAULT));
        assert_eq!(parse_size("256 MiB"), Ok(DEFAULT));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-5").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn frame_defaults_to_message_and_never_exceeds_it() {
        assert_eq!(
            from_values(None, None),
            Ok(Limits {
                frame: DEFAULT,
                message: DEFAULT
            })
        );
        let l = from_values(Some("1M"), None).unwrap();
        assert_eq!((l.frame, l.message), (1 << 20, 1 << 20));
        let l = from_values(Some("1M"), Some("2M")).unwrap();
        assert_eq!(l.frame, 1 << 20);
        let l = from_values(Some("2M"), Some("64K")).unwrap();
        assert_eq!((l.frame, l.message), (65536, 2 << 20));
    }
}
