//! `ewtune train --config job.toml`: runs a job with a progress bar (on a terminal) and prints
//! the privacy plan up front and the privacy spent at the end: only data-independent or
//! privatised quantities, unless `--print-private-diagnostics` asks for the data counts and each
//! step's sample statistics too. Ctrl-C stops after the current step with a checkpoint; running
//! the same command again resumes.

use ewtune::train::job::{self, JobSpec};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Arguments of `ewtune train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The job file (TOML): model, data, output, [privacy], [training], [finetune], [data_format].
    #[arg(long)]
    config: PathBuf,
    /// Print progress and the outcome as JSON lines instead of a bar and a summary.
    #[arg(long)]
    json: bool,
    /// Also print exact statistics of the private training data that the privacy guarantee
    /// does NOT cover: each step's realised batch size (units in its Poisson sample), fraction
    /// of units clipped and number of units left out for a non-finite gradient norm, and the
    /// dataset's counts (examples, privacy units, examples cut at max_length, examples dropped by
    /// max_examples_per_user). Whoever sees this output learns about the training data beyond
    /// the job's epsilon. Without it only the plan, the step count, the expected batch size, the
    /// certified epsilon and the loss on the (non-sensitive) eval_data are printed.
    #[arg(long)]
    print_private_diagnostics: bool,
}

/// What `--print-private-diagnostics` says on stderr before anything else.
const PRIVATE_NOTICE: &str = "warning: --print-private-diagnostics: this output includes statistics of the private training data (realised batch sizes, clipped fractions, units excluded for non-finite gradients, dataset counts) that the privacy guarantee does not cover; do not share it";

pub fn run(args: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let spec = JobSpec::from_toml_file(&args.config)?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        ctrlc::set_handler(move || cancel.store(true, Ordering::Relaxed))?;
    }
    // The bar appears when training starts (on a terminal); each phase before is one line.
    let on_terminal = !args.json && std::io::stderr().is_terminal();
    let bar = on_terminal.then(|| {
        let b = indicatif::ProgressBar::hidden();
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}")
                .expect("static template"),
        );
        b
    });
    let private = args.print_private_diagnostics;
    if private {
        eprintln!("{PRIVATE_NOTICE}");
    }
    let diagnostics = if private { job::Diagnostics::Private } else { job::Diagnostics::Public };
    let mut last_eps = None;
    let cap = spec.data_config.max_examples_per_user;
    let on_start = |p: &job::Plan, d: &ewtune::train::data::DataCounts| {
        if args.json {
            // The dataset's counts are private; the plan's N is what q = B / N is computed from.
            let line = if private { serde_json::json!({ "plan": p, "data": d }) } else { serde_json::json!({ "plan": p }) };
            println!("{line}");
            return;
        }
        if private {
            let dropped = match cap {
                Some(k) => format!("{} dropped by max_examples_per_user = {k}", d.dropped_examples),
                None => "none dropped (no max_examples_per_user)".into(),
            };
            println!("data (private): {} examples, {} privacy units; {} truncated at max_length; {dropped}", d.examples, d.units, d.truncated_examples);
        }
        println!(
            "plan: privacy units N = {}, q = {:.6}, steps = {}, sigma = {:.4}, certified epsilon {:.4} at delta {:e} (Edgeworth estimate {:.4}, not a guarantee)",
            p.units, p.sample_rate, p.steps, p.noise_multiplier, p.certified_epsilon, p.delta, p.edgeworth_epsilon
        );
        for w in &p.warnings {
            println!("warning: {w}");
        }
    };
    let on_phase = |phase: job::Phase| {
        if args.json {
            println!("{}", serde_json::json!({ "phase": phase }));
            return;
        }
        if let (Some(b), job::Phase::Training) = (&bar, phase) {
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            return;
        }
        match &bar {
            Some(b) if !b.is_hidden() => b.println(format!("{}...", phase.describe())),
            _ => eprintln!("{}...", phase.describe()),
        }
    };
    let on_progress = |p: &job::Progress| {
        if p.epsilon_spent.is_some() {
            last_eps = p.epsilon_spent;
        }
        if args.json {
            println!("{}", serde_json::to_string(p).expect("progress serializes"));
            return;
        }
        if let Some(d) = &p.private_diagnostics {
            let line = format!(
                "step {}/{} (private): {} units sampled, {:.1} % clipped, {} excluded (non-finite norm)",
                p.step,
                p.total_steps,
                d.batch_units,
                100.0 * d.clipped_fraction,
                d.excluded_units
            );
            match &bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }
        if let Some(b) = &bar {
            b.set_length(p.total_steps);
            b.set_position(p.step);
            if let Some(e) = last_eps {
                b.set_message(format!("epsilon spent {e:.3} (certified)"));
            }
        } else if p.epsilon_spent.is_some() || p.step == p.total_steps {
            eprintln!("step {}/{}  epsilon spent {}", p.step, p.total_steps, last_eps.map(|e| format!("{e:.4}")).unwrap_or("-".into()));
        }
    };
    let outcome = job::run_observed(&spec, &job::BaseName::CanonicalPath, &cancel, |_| Ok(()), on_start, on_phase, on_progress, diagnostics)?;
    // Left on the screen where training ended.
    if let Some(b) = bar {
        b.finish();
    }
    if args.json {
        let mut line = serde_json::to_value(&outcome).expect("outcome serializes");
        if !private {
            line.as_object_mut().expect("an object").remove("data");
        }
        println!("{line}");
        return Ok(());
    }
    let p = &outcome.plan;
    println!("privacy units N = {}, q = {:.6}, steps = {}, sigma = {:.4}", p.units, p.sample_rate, p.steps, p.noise_multiplier);
    println!(
        "epsilon spent: {:.4} at delta = {:e} (certified upper bound; the whole plan certifies {:.4}; Edgeworth estimate of the plan {:.4})",
        outcome.epsilon_spent, p.delta, p.certified_epsilon, p.edgeworth_epsilon
    );
    if let Some((before, after)) = outcome.eval_loss {
        println!("held-out loss: {before:.4} -> {after:.4}");
    }
    if let Some(c) = &spec.canaries {
        let path = spec.output.join("audit_manifest.json");
        let manifest: Option<ewtune::train::canaries::Manifest> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let inserted = manifest.map_or(0, |m| m.included.iter().filter(|&&s| s).count());
        println!("canaries: {} drawn, {inserted} inserted (counted in N); manifest {} (audit with `ewtune score --manifest`)", c.count, path.display());
        for w in c.warnings(p.units - inserted) {
            println!("warning: {w}");
        }
    }
    if let Some(a) = &outcome.self_audit {
        println!("self-audit ({} gradient canaries): {}", a.canaries, a.headline());
        println!("  {}", a.decision.summary());
        if let (Some(p), Some(e)) = (a.fdp_p_value, a.fdp_in_family_epsilon) {
            println!("  f-DP one-run test of the certified curve: p = {p:.2} (fails below 1e-6); in-family epsilon {e:.3} (an estimate, not a bound)");
        }
        for w in &a.warnings {
            println!("  warning: {w}");
        }
    }
    if outcome.cancelled {
        println!("stopped after {} of {} steps; run the same command to resume", outcome.steps_done, p.steps);
    } else {
        println!("model written to {}", outcome.output_model.display());
    }
    Ok(())
}
