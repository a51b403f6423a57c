//! What the CLI prints of text it did not write (names, reasons, report fields, statuses):
//! control characters (ANSI escapes, carriage returns, new lines) and Unicode bidirectional
//! controls are escaped, so such text cannot repaint the screen, forge a line or reorder one.

/// `s` as a terminal may show it.
pub fn printable(s: &str) -> String {
    s.chars().fold(String::with_capacity(s.len()), |mut out, c| {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn controls_are_escaped_and_text_kept() {
        assert_eq!(printable("clinic notes é"), "clinic notes é");
        assert_eq!(printable("a\u{1b}[2Jb\r\nc"), "a\\u{1b}[2Jb\\r\\nc");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
    }
}
