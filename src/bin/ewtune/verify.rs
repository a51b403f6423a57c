//! `ewtune verify FILE`: checks a signed budget or audit report offline (no daemon needed).

use ewtune::daemon::signing::{verify, SignedReport};
use std::path::PathBuf;

/// Arguments of `ewtune verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A signed report, as `ewtune budget show --json`, `ewtune audits get --json` or
    /// `ewtune audit --sign-key` print it.
    file: PathBuf,
    /// Also require this signer (hex public key, as the daemon's operator publishes it).
    #[arg(long)]
    public_key: Option<String>,
}

pub fn run(args: VerifyArgs) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let report: SignedReport = serde_json::from_str(&text).map_err(|e| format!("{} is not a signed report: {e}", args.file.display()))?;
    verify(&report, args.public_key.as_deref())?;
    println!("OK: the report is intact and signed by {}", report.public_key);
    Ok(())
}
