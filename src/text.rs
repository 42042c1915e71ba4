//! Text that goes to a person: every log line and every line printed is
//! passed through `shown`, which scrubs the secrets this process holds and
//! escapes control characters, so a note path or an error body from
//! outside can neither leak the vault token nor forge a line (a file name
//! with a newline and a fake `done:` after it).

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::secrets;

/// `text` scrubbed of secrets, with control characters escaped (`\n`,
/// `\t`, `\u{1b}`…); borrowed when it needs neither (the usual case).
pub fn shown(text: &str) -> Cow<'_, str> {
    let text = secrets::scrub(text);
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Appends `line` as `shown` (a newline in it cannot start another
/// line), then a line break.
pub fn push_line(out: &mut String, line: &str) {
    out.push_str(&shown(line));
    out.push('\n');
}

/// Each line of `text` as `shown`, the line breaks kept.
pub fn shown_lines(text: &str) -> Cow<'_, str> {
    let clean = !text.chars().any(|c| c.is_control() && c != '\n')
        && matches!(secrets::scrub(text), Cow::Borrowed(_));
    if clean {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&shown(line));
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_a_line() {
        assert_eq!(
            shown("ok: jobs/x\ndone: total=9 ok=9"),
            "ok: jobs/x\\ndone: total=9 ok=9"
        );
        assert_eq!(shown("a\u{1b}[2Jb\tc"), "a\\u{1b}[2Jb\\tc");
        assert!(matches!(shown("plain é"), Cow::Borrowed(_)));
        assert_eq!(shown_lines("one\ntwo\u{7}\n"), "one\ntwo\\u{7}\n");
    }
}
