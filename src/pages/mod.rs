//! Signed reports as pages people read: one self-contained HTML file per report (no script, no
//! external file, charts as inline SVG), drawn only from the signed JSON, which the page embeds
//! byte for byte so that `ewtune verify PAGE.html` checks it offline (docs/reports.md).
//!
//! * `charts.rs` — line charts (linear or log axes) and histograms, through plotters' SVG backend.
//! * `budget.rs` — a budget report: headline, burn-down, each job's epsilon over its steps.
//! * `audit.rs` — an audit report: verdict, ROC curves (log-log), canary score histograms.
//!
//! The CLI writes these pages (`ewtune budget show --html`, `ewtune audits get --html`,
//! `ewtune verify --html`) and the daemon serves them (`api/http.rs`).

pub mod audit;
pub mod budget;
pub mod charts;

use crate::service::signing::{rfc3339_utc, SignedReport};

/// The id of the `<script type="application/json">` element that holds the signed report.
const SIGNED_REPORT_ID: &str = "ewtune-signed-report";

/// Why a page could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The signed JSON is not the report the page draws.
    #[error("the signed report is not a {kind} report: {reason}")]
    NotAReport {
        /// "budget" or "audit".
        kind: &'static str,
        /// What did not parse.
        reason: String,
    },
    /// The report lacks what a chart needs.
    #[error("{0}")]
    Missing(String),
    /// Plotting failed.
    #[error("{0}")]
    Chart(String),
}

/// Text made safe for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time for people: `2026-12-02 08:50:11 UTC`.
pub fn time_utc(unix_ms: i64) -> String {
    let t = rfc3339_utc(unix_ms);
    match t.split_once('T') {
        Some((day, rest)) if rest.len() >= 8 => format!("{day} {} UTC", &rest[..8]),
        _ => t,
    }
}

/// A page: `title`, the style, `body`.
pub fn plain_page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{title}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
{body}
</main>
</body>
</html>
"#,
        title = escape(title)
    )
}

/// The page of a signed report: `body`, then the signature block, and the signed report
/// embedded at the end.
fn page(title: &str, body: &str, signed: &SignedReport) -> String {
    // '<' only occurs inside JSON strings, where `\u003c` means the same: the element's text
    // then cannot close it or open a comment.
    let embedded = serde_json::to_string_pretty(signed).expect("a signed report serialises").replace('<', "\\u003c");
    let signature = format!(
        r#"<section class="signature">
<h2>Signature</h2>
<p>This page is drawn from one report signed by the daemon with Ed25519, embedded below byte
for byte. The page itself is not signed: check the report, and redraw the page from it, offline:</p>
<pre>ewtune verify THIS_PAGE.html --public-key DAEMON_KEY --html redrawn.html</pre>
<p>The daemon's operator prints its key with <code>ewtuned key show</code>. Without a pinned key,
<code>ewtune verify</code> checks only that the report is intact.</p>
<dl class="facts">
<dt>signer</dt><dd><code>{key}</code></dd>
<dt>signature</dt><dd><code>{sig}</code></dd>
</dl>
</section>"#,
        key = escape(&signed.public_key),
        sig = escape(&signed.signature),
    );
    let html = plain_page(title, &format!("{body}\n{signature}"));
    let end = html.rfind("</body>").expect("the page has a body");
    format!("{}<script type=\"application/json\" id=\"{SIGNED_REPORT_ID}\">\n{embedded}\n</script>\n{}", &html[..end], &html[end..])
}

/// The signed report embedded in a page this module wrote (`None`: `html` holds none).
pub fn embedded_report(html: &str) -> Option<Result<SignedReport, serde_json::Error>> {
    let open = format!(r#"<script type="application/json" id="{SIGNED_REPORT_ID}">"#);
    let start = html.find(&open)? + open.len();
    let end = start + html[start..].find("</script>")?;
    Some(serde_json::from_str(&html[start..end]))
}

/// A chart with its caption (HTML).
fn figure(svg: &str, caption: &str) -> String {
    format!("<figure>\n{svg}\n<figcaption>{caption}</figcaption>\n</figure>\n")
}

/// Numbers as the pages print them.
fn num(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "—".to_string()
    }
}

/// Kept small and readable; dark text on white prints well.
const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1b1b1b; background: #fff; margin: 0; }
main { max-width: 960px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
.sub { color: #555; margin-top: 0; }
.headline { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; margin: 20px 0; }
.headline > div { border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; }
.headline .value { font-size: 1.5em; font-weight: 600; }
.headline .label { color: #555; font-size: 0.9em; }
.estimate { color: #9a4d00; }
.alarm { background: #fde8e8; border: 2px solid #c00; padding: 10px 14px; border-radius: 6px; }
.ok { background: #e8f5e9; border: 1px solid #2e7d32; padding: 10px 14px; border-radius: 6px; }
figure { margin: 16px 0; }
figure svg { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; width: 100%; margin: 12px 0; font-size: 0.92em; }
th, td { border-bottom: 1px solid #d0d7de; padding: 4px 8px; text-align: left; }
td code { word-break: break-all; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, 'SFMono-Regular', monospace; font-size: 0.85em; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; }
.facts dd { word-break: break-all; margin-left: 1em; }
.signature { margin-top: 32px; border-top: 1px solid #d0d7de; }
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_report_comes_back_byte_for_byte() {
        let signed = SignedReport { report_json: r#"{"a":"</script><!-- & é"}"#.into(), signature: "ab".into(), public_key: "cd".into() };
        let html = page("t <x>", "<p>body</p>", &signed);
        assert_eq!(html.matches("</script>").count(), 1);
        assert!(html.contains("<title>t &lt;x&gt;</title>"));
        assert_eq!(embedded_report(&html).unwrap().unwrap(), signed);
        assert!(embedded_report("<html></html>").is_none());
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(time_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
