//! Percent-encoding of URL path segments and query values, and strict
//! decoding (a bad escape or invalid UTF-8 is refused, not guessed).

/// Encodes everything but unreserved characters, so `/` becomes `%2F`
/// (one path segment, as vault-api.md wants note paths).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` on a bad escape or invalid UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(encode("jobs/daily brief"), "jobs%2Fdaily%20brief");
        assert_eq!(encode("a%b?c#d&é"), "a%25b%3Fc%23d%26%C3%A9");
        assert_eq!(encode("A-z_0.9~"), "A-z_0.9~");
        for s in ["jobs/daily brief", "é%/?", ""] {
            assert_eq!(decode(&encode(s)).as_deref(), Some(s));
        }
        assert_eq!(decode("%00").as_deref(), Some("\0"));
        assert_eq!(decode("%ff"), None);
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%+1"), None);
        assert_eq!(decode("%2"), None);
    }
}
