//! `ewtune score` (formerly `ewtune audit`): the membership audit of a trained model, locally. With `--texts`, scores
//! labelled texts (1 = member) and prints per-score AUC / TPR at low FPR; with `--manifest`,
//! runs the one-run canary audit of a job that inserted canaries and compares the empirical
//! epsilon lower bound with the certified epsilon it claimed (docs/audit.md, "The report").
//! `--sign-key` signs the printed JSON like the daemon signs its reports (`ewtune verify`).

use ewtune::audit::canary::CanaryAudit;
use ewtune::train::canaries::Manifest;
use ewtune::audit::report::{build_report, AuditInputs};
use ewtune::audit::runs::{audit_runs, RunTarget};
use ewtune::audit::texts::{audit_texts, LabeledText};
use ewtune::service::signing::{SignedReport, Signer};
use ewtune::train::job::DeviceChoice;
use ewtune::train::model::Model;
use ewtune::train::peft_adapter::{load_trained, AdapterBase};
use std::path::PathBuf;

/// Arguments of `ewtune score`.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The audited (fine-tuned) model: an HF directory, or a PEFT adapter directory.
    #[arg(long, required_unless_present = "runs")]
    model: Option<PathBuf>,
    /// The model before fine-tuning (enables the `ref` score, the primary attack).
    #[arg(long)]
    base: Option<PathBuf>,
    /// JSONL of {"input": text, "label": 1|0} (1 = member).
    #[arg(long, required_unless_present_any = ["manifest", "runs"])]
    texts: Option<PathBuf>,
    /// A job's audit_manifest.json: run the one-run canary audit instead.
    #[arg(long, conflicts_with = "texts", requires = "base")]
    manifest: Option<PathBuf>,
    /// A multi-run audit: JSONL of {"model": DIR, "input": text, "label": 1|0}, one line per
    /// independent training run (its target text, and whether that run trained on it); prints
    /// the classic Clopper-Pearson epsilon lower bound.
    #[arg(long, conflicts_with_all = ["texts", "manifest", "model"])]
    runs: Option<PathBuf>,
    /// Delta of the multi-run bound.
    #[arg(long, default_value_t = 1e-5, requires = "runs")]
    delta: f64,
    /// The certified epsilon the job claimed (default: read from privacy.json beside the manifest).
    #[arg(long)]
    claimed_epsilon: Option<f64>,
    /// Tokens per text (default and ceiling: the model's context; 1024 without one).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Print the JSON signed with this Ed25519 key (PKCS#8; created, mode 0600, if absent), as
    /// `{"report_json", "signature", "public_key"}` for `ewtune verify`.
    #[arg(long)]
    sign_key: Option<PathBuf>,
}

/// Prints `json`, signed when a key is given.
fn emit(json: String, sign_key: Option<&PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    match sign_key {
        None => println!("{json}"),
        Some(path) => {
            let signer = Signer::load_or_create(path)?;
            let signed = SignedReport::new(json.clone(), &signer.sign(json.as_bytes()), &signer.public_key());
            println!("{}", serde_json::to_string(&signed)?);
        }
    }
    Ok(())
}

/// The table of a canary audit, for people.
pub fn print_canary_audit(audit: &CanaryAudit) {
    println!("one-run canary audit: m = {} canaries, {} inserted, score `{}`", audit.m, audit.n_included, audit.primary_score);
    let primary = &audit.metrics[&audit.primary_score];
    println!("  canary AUC {:.4} [{:.4}, {:.4}], TPR@1%FPR {:.4}", primary.auc, primary.auc_ci95[0], primary.auc_ci95[1], primary.tpr_at_1pct_fpr);
    println!(
        "  empirical epsilon lower bound {:.4} (95 %, k+ = {}, {}/{} correct, Bonferroni over {} guesses, delta {:e}; at most {:.3} with {} canaries)",
        audit.best.eps_lb, audit.best.k_plus, audit.best.v, audit.best.r, audit.grid_size, audit.delta, audit.eps_ceiling_for_m, audit.m
    );
    println!("  classic Clopper-Pearson bound {:.4} (heuristic: one training run)", audit.eps_classic_heuristic);
    match audit.eps_claimed {
        Some(c) => println!("  certified epsilon claimed {c:.4}"),
        None => println!("  no claimed epsilon (pass --claimed-epsilon)"),
    }
    if audit.violation {
        println!("ALARM: the lower bound exceeds the claimed epsilon: the DP claim is refuted; accounting or training is wrong");
    }
}

/// Reads the JSON lines of `path`, naming the line that does not parse.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<Vec<T>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1)))
        .collect()
}

