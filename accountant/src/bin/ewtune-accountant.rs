//! `ewtune-accountant`: the accountant for people and scripts. Parses flags, resolves them into
//! a history, calls the library, prints a table (or one JSON object with --json), and maps every
//! error to a message naming the argument and a non-zero exit code.

use clap::{Args, Parser, Subcommand};
use ewtune_accountant::edgeworth::Order;
use ewtune_accountant::domain::MAX_STEPS;
use ewtune_accountant::{calibrate, report, History, StepGroup};
use std::path::PathBuf;
use std::process::ExitCode;

/// Privacy accounting for DP-SGD (Poisson-subsampled Gaussian, add/remove-one adjacency).
/// The certified PLD upper bound is the guarantee; Edgeworth and RDP are shown beside it.
#[derive(Parser, Debug)]
#[command(name = "ewtune-accountant", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Epsilon spent at a given delta.
    #[command(allow_negative_numbers = true)]
    Epsilon {
        #[command(flatten)]
        run: RunArgs,
        /// Target delta, in (0, 1).
        #[arg(long)]
        delta: f64,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Delta at a given epsilon.
    #[command(allow_negative_numbers = true)]
    Delta {
        #[command(flatten)]
        run: RunArgs,
        /// Epsilon, >= 0.
        #[arg(long)]
        epsilon: f64,
        #[command(flatten)]
        out: OutArgs,
    },
    /// The smallest noise multiplier whose certified epsilon meets a target.
    #[command(allow_negative_numbers = true)]
    Sigma {
        /// Target epsilon, > 0.
        #[arg(long)]
        epsilon: f64,
        /// Delta, in (0, 1).
        #[arg(long)]
        delta: f64,
        #[command(flatten)]
        schedule: ScheduleArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What ran: one (sigma, schedule) or a history file.
#[derive(Args, Debug)]
struct RunArgs {
    /// Noise multiplier (noise std / clip norm), > 0.
    #[arg(long, conflicts_with = "history")]
    sigma: Option<f64>,
    #[command(flatten)]
    schedule: ScheduleArgs,
    /// A JSON list of {"noise_multiplier", "sample_rate", "steps"} groups (a heterogeneous history).
    #[arg(long)]
    history: Option<PathBuf>,
}

/// The sampling schedule: --sample-rate and --steps, or --batch-size, --dataset-size and --epochs.
#[derive(Args, Debug)]
struct ScheduleArgs {
    /// Poisson sampling rate q, in (0, 1].
    #[arg(long, conflicts_with_all = ["batch_size", "dataset_size"])]
    sample_rate: Option<f64>,
    /// Number of steps, >= 1.
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// Expected (logical) batch size B; q = B / N.
    #[arg(long)]
    batch_size: Option<u64>,
    /// Dataset size N (privacy units).
    #[arg(long)]
    dataset_size: Option<u64>,
    /// Epochs; steps = ceil(epochs * N / B).
    #[arg(long)]
    epochs: Option<f64>,
}

#[derive(Args, Debug)]
struct OutArgs {
    /// Edgeworth expansion order, 0 to 3.
    #[arg(long, default_value_t = 2)]
    order: u8,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug)]
enum CliError {
    Usage(String),
    Accountant(ewtune_accountant::Error),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) => f.write_str(m),
            CliError::Accountant(e) => write!(f, "{e}"),
        }
    }
}

impl From<ewtune_accountant::Error> for CliError {
    fn from(e: ewtune_accountant::Error) -> Self {
        CliError::Accountant(e)
    }
}

fn usage(m: impl Into<String>) -> CliError {
    CliError::Usage(m.into())
}

impl ScheduleArgs {
    /// Resolves to (q, steps).
    fn resolve(&self) -> Result<(f64, u64), CliError> {
        match (self.sample_rate, self.batch_size, self.dataset_size) {
            (Some(q), None, None) => {
                let steps = self.steps.ok_or_else(|| usage("--sample-rate needs --steps"))?;
                Ok((q, steps))
            }
            (None, Some(b), Some(n)) => {
                if b == 0 || n == 0 || b > n {
                    return Err(usage(format!("invalid --batch-size {b} / --dataset-size {n}: need 1 <= batch size <= dataset size")));
                }
                let q = b as f64 / n as f64;
                let steps = match (self.steps, self.epochs) {
                    (Some(s), None) => s,
                    (None, Some(e)) if e.is_finite() && e > 0.0 => {
                        let steps = (e * n as f64 / b as f64).ceil();
                        if steps > MAX_STEPS as f64 {
                            return Err(usage(format!("invalid --epochs {e}: {steps:e} steps, above the accepted {MAX_STEPS}")));
                        }
                        steps as u64
                    }
                    (None, Some(e)) => return Err(usage(format!("invalid --epochs {e}: must be a finite number > 0"))),
                    _ => return Err(usage("--batch-size and --dataset-size need --epochs (or --steps)")),
                };
                Ok((q, steps))
            }
            (None, None, None) => Err(usage("give --sample-rate and --steps, or --batch-size, --dataset-size and --epochs")),
            _ => Err(usage("--batch-size and --dataset-size go together (and replace --sample-rate)")),
        }
    }
}

