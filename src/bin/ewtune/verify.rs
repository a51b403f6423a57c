//! `ewtune verify FILE`: checks a signed budget or audit report offline (no daemon needed),
//! prints what it checked, and says with its exit code whether the signer was the pinned key.

use ewtune::pages;
use ewtune::service::signing::{rfc3339_utc, verify, SignedReport, Verified};
use super::terminal::printable;
use std::path::PathBuf;
use std::process::ExitCode;

/// Intact and signed by the pinned key.
const PINNED: u8 = 0;
/// An error: unreadable file, malformed hex, a bad signature, or another signer than the pinned one.
const INVALID: u8 = 2;
/// Intact, but no key was pinned: nothing says which daemon signed.
const UNPINNED: u8 = 3;

/// Arguments of `ewtune verify`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Exit codes:
  0  the report is intact and signed by the pinned key
  3  the report is intact, but no key was pinned: the signer is NOT verified
  2  error: unreadable or malformed file, malformed hex, altered report, or another signer than the pinned key

Pin the daemon's key as its operator prints it with `ewtuned key show --data-dir DIR`.")]
pub struct VerifyArgs {
    /// A signed report, as `ewtune budget show --json`, `ewtune audits get --json` or
    /// `ewtune score --sign-key` print it, or a report page (`--html` of those commands), whose
    /// embedded report is checked.
    file: PathBuf,
    /// Require this signer: the daemon's public key, 64 hex digits (`ewtuned key show`).
    /// Without it only the report's integrity is checked.
    #[arg(long, env = "EWTUNE_PUBLIC_KEY")]
    public_key: Option<String>,
    /// Once the report verified, draw it as a web page into FILE (a budget report needs its
    /// charts' data: one saved from `ewtune budget show --html`'s page has it).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

/// Runs the check and prints its result; the exit code is [`PINNED`], [`UNPINNED`] or [`INVALID`].
pub fn main(args: VerifyArgs) -> ExitCode {
    match run(&args) {
        Ok((v, report)) => {
            print(&v);
            if let Some(path) = &args.html {
                if let Err(e) = redraw(&report, path) {
                    eprintln!("error: the report checked as above, but drawing it failed: {e}");
                    return ExitCode::from(INVALID);
                }
            }
            ExitCode::from(if v.pinned { PINNED } else { UNPINNED })
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(INVALID)
        }
    }
}

fn run(args: &VerifyArgs) -> Result<(Verified, SignedReport), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let report: SignedReport = match pages::embedded_report(&text) {
        Some(embedded) => embedded.map_err(|e| format!("the report embedded in {} is not a signed report: {e}", args.file.display()))?,
        None => serde_json::from_str(&text).map_err(|e| format!("{} is neither a signed report nor a report page: {e}", args.file.display()))?,
    };
    let pinned = args.public_key.as_deref().filter(|k| !k.trim().is_empty());
    Ok((verify(&report, pinned)?, report))
}

/// Draws a verified report as a page: a budget or an audit report, by what it holds.
fn redraw(report: &SignedReport, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let is_audit = serde_json::from_str::<serde_json::Value>(&report.report_json)?.get("audit_version").is_some();
    let html = if is_audit { pages::audit::audit_page(report)? } else { pages::budget::budget_page(report)? };
    super::remote::write_page(path, &html)
}

fn print(v: &Verified) {
    if v.pinned {
        println!("OK: the report is intact and signed by the pinned key");
    } else {
        println!("UNVERIFIED SIGNER: the report is intact, but no key was pinned, so the signer is NOT verified");
        println!("  (pin the daemon's key: --public-key HEX or EWTUNE_PUBLIC_KEY; its operator prints it with `ewtuned key show`)");
    }
    let f = &v.facts;
    println!("  signer      {}{}", v.signer, if v.pinned { " (pinned)" } else { " (not pinned)" });
    let fields = [("tenant", &f.tenant), ("dataset", &f.dataset), ("audit", &f.audit_id), ("job", &f.job_id)];
    for (name, value) in fields {
        if let Some(value) = value {
            println!("  {name:<11} {}", printable(value));
        }
    }
    if let Some(seq) = f.sequence {
        println!("  sequence    {seq}");
    }
    match f.issued_at_unix_ms {
        Some(ms) => println!("  issued_at   {} ({ms} ms)", rfc3339_utc(ms)),
        None => println!("  issued_at   none: this report does not say when it was issued, so it cannot be told from a replayed one"),
    }
}
