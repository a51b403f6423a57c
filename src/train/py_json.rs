//! JSON written exactly as Python's `json.dumps` writes it: floats as `repr(float)` and strings
//! escaped as Python escapes them. PEFT's `adapter_config.json` (output.rs) and chat templates'
//! `tojson` (chat.rs) must match Python byte for byte.

/// A JSON string as `json.dumps` escapes it (`ensure_ascii`: every non-printable-ASCII character
/// as `\uXXXX`, UTF-16 surrogate pairs included).
pub fn string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that round-trip, fixed notation for decimal
/// exponents in [-4, 16), else `d.ddde±XX`; integral values keep a `.0`.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` prints the shortest round-trip digits: `d[.ddd]e[-]X`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e}'s exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let decpt = exp + 1; // digits d1 d2 ... with the decimal point after decpt of them
    let body = if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            format!("0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(decpt as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
        }
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits.clone() };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        for (x, want) in [
            (0.0, "0.0"),
            (16.0, "16.0"),
            (0.5, "0.5"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (1e-4, "0.0001"),
            (1e-6, "1e-06"),
            (123456.789, "123456.789"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
        ] {
            assert_eq!(float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn strings_escape_as_python() {
        let mut s = String::new();
        string(&mut s, "a\"b\\c\n\u{1}é😀\u{7f}", true);
        assert_eq!(s, r#""a\"b\\c\n\u0001\u00e9\ud83d\ude00\u007f""#);
        let mut s = String::new();
        string(&mut s, "é\u{1}", false);
        assert_eq!(s, "\"é\\u0001\"");
    }
}