impl RunArgs {
    fn history(&self) -> Result<History, CliError> {
        if let Some(path) = &self.history {
            let text = std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read --history {}: {e}", path.display())))?;
            let groups: Vec<StepGroup> =
                serde_json::from_str(&text).map_err(|e| usage(format!("invalid --history {}: {e}", path.display())))?;
            return Ok(History::from_groups(groups)?);
        }
        let sigma = self.sigma.ok_or_else(|| usage("give --sigma (or --history FILE.json)"))?;
        let (q, steps) = self.schedule.resolve()?;
        Ok(History::homogeneous(sigma, q, steps)?)
    }
}

fn describe(history: &History) -> String {
    match history.groups() {
        [g] => format!("{} steps at q = {}, sigma = {}", g.steps, g.sample_rate, g.noise_multiplier),
        groups => format!("{} steps in {} groups", history.total_steps(), groups.len()),
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string(value).expect("reports serialize"));
}

/// JSON has no infinity: infinite values are written as null.
fn num(x: f64) -> String {
    if x.is_finite() { format!("{x:.6}") } else { "inf".into() }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Epsilon { run, delta, out } => {
            let history = run.history()?;
            let r = report::epsilon(&history, delta, Order::new(out.order)?)?;
            if out.json {
                print_json(&r);
                return Ok(());
            }
            let c = r.certified.bounds;
            println!("epsilon at delta = {delta:e}, {}", describe(&history));
            println!();
            println!("  {:<32} {:>10}", "method", "epsilon");
            println!(
                "  {:<32} {:>10}   lower {}, estimate {} (grid {:.1e}, FFT {})",
                "certified PLD (guarantee)", num(c.upper), num(c.lower), num(c.estimate),
                r.certified.value_discretization, r.certified.fft_len
            );
            let fs = match r.edgeworth.finite_sample {
                Some(f) if f.upper.is_finite() => format!("finite-sample interval [{}, {}]", num(f.lower), num(f.upper)),
                Some(_) => "finite-sample bound vacuous at this delta".into(),
                None => "no finite-sample bound (heterogeneous history)".into(),
            };
            println!("  {:<32} {:>10}   {fs}", format!("Edgeworth order {} (estimate)", r.edgeworth.order), num(r.edgeworth.estimate));
            println!("  {:<32} {:>10}   order {}", "RDP (classic bound)", num(r.rdp.epsilon), r.rdp.order);
            println!();
            println!("guarantee: ({}, {delta:e})-DP, add/remove-one adjacency, Poisson sampling", num(c.upper));
            if let Some(w) = r.warning {
                println!("warning: {w}");
            }
        }
        Command::Delta { run, epsilon, out } => {
            let history = run.history()?;
            let r = report::delta(&history, epsilon, Order::new(out.order)?)?;
            if out.json {
                print_json(&r);
                return Ok(());
            }
            let c = r.certified;
            println!("delta at epsilon = {epsilon}, {}", describe(&history));
            println!();
            println!("  {:<32} {:>12}", "method", "delta");
            println!("  {:<32} {:>12.4e}   lower {:.4e}, estimate {:.4e}", "certified PLD (guarantee)", c.upper, c.lower, c.estimate);
            println!("  {:<32} {:>12.4e}", format!("Edgeworth order {} (estimate)", r.edgeworth_order), r.edgeworth);
            println!("  {:<32} {:>12.4e}", "RDP (classic bound)", r.rdp);
            println!();
            println!("guarantee: ({epsilon}, {:.4e})-DP, add/remove-one adjacency, Poisson sampling", c.upper);
        }
        Command::Sigma { epsilon, delta, schedule, json } => {
            let (q, steps) = schedule.resolve()?;
            let c = calibrate::noise_multiplier(epsilon, delta, q, steps)?;
            if json {
                #[derive(serde::Serialize)]
                struct Out<'a> {
                    sigma: f64,
                    certified_epsilon: f64,
                    target_epsilon: f64,
                    delta: f64,
                    sample_rate: f64,
                    steps: u64,
                    calibration: &'a calibrate::Calibration,
                }
                print_json(&Out { sigma: c.sigma, certified_epsilon: c.certified.bounds.upper, target_epsilon: epsilon, delta, sample_rate: q, steps, calibration: &c });
                return Ok(());
            }
            println!("noise multiplier for epsilon <= {epsilon} at delta = {delta:e}, {steps} steps at q = {q}");
            println!();
            println!("  sigma                        {:.6}", c.sigma);
            println!("  certified epsilon (upper)    {}   (guarantee)", num(c.certified.bounds.upper));
            match c.edgeworth_sigma {
                Some(s) if s < c.sigma => println!(
                    "  Edgeworth (order 2) would pick {s:.6}   (under-noised: its certified epsilon exceeds the target)"
                ),
                Some(s) => println!("  Edgeworth (order 2) would pick {s:.6}   (an estimate; not certified)"),
                None => println!("  Edgeworth alone              no solution"),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