pub fn run(args: AuditArgs) -> Result<(), Box<dyn std::error::Error>> {
    let device = args.device.resolve()?;
    let json = args.json || args.sign_key.is_some();
    if let Some(path) = &args.runs {
        let runs: Vec<RunTarget> = read_jsonl(path)?;
        let audit = audit_runs(&runs, args.base.as_deref(), args.delta, 0.05, args.claimed_epsilon, device)?;
        if json {
            return emit(serde_json::to_string(&audit)?, args.sign_key.as_ref());
        }
        println!("multi-run audit: {} runs ({} trained on their target), score `{}`, AUC {:.4}", audit.n_runs, audit.n_members, audit.score, audit.auc);
        println!(
            "  classic epsilon lower bound {:.4} (95 %, Clopper-Pearson, best of {} thresholds with alpha split over them; TP {} FP {}; delta {:e})",
            audit.eps_lb, audit.thresholds, audit.tp, audit.fp, audit.delta
        );
        if audit.violation {
            println!("ALARM: the lower bound exceeds the claimed epsilon: the DP claim is refuted; accounting or training is wrong");
        }
        return Ok(());
    }
    let model = args.model.as_ref().ok_or("give --model")?;
    if let Some(path) = &args.manifest {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| format!("{} is not an audit manifest: {e}", path.display()))?;
        let sha = ewtune::digest::sha256_hex(&bytes);
        let claimed = match args.claimed_epsilon {
            Some(e) => Some(e),
            None => std::fs::read(path.with_file_name("privacy.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["epsilon_spent"].as_f64()),
        };
        let base = args.base.as_ref().ok_or("--manifest needs --base")?;
        let bar = scoring_bar();
        let report = build_report(&AuditInputs {
            job_id: None,
            target_dir: model,
            adapter_base: AdapterBase::RecordedOr(base),
            base_dir: base,
            texts: &[],
            manifest: Some((&manifest, &sha)),
            eps_claimed: claimed,
            max_tokens: args.max_tokens,
            device,
            progress: &|done, total| show_scoring(&bar, done, total),
        })?;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        if json {
            return emit(serde_json::to_string(&report)?, args.sign_key.as_ref());
        }
        if let Some(audit) = &report.canary_audit {
            print_canary_audit(audit);
        }
        return Ok(());
    }
    // An adapter downloaded from the daemon names its base by the daemon's name for it: --base then says where it is.
    let target = load_trained(model, args.base.as_deref().map_or(AdapterBase::Recorded, AdapterBase::RecordedOr), device)?;
    let base = args.base.as_ref().map(|b| Model::load_output(b, device)).transpose()?;
    // Never past the model's context (a learned position table has no row there).
    let context = target.max_positions().map(|p| p as usize);
    let max_tokens = args.max_tokens.map_or(context.unwrap_or(1024), |m| context.map_or(m, |c| m.min(c))).max(2);
    let texts_path = args.texts.as_ref().ok_or("give --texts or --manifest")?;
    let tokenizer_path = ewtune::train::peft_adapter::tokenizer_path(model, args.base.as_deref().map_or(AdapterBase::Recorded, AdapterBase::RecordedOr))?;
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| format!("cannot load {}: {e}", tokenizer_path.display()))?;
    let texts: Vec<LabeledText> = read_jsonl(texts_path)?;
    let bar = scoring_bar();
    let per_text = if base.is_some() { ewtune::audit::texts::SCORINGS_PER_TEXT } else { ewtune::audit::texts::SCORINGS_PER_TEXT - 1 };
    let show = |done, total| show_scoring(&bar, done, total);
    let scoring = ewtune::audit::logprobs::Scoring::new(texts.len() as u64 * per_text, &show);
    let audit = audit_texts(&target, base.as_ref(), &tokenizer, &texts, max_tokens, device, &scoring)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if json {
        return emit(serde_json::to_string(&audit)?, args.sign_key.as_ref());
    }
    println!("{} texts ({} members)", audit.texts.len(), texts.iter().filter(|t| t.label == 1).count());
    println!("  {:<12} {:>7} {:>17} {:>10} {:>10} {:>8}", "score", "AUC", "95% CI", "TPR@1%", "TPR@5%", "dropped");
    for (name, m) in &audit.metrics {
        println!(
            "  {:<12} {:>7.4} [{:>6.4}, {:>6.4}] {:>10.4} {:>10.4} {:>8}",
            name, m.auc, m.auc_ci95[0], m.auc_ci95[1], m.tpr_at_1pct_fpr, m.tpr_at_fpr["0.05"].tpr, m.dropped_nan
        );
    }
    Ok(())
}

/// A bar of an audit's scorings done, on a terminal only (stdout may be JSON); also the
/// daemon's audits' (`remote.rs`), which set its message.
pub fn scoring_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(indicatif::ProgressStyle::with_template("scoring {bar:40} {pos}/{len} (sequence, model) pairs  ETA {eta}  {msg}").expect("static template"));
        b
    })
}

fn show_scoring(bar: &Option<indicatif::ProgressBar>, done: u64, total: u64) {
    if let Some(b) = bar {
        b.set_length(total);
        b.set_position(done);
    }
}
