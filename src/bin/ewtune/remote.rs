//! Client subcommands: `datasets`, `jobs`, `budget`, talking to `ewtuned` over gRPC, with
//! tables for people and `--json` for scripts.

use super::client::{explain, Connect};
use super::terminal::printable;
use ewtune::api::pb;
use ewtune::service::signing::SignedReport;
use ewtune::digest::hex;
use std::io::IsTerminal;
use std::path::PathBuf;

/// `ewtune datasets ...`
#[derive(clap::Subcommand, Debug)]
pub enum DatasetsCommand {
    /// Upload a JSONL dataset and fix its total privacy budget.
    Register {
        /// The JSONL file.
        #[arg(long)]
        file: PathBuf,
        /// A label.
        #[arg(long)]
        name: String,
        /// Total epsilon the dataset may ever spend.
        #[arg(long)]
        budget_epsilon: f64,
        /// Delta of the budget.
        #[arg(long, default_value_t = 1e-5)]
        budget_delta: f64,
        /// Privacy unit = user, keyed by this field (default: one example).
        #[arg(long)]
        user_field: Option<String>,
    },
    /// Your datasets, with the epsilon each one's people have left.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dataset: its budget, what is left, and the units it shares with your other datasets.
    Get {
        /// Dataset id (SHA-256).
        dataset: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What a job trains and how.
#[derive(clap::Args, Debug)]
pub struct SpecArgs {
    /// Dataset id (SHA-256).
    #[arg(long)]
    dataset: String,
    /// Base model name (a directory in the daemon's models dir).
    #[arg(long)]
    model: String,
    /// Target epsilon (sigma is calibrated and certified).
    #[arg(long, conflicts_with = "noise_multiplier")]
    epsilon: Option<f64>,
    /// Fixed noise multiplier instead of a target epsilon.
    #[arg(long)]
    noise_multiplier: Option<f64>,
    /// Delta (default: the dataset's).
    #[arg(long, default_value_t = 0.0, hide_default_value = true)]
    delta: f64,
    /// Expected logical batch size.
    #[arg(long)]
    batch_size: u32,
    /// Epochs (or --steps).
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Steps (overrides --epochs).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    steps: u64,
    /// Full fine-tuning instead of LoRA.
    #[arg(long)]
    full: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_rank: u32,
    /// Forward/backward precision (default: bf16 where the base is bf16 and the daemon has CUDA).
    #[arg(long, value_enum)]
    precision: Option<ewtune::train::precision::Precision>,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Clipping norm.
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
    /// Units per micro-batch.
    #[arg(long, default_value_t = 16)]
    micro_batch: u32,
    /// Tokens per example (default: 128, at most the model's context).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    max_length: u32,
    /// Insert this many random-token canaries (each with probability 1/2; at least 200) for the
    /// one-run membership audit (`ewtune audits create`).
    #[arg(long)]
    canaries: Option<u32>,
    /// Tokens per canary.
    #[arg(long, default_value_t = 32, requires = "canaries")]
    canary_length: u32,
    /// Gradient canaries of the self-audit, which checks the run's clipping, noise and sampling
    /// and fails the job before its model is released if they are not as accounted
    /// (100 to 1000000; default 10000).
    #[arg(long)]
    self_audit_canaries: Option<u32>,
    /// Run without the self-audit.
    #[arg(long, conflicts_with = "self_audit_canaries")]
    no_self_audit: bool,
}

impl SpecArgs {
    fn proto(&self) -> Result<pb::JobSpec, Box<dyn std::error::Error>> {
        if self.epsilon.is_none() && self.noise_multiplier.is_none() {
            return Err("give --epsilon (calibrated) or --noise-multiplier".into());
        }
        Ok(pb::JobSpec {
            dataset_id: self.dataset.clone(),
            base_model: self.model.clone(),
            finetune: Some(if self.full {
                pb::job_spec::Finetune::Full(true)
            } else {
                pb::job_spec::Finetune::Lora(pb::LoraConfig { rank: self.lora_rank, alpha: 2.0 * self.lora_rank as f64, target_modules: vec![] })
            }),
            target_epsilon: self.epsilon.unwrap_or(0.0),
            noise_multiplier: self.noise_multiplier.unwrap_or(0.0),
            delta: self.delta,
            clip_norm: self.clip_norm,
            batch_size: self.batch_size,
            epochs: if self.steps > 0 { 0.0 } else { self.epochs },
            steps: self.steps,
            micro_batch: self.micro_batch,
            learning_rate: self.learning_rate,
            max_length: self.max_length,
            canaries: self.canaries.map(|count| pb::CanaryConfig { count, length: self.canary_length }),
            precision: match self.precision {
                None => String::new(),
                Some(ewtune::train::precision::Precision::F32) => "f32".into(),
                Some(ewtune::train::precision::Precision::Bf16) => "bf16".into(),
            },
            self_audit: match (self.no_self_audit, self.self_audit_canaries) {
                (true, _) => Some(pb::SelfAuditConfig { disabled: true, canaries: 0 }),
                (false, Some(canaries)) => Some(pb::SelfAuditConfig { disabled: false, canaries }),
                (false, None) => None,
            },
        })
    }
}

/// `ewtune jobs ...`
#[derive(clap::Subcommand, Debug)]
pub enum JobsCommand {
    /// The noise and the certified epsilon a job would use; runs and reserves nothing.
    Plan {
        #[command(flatten)]
        spec: SpecArgs,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One job: state, steps, certified epsilon spent, and its model once it succeeded.
    Get {
        /// Job id.
        job: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reserve the job's privacy cost and queue it.
    Submit {
        #[command(flatten)]
        spec: SpecArgs,
        /// Follow it to the end with a progress bar.
        #[arg(long)]
        watch: bool,
    },
    /// Follow a job's events to its end (a live progress bar on a terminal).
    Watch {
        /// Job id.
        job: String,
    },
    /// Your jobs.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job (running jobs stop after their current step).
    Cancel {
        /// Job id.
        job: String,
    },
    /// Download a succeeded job's model (a PEFT adapter or a full transformers checkpoint),
    /// checking every file's size and SHA-256 against what the daemon recorded when the job
    /// succeeded. Nothing is written unless every file checks out.
    Download {
        /// Job id.
        job: String,
        /// A new or empty directory to write the model into (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `ewtune audits ...`
#[derive(clap::Subcommand, Debug)]
pub enum AuditsCommand {
    /// Audit a succeeded job: its canaries (when it inserted some) and, with --texts, membership
    /// metrics on labelled texts. Waits for the report unless --no-wait.
    Create {
        /// Job id.
        #[arg(long)]
        job: String,
        /// JSONL of {"input": text, "label": 1|0} (1 = member).
        #[arg(long)]
        texts: Option<PathBuf>,
        /// Tokens per text (default: the model's context).
        #[arg(long, default_value_t = 0)]
        max_tokens: u32,
        /// Print the audit id and return at once.
        #[arg(long)]
        no_wait: bool,
        /// Print the signed report as JSON (what `ewtune verify` checks).
        #[arg(long)]
        json: bool,
    },
    /// One audit: waits for it to end, then shows its signed report.
    Get {
        /// Audit id.
        audit: String,
        /// Print the signed report as JSON (what `ewtune verify` checks).
        #[arg(long)]
        json: bool,
        /// Also write the report as a web page to FILE: ROC curves (log-log) and the canaries'
        /// score histograms, the signed report embedded (`ewtune verify FILE` checks it).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Your audits (of one job with --job).
    List {
        /// Job id.
        #[arg(long)]
        job: Option<String>,
    },
}

/// `ewtune budget ...`
#[derive(clap::Subcommand, Debug)]
pub enum BudgetCommand {
    /// A dataset's privacy-budget report, signed by the daemon.
    Show {
        /// Dataset id.
        dataset: String,
        /// Print the signed report as JSON (what `ewtune verify` checks).
        #[arg(long)]
        json: bool,
        /// Also write the report as a web page to FILE: the burn-down and each job's epsilon
        /// over its steps as charts, the signed report embedded (`ewtune verify FILE` checks it).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

/// Every page of a List call: `page(token)` fetches one page and the token of the next (empty
/// on the last).
async fn all_pages<T, Fut>(mut page: impl FnMut(String) -> Fut) -> Result<Vec<T>, Box<dyn std::error::Error>>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let (mut items, mut token) = (Vec::new(), String::new());
    loop {
        let (batch, next) = page(token).await.map_err(explain)?;
        items.extend(batch);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

fn audit_state_name(s: i32) -> &'static str {
    match pb::AuditState::try_from(s) {
        Ok(pb::AuditState::Running) => "running",
        Ok(pb::AuditState::Succeeded) => "succeeded",
        Ok(pb::AuditState::Failed) => "failed",
        _ => "unknown",
    }
}

fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Queued) => "queued",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

pub async fn datasets(conn: &Connect, cmd: DatasetsCommand) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = conn.clients().await?;
    match cmd {
        DatasetsCommand::Register { file, name, budget_epsilon, budget_delta, user_field } => {
            let content = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let unit = if user_field.is_some() { pb::PrivacyUnit::User } else { pb::PrivacyUnit::Example };
            let d = c
                .datasets
                .register(pb::RegisterDatasetRequest { name, content, privacy_unit: unit as i32, user_field: user_field.unwrap_or_default(), budget_epsilon, budget_delta })
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}", d.dataset_id);
            eprintln!("registered {} ({} privacy units, budget epsilon {} at delta {:e})", printable(&d.name), d.units, d.budget_epsilon, d.budget_delta);
            if d.units_shared > 0 {
                eprintln!(
                    "{} of its units were registered before in other datasets: they keep the tightest budget they are under, and have epsilon {:.4} left",
                    d.units_shared, d.shared_units_remaining_epsilon
                );
            }
        }
        DatasetsCommand::List { json } => {
            let ds = all_pages(|page_token| {
                let mut client = c.datasets.clone();
                async move {
                    let page = client.list(pb::ListDatasetsRequest { page_size: 1000, page_token }).await?.into_inner();
                    Ok((page.datasets, page.next_page_token))
                }
            })
            .await?;
            if json {
                let v: Vec<_> = ds.iter().map(|d| serde_json::json!({"dataset_id": d.dataset_id, "name": d.name, "units": d.units, "budget_epsilon": d.budget_epsilon, "budget_delta": d.budget_delta, "remaining_epsilon": d.remaining_epsilon, "unit_identities": d.unit_identities})).collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:<64}  {:<16} {:>8} {:>8} {:>9} {:>8}", "dataset", "name", "units", "budget", "remaining", "delta");
                for d in ds {
                    println!("{:<64}  {:<16} {:>8} {:>8} {:>9.4} {:>8.0e}", d.dataset_id, printable(&d.name), d.units, d.budget_epsilon, d.remaining_epsilon, d.budget_delta);
                }
            }
        }
        DatasetsCommand::Get { dataset, json } => {
            let d = c.datasets.get(pb::GetDatasetRequest { dataset_id: dataset }).await.map_err(explain)?.into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"dataset_id": d.dataset_id, "name": d.name, "units": d.units, "privacy_unit": if d.privacy_unit == pb::PrivacyUnit::User as i32 { "user" } else { "example" }, "budget_epsilon": d.budget_epsilon, "budget_delta": d.budget_delta, "remaining_epsilon": d.remaining_epsilon, "units_shared": d.units_shared, "shared_units_remaining_epsilon": d.shared_units_remaining_epsilon, "unit_identities": d.unit_identities, "created_unix_ms": d.created_unix_ms})
                );
            } else {
                let unit = if d.privacy_unit == pb::PrivacyUnit::User as i32 { "users" } else { "examples" };
                println!("dataset {} ({})", d.dataset_id, printable(&d.name));
                println!("  privacy units   {} {unit} (identities {})", d.units, printable(&d.unit_identities));
                println!("  budget          epsilon {} at delta {:e}", d.budget_epsilon, d.budget_delta);
                println!("  remaining       epsilon {:.4} (certified; the least any of its units has left)", d.remaining_epsilon);
                if d.units_shared > 0 {
                    println!("  shared          {} units are also in your other datasets; they have epsilon {:.4} left", d.units_shared, d.shared_units_remaining_epsilon);
                }
                println!("  registered      {}", ewtune::service::signing::rfc3339_utc(d.created_unix_ms));
            }
        }
    }
    Ok(())
}

pub async fn jobs(conn: &Connect, cmd: JobsCommand) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = conn.clients().await?;
    match cmd {
        JobsCommand::Plan { spec, json } => {
            let p = c.jobs.plan(spec.proto()?).await.map_err(explain)?.into_inner();
            if json {
                println!("{}", serde_json::json!({"units": p.units, "sample_rate": p.sample_rate, "steps": p.steps, "noise_multiplier": p.noise_multiplier, "certified_epsilon": p.certified_epsilon, "edgeworth_epsilon": p.edgeworth_epsilon, "delta": p.delta, "remaining_epsilon_before": p.remaining_epsilon_before, "warnings": p.warnings, "examples": p.examples, "dataset_units": p.dataset_units, "truncated_examples": p.truncated_examples, "dropped_examples": p.dropped_examples, "admitted": p.admitted, "remaining_epsilon_after": p.remaining_epsilon_after, "largest_admissible_epsilon": p.largest_admissible_epsilon, "refusal": p.refusal}));
            } else {
                println!("data: {} examples, {} privacy units; {} truncated at max_length; {} dropped by a per-user cap", p.examples, p.dataset_units, p.truncated_examples, p.dropped_examples);
                println!("N = {} units, q = {:.6}, steps = {}, sigma = {:.4}", p.units, p.sample_rate, p.steps, p.noise_multiplier);
                println!("certified epsilon {:.4} at delta {:e} (guarantee); Edgeworth {:.4} (estimate)", p.certified_epsilon, p.delta, p.edgeworth_epsilon);
                println!("the dataset has {:.4} epsilon left before this job", p.remaining_epsilon_before);
                if p.admitted {
                    println!("admitted now: it would leave {:.4}; the largest target epsilon with these steps and batch is {:.4}", p.remaining_epsilon_after, p.largest_admissible_epsilon);
                } else {
                    println!("refused now: {}", printable(&p.refusal));
                }
                for w in &p.warnings {
                    println!("warning: {}", printable(w));
                }
            }
        }
        JobsCommand::Submit { spec, watch } => {
            let j = c.jobs.create(spec.proto()?).await.map_err(explain)?.into_inner();
            println!("{}", j.job_id);
            if watch {
                follow(&mut c, &j.job_id).await?;
            }
        }
        JobsCommand::Watch { job } => follow(&mut c, &job).await?,
        JobsCommand::List { json } => {
            let js = all_pages(|page_token| {
                let mut client = c.jobs.clone();
                async move {
                    let page = client.list(pb::ListJobsRequest { page_size: 1000, page_token }).await?.into_inner();
                    Ok((page.jobs, page.next_page_token))
                }
            })
            .await?;
            if json {
                let v: Vec<_> = js.iter().map(|j| serde_json::json!({"job_id": j.job_id, "dataset_id": j.dataset_id, "state": state_name(j.state), "steps_done": j.steps_done, "steps_planned": j.steps_planned, "epsilon_spent": j.epsilon_spent, "reason": j.reason})).collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:<32}  {:<10} {:>12} {:>10}", "job", "state", "steps", "epsilon");
                for j in js {
                    println!("{:<32}  {:<10} {:>5}/{:<6} {:>10.4}  {}", j.job_id, state_name(j.state), j.steps_done, j.steps_planned, j.epsilon_spent, printable(&j.reason));
                }
            }
        }
        JobsCommand::Get { job, json } => {
            let j = c.jobs.get(pb::GetJobRequest { job_id: job }).await.map_err(explain)?.into_inner();
            if json {
                let artifacts: Vec<_> = j.artifacts.iter().map(|a| serde_json::json!({"path": a.path, "size": a.size, "sha256": a.sha256})).collect();
                println!(
                    "{}",
                    serde_json::json!({"job_id": j.job_id, "dataset_id": j.dataset_id, "state": state_name(j.state), "steps_done": j.steps_done, "steps_planned": j.steps_planned, "noise_multiplier": j.noise_multiplier, "sample_rate": j.sample_rate, "epsilon_spent": j.epsilon_spent, "reason": j.reason, "created_unix_ms": j.created_unix_ms, "artifacts": artifacts, "self_audit": j.self_audit.as_ref().map(self_audit_json)})
                );
            } else {
                println!("job {} {}", j.job_id, state_name(j.state));
                println!("  dataset         {}", j.dataset_id);
                println!("  steps           {} done of {} planned (noise multiplier {:.4}, sampling rate {:.6})", j.steps_done, j.steps_planned, j.noise_multiplier, j.sample_rate);
                println!("  epsilon spent   {:.4} (certified, steps done)", j.epsilon_spent);
                println!("  created         {}", ewtune::service::signing::rfc3339_utc(j.created_unix_ms));
                if !j.reason.is_empty() {
                    println!("  reason          {}", printable(&j.reason));
                }
                if let Some(a) = &j.self_audit {
                    println!("  self-audit      {}", printable(&a.summary));
                }
                if j.state == pb::JobState::Succeeded as i32 && !j.artifacts.is_empty() {
                    println!("  model           {}", describe_model(&j));
                    println!("  download it with: ewtune jobs download {} --out DIR", j.job_id);
                }
            }
        }
        JobsCommand::Cancel { job } => {
            let j = c.jobs.cancel(pb::CancelJobRequest { job_id: job }).await.map_err(explain)?.into_inner();
            println!("{} {}", j.job_id, state_name(j.state));
        }
        JobsCommand::Download { job, out } => download(&mut c, &job, &out).await?,
    }
    Ok(())
}

/// `ewtune jobs download`: the job's recorded file list from Jobs.Get, then Jobs.GetArtifacts
/// into a staging directory beside `out`, every chunk checked against that list; `out` appears
/// only when every file arrived whole with its recorded SHA-256.
async fn download(c: &mut super::client::Clients, job: &str, out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use ewtune::artifacts::{Download, OutputFile};
    let j = c.jobs.get(pb::GetJobRequest { job_id: job.to_string() }).await.map_err(explain)?.into_inner();
    if j.state != pb::JobState::Succeeded as i32 {
        return Err(format!("job {} is {}: only a succeeded job has a model to download", j.job_id, state_name(j.state)).into());
    }
    if j.artifacts.is_empty() {
        return Err(format!("job {} has no recorded artifacts (it succeeded before the daemon recorded outputs)", j.job_id).into());
    }
    let expected: Vec<OutputFile> = j.artifacts.iter().map(|a| OutputFile { path: a.path.clone(), size: a.size, sha256: a.sha256.clone() }).collect();
    let mut dl = Download::start(out, &expected)?;
    let mut stream = c.jobs.get_artifacts(pb::GetArtifactsRequest { job_id: j.job_id.clone() }).await.map_err(explain)?.into_inner();
    while let Some(chunk) = stream.message().await.map_err(explain)? {
        dl.accept(&chunk.path, chunk.size, &chunk.sha256, chunk.offset, &chunk.data)?;
    }
    let files = dl.finish()?;
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    for f in &files {
        println!("{}  {}", f.sha256, printable(&f.path));
    }
    eprintln!("job {}'s model: {} files, {} bytes, every size and SHA-256 checked, in {}", j.job_id, files.len(), bytes, out.display());
    Ok(())
}

/// A job event in words (`jobs watch` without a terminal, and above the bar with one).
fn describe_event(e: &pb::JobEvent) -> String {
    use pb::job_event::Detail;
    match &e.detail {
        Some(Detail::Created(c)) => format!(
            "admitted: {} steps at noise multiplier {:.4}, sampling rate {:.6}; with it, {:.4} of the budget's epsilon {} (delta {:e}) is spent or reserved (certified)",
            c.steps_planned, c.noise_multiplier, c.sample_rate, c.committed_epsilon, c.budget_epsilon, c.budget_delta
        ),
        Some(Detail::Started(r)) if r.steps_done == 0 => format!("started{}", on_daemon(&r.daemon_id)),
        Some(Detail::Started(r)) => format!("restarted from its last checkpoint{}, {} steps already done", on_daemon(&r.daemon_id), r.steps_done),
        Some(Detail::Interrupted(r)) if r.lease_expired => {
            format!("interrupted at step {} (daemon {} stopped renewing its lease; another daemon resumes the job from its last checkpoint)", r.steps_done, r.daemon_id)
        }
        Some(Detail::Interrupted(r)) => format!("interrupted at step {} (the daemon stopped; the job resumes from its last checkpoint)", r.steps_done),
        Some(Detail::CancelRequested(r)) => format!("cancel requested at step {}", r.steps_done),
        Some(Detail::Progress(p)) => format!("step {}/{}: certified epsilon spent {:.4}", p.step, p.total_steps, p.epsilon_spent),
        Some(Detail::Ended(end)) => {
            let reason = if end.reason.is_empty() { String::new() } else { format!(": {}", printable(&end.reason)) };
            format!("{}{reason} ({} steps done and spent, {} planned steps released)", printable(&e.kind), end.steps_done, end.steps_released)
        }
        None => format!("{} {}", printable(&e.kind), printable(&e.payload_json)),
    }
}

/// Steps per second and the time left, from progress events' times (for lines without a bar).
#[derive(Default)]
struct Pace {
    first: Option<(i64, u64)>,
}

impl Pace {
    /// ", N steps/s, about T left" once two events are far enough apart, else empty.
    fn observe(&mut self, at_unix_ms: i64, step: u64, total: u64) -> String {
        let (t0, s0) = *self.first.get_or_insert((at_unix_ms, step));
        let (seconds, steps) = ((at_unix_ms - t0) as f64 / 1e3, step.saturating_sub(s0) as f64);
        if seconds < 1.0 || steps < 1.0 {
            return String::new();
        }
        let rate = steps / seconds;
        let left = total.saturating_sub(step) as f64 / rate;
        format!(", {rate:.2} steps/s, about {} left", indicatif::HumanDuration(std::time::Duration::from_secs_f64(left)))
    }
}

/// What a succeeded job's model is, from its artifacts and spec, in words.
fn describe_model(j: &pb::Job) -> String {
    let bytes: u64 = j.artifacts.iter().map(|a| a.size).sum();
    let spec: serde_json::Value = serde_json::from_str(&j.spec_json).unwrap_or_default();
    let base = spec["model"].as_str().unwrap_or("?");
    let kind = if j.artifacts.iter().any(|a| a.path == "adapter_config.json") {
        format!("a PEFT LoRA adapter over base model `{}`", printable(base))
    } else {
        format!("a full transformers checkpoint fine-tuned from `{}`", printable(base))
    };
    format!("{kind}: {} files, {} bytes", j.artifacts.len(), bytes)
}

async fn follow(c: &mut super::client::Clients, job: &str) -> Result<(), Box<dyn std::error::Error>> {
    use pb::job_event::Detail;
    let planned = c.jobs.get(pb::GetJobRequest { job_id: job.to_string() }).await.map_err(explain)?.into_inner().steps_planned;
    let mut stream = c.jobs.watch(pb::WatchJobRequest { job_id: job.to_string(), after_seq: 0 }).await.map_err(explain)?.into_inner();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(planned);
        b.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}").expect("static template"));
        b
    });
    let mut last_eps: Option<f64> = None;
    let mut pace = Pace::default();
    while let Some(e) = stream.message().await.map_err(explain)? {
        match (&bar, &e.detail) {
            (Some(b), Some(Detail::Progress(p))) => {
                if p.total_steps > 0 {
                    b.set_length(p.total_steps);
                }
                b.set_position(p.step);
                b.set_message(format!("epsilon spent {:.3} (certified)", p.epsilon_spent));
            }
            (Some(b), _) => b.println(describe_event(&e)),
            (None, Some(Detail::Progress(p))) => {
                // Without a terminal, one line per change of the certified epsilon (every few steps).
                let total = if p.total_steps > 0 { p.total_steps } else { planned };
                let eta = pace.observe(e.at_unix_ms, p.step, total);
                if last_eps != Some(p.epsilon_spent) {
                    eprintln!("step {}/{total}: certified epsilon spent {:.4}{eta}", p.step, p.epsilon_spent);
                    last_eps = Some(p.epsilon_spent);
                }
            }
            (None, _) => eprintln!("{}", describe_event(&e)),
        }
    }
    // Left on the screen, full (or where the job stopped), as cargo and pip leave theirs.
    if let Some(b) = bar {
        b.finish();
    }
    let j = c.jobs.get(pb::GetJobRequest { job_id: job.to_string() }).await.map_err(explain)?.into_inner();
    println!("job {} {}: {}/{} steps, certified epsilon spent {:.4} {}", j.job_id, state_name(j.state), j.steps_done, j.steps_planned, j.epsilon_spent, printable(&j.reason));
    if let Some(a) = &j.self_audit {
        println!("self-audit ({} gradient canaries): {}", a.canaries, printable(&a.summary));
    }
    if j.state == pb::JobState::Failed as i32 {
        return Err(format!("job failed: {}", printable(&j.reason)).into());
    }
    if j.state == pb::JobState::Succeeded as i32 && !j.artifacts.is_empty() {
        println!("model: {}, kept by the daemon (jobs/{}/model in its data directory)", describe_model(&j), j.job_id);
        println!("download it with: ewtune jobs download {} --out DIR", j.job_id);
    }
    Ok(())
}

/// A job's self-audit as `jobs get --json` prints it.
fn self_audit_json(a: &pb::SelfAudit) -> serde_json::Value {
    let tests: Vec<_> = a.tests.iter().map(|t| serde_json::json!({"name": t.name, "checks": t.checks, "ratio": t.ratio, "p_value": t.p_value})).collect();
    serde_json::json!({
        "passed": a.passed, "summary": a.summary, "canaries": a.canaries, "steps": a.steps, "tests": tests, "level": a.level,
        "failures": a.failures, "certified_epsilon": a.certified_epsilon, "steinke_epsilon": a.steinke_epsilon, "delta": a.delta,
        "fdp_p_value": a.fdp_p_value, "fdp_in_family_epsilon": a.fdp_in_family_epsilon, "warnings": a.warnings,
    })
}

pub async fn budget(conn: &Connect, cmd: BudgetCommand) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = conn.clients().await?;
    let BudgetCommand::Show { dataset, json, html } = cmd;
    let r = c.budget.get(pb::GetBudgetRequest { dataset_id: dataset, charts: html.is_some() }).await.map_err(explain)?.into_inner();
    if let Some(path) = &html {
        let signed = SignedReport::new(r.report_json.clone(), &r.signature, &r.public_key);
        write_page(path, &ewtune::pages::budget::budget_page(&signed)?)?;
    }
    if json {
        let signed = SignedReport::new(r.report_json, &r.signature, &r.public_key);
        println!("{}", serde_json::to_string_pretty(&signed)?);
        return Ok(());
    }
    let report: serde_json::Value = serde_json::from_str(&r.report_json)?;
    let short = |id: &str| id[..id.len().min(12)].to_string();
    let issued = report["issued_at_unix_ms"].as_i64().map_or_else(String::new, ewtune::service::signing::rfc3339_utc);
    println!("privacy budget of dataset {} (report {} issued {issued})", report["dataset"].as_str().unwrap_or(""), report["sequence"]);
    println!("  budget                     epsilon {:.4} at delta {:e}", r.budget_epsilon, report["budget_delta"].as_f64().unwrap_or(f64::NAN));
    println!("  spent                      epsilon {:.4}   certified (Edgeworth estimate {:.4})", r.spent_epsilon, r.spent_edgeworth_epsilon);
    println!("  spent + reserved           epsilon {:.4}   certified", r.committed_epsilon);
    println!("  left for the worst-off     epsilon {:.4}   (not additive: `ewtune jobs plan` says what a job would leave)", r.remaining_epsilon);
    if r.classes.len() > 1 || r.classes.iter().any(|c| c.dataset_ids.len() > 1) {
        println!("its units by the datasets they are in, worst first (the figures above are the first row's):");
        let mut table = aligned_table(&["units", "spent", "spent + reserved", "left", "in datasets", "bound by"], &[0, 1, 2, 3]);
        for class in &r.classes {
            let datasets: Vec<String> = class.dataset_ids.iter().map(|d| short(d)).collect();
            table.add_row(vec![
                class.units.to_string(),
                format!("{:.4}", class.spent_epsilon),
                format!("{:.4}", class.committed_epsilon),
                format!("{:.4}", class.remaining_epsilon),
                datasets.join(" "),
                short(&class.binding_dataset_id),
            ]);
        }
        println!("{table}");
    }
    if let Some(rows) = report["jobs"].as_array().filter(|rows| !rows.is_empty()) {
        println!("jobs that spend its units (epsilon: each job's steps done alone, certified):");
        let mut table = aligned_table(&["job", "dataset", "state", "steps done", "planned", "reserved", "sigma", "q", "epsilon spent"], &[3, 4, 5, 6, 7, 8]);
        for j in rows {
            table.add_row(vec![
                j["job"].as_str().unwrap_or("").to_string(),
                short(j["dataset"].as_str().unwrap_or("")),
                j["state"].as_str().unwrap_or("").to_string(),
                j["steps_done"].to_string(),
                j["steps_planned"].to_string(),
                j["steps_reserved"].to_string(),
                format!("{:.4}", j["noise_multiplier"].as_f64().unwrap_or(f64::NAN)),
                format!("{:.6}", j["sample_rate"].as_f64().unwrap_or(f64::NAN)),
                format!("{:.4}", j["epsilon_alone"].as_f64().unwrap_or(f64::NAN)),
            ]);
        }
        println!("{table}");
        // The output files, as `sha256sum -c` reads them (relative to a downloaded model).
        for j in rows.iter().filter(|j| j["outputs"].as_array().is_some_and(|o| !o.is_empty())) {
            println!("model files of job {}:", j["job"].as_str().unwrap_or(""));
            for f in j["outputs"].as_array().into_iter().flatten() {
                println!("  {}  {}", printable(f["sha256"].as_str().unwrap_or("")), printable(f["path"].as_str().unwrap_or("")));
            }
        }
    }
    println!("signed by {} (verify offline: `ewtune budget show ID --json > r.json; ewtune verify r.json`)", hex(&r.public_key));
    Ok(())
}

/// Writes a report page (whole or not at all) and says where, on stderr (stdout may be JSON).
pub fn write_page(path: &std::path::Path, html: &str) -> Result<(), Box<dyn std::error::Error>> {
    ewtune::fs::write_atomic(path, html.as_bytes())?;
    eprintln!("wrote {} (open it in a browser)", path.display());
    Ok(())
}

/// A table with `header`, its columns `right` aligned right (numbers), in plain ASCII so that it
/// reads the same on a terminal, in a pipe and pasted into Markdown.
fn aligned_table(header: &[&str], right: &[usize]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN).set_header(header.to_vec());
    for &i in right {
        if let Some(column) = table.column_mut(i) {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    table
}

pub async fn audits(conn: &Connect, cmd: AuditsCommand) -> Result<(), Box<dyn std::error::Error>> {
    let mut c = conn.clients().await?;
    match cmd {
        AuditsCommand::Create { job, texts, max_tokens, no_wait, json } => {
            let texts = match texts {
                None => Vec::new(),
                Some(path) => super::audit::read_jsonl::<ewtune::audit::texts::LabeledText>(&path)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| match t.label {
                        0 | 1 => Ok(pb::LabeledText { member: t.label == 1, input: t.input }),
                        other => Err(format!("{} text {}: label must be 1 (member) or 0, got {other}", path.display(), i + 1)),
                    })
                    .collect::<Result<_, _>>()?,
            };
            let a = c.audits.create(pb::CreateAuditRequest { job_id: job, texts, max_tokens }).await.map_err(explain)?.into_inner();
            if no_wait {
                println!("{}", a.audit_id);
                return Ok(());
            }
            eprintln!("audit {} running", a.audit_id);
            show_audit(&finished(&mut c, a).await?, json)
        }
        AuditsCommand::Get { audit, json, html } => {
            let a = c.audits.get(pb::GetAuditRequest { audit_id: audit }).await.map_err(explain)?.into_inner();
            let a = finished(&mut c, a).await?;
            show_audit(&a, json)?;
            if let Some(path) = &html {
                let signed = SignedReport::new(a.report_json.clone(), &a.signature, &a.public_key);
                write_page(path, &ewtune::pages::audit::audit_page(&signed)?)?;
            }
            Ok(())
        }
        AuditsCommand::List { job } => {
            let job_id = job.unwrap_or_default();
            let audits = all_pages(|page_token| {
                let (mut client, job_id) = (c.audits.clone(), job_id.clone());
                async move {
                    let page = client.list(pb::ListAuditsRequest { job_id, page_size: 1000, page_token }).await?.into_inner();
                    Ok((page.audits, page.next_page_token))
                }
            })
            .await?;
            println!("{:<32}  {:<32}  {:<10} {:>10} {:>10}", "audit", "job", "state", "eps_lb", "certified");
            for a in audits {
                println!("{:<32}  {:<32}  {:<10} {:>10.4} {:>10.4}  {}", a.audit_id, a.job_id, audit_state_name(a.state), a.epsilon_lower_bound, a.certified_epsilon, printable(&a.reason));
            }
            Ok(())
        }
    }
}

/// Polls a running audit until it ends, showing how far its scoring has got: a bar on a
/// terminal (left full at the end), a line at every tenth otherwise (and at the end).
async fn finished(c: &mut super::client::Clients, mut a: pb::Audit) -> Result<pb::Audit, Box<dyn std::error::Error>> {
    let bar = if a.state == pb::AuditState::Running as i32 { super::audit::scoring_bar() } else { None };
    let mut tenths_shown = None;
    let mut show = |a: &pb::Audit| match &bar {
        Some(b) => {
            b.set_length(a.to_score);
            b.set_position(a.scored);
            b.set_message(audit_work(a));
        }
        None if a.to_score > 0 => {
            let tenths = a.scored * 10 / a.to_score;
            if tenths_shown != Some(tenths) {
                eprintln!("audit {}: {} of {} scorings done ({})", a.audit_id, a.scored, a.to_score, audit_work(a));
                tenths_shown = Some(tenths);
            }
        }
        None => {}
    };
    let was_running = a.state == pb::AuditState::Running as i32;
    while a.state == pb::AuditState::Running as i32 {
        show(&a);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        a = c.audits.get(pb::GetAuditRequest { audit_id: a.audit_id.clone() }).await.map_err(explain)?.into_inner();
    }
    if was_running {
        show(&a);
    }
    if let Some(b) = bar {
        b.finish();
    }
    Ok(a)
}

/// What an audit scores, in words: `400 texts, 3 scorings each, and 200 canaries, 2 each`.
fn audit_work(a: &pb::Audit) -> String {
    use ewtune::audit::{canary::SCORINGS_PER_CANARY as PER_CANARY, texts::SCORINGS_PER_TEXT as PER_TEXT};
    let canaries = a.to_score.saturating_sub(u64::from(a.texts) * PER_TEXT) / PER_CANARY;
    match (a.texts, canaries) {
        (0, c) => format!("{c} canaries, {PER_CANARY} scorings each"),
        (t, 0) => format!("{t} texts, {PER_TEXT} scorings each"),
        (t, c) => format!("{t} texts, {PER_TEXT} scorings each, and {c} canaries, {PER_CANARY} each"),
    }
}

fn show_audit(a: &pb::Audit, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    if a.state == pb::AuditState::Failed as i32 {
        return Err(format!("audit {} failed: {}", a.audit_id, printable(&a.reason)).into());
    }
    if a.state != pb::AuditState::Succeeded as i32 {
        println!("audit {} {}", a.audit_id, audit_state_name(a.state));
        return Ok(());
    }
    if json {
        let signed = SignedReport::new(a.report_json.clone(), &a.signature, &a.public_key);
        println!("{}", serde_json::to_string_pretty(&signed)?);
        return Ok(());
    }
    let report: serde_json::Value = serde_json::from_str(&a.report_json)?;
    println!("audit {} of job {}", a.audit_id, a.job_id);
    if let Some(mia) = report["data_mia"].as_object() {
        println!("  texts: {} members, {} non-members", mia["n_members"], mia["n_nonmembers"]);
        println!("  {:<12} {:>7} {:>17} {:>10}", "score", "AUC", "95% CI", "TPR@1%");
        for (name, m) in mia["scores"].as_object().into_iter().flatten() {
            println!(
                "  {:<12} {:>7.4} [{:>6.4}, {:>6.4}] {:>10.4}",
                name,
                m["auc"].as_f64().unwrap_or(f64::NAN),
                m["auc_ci95"][0].as_f64().unwrap_or(f64::NAN),
                m["auc_ci95"][1].as_f64().unwrap_or(f64::NAN),
                m["tpr_at_1pct_fpr"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if a.has_canary_audit {
        let c = &report["canary_audit"];
        println!("  canaries: m = {}, {} inserted; canary AUC {:.4}", c["m"], c["n_included"], a.canary_auc);
        println!(
            "  empirical epsilon lower bound {:.4} (95 %, one run, Bonferroni over {} guesses; at most {:.3} with these canaries)",
            a.epsilon_lower_bound,
            c["grid_size"],
            c["eps_ceiling_for_m"].as_f64().unwrap_or(f64::NAN)
        );
        println!("  certified epsilon {:.4}", a.certified_epsilon);
        if a.violation {
            println!("ALARM: the lower bound exceeds the certified epsilon: the DP claim is refuted; accounting or training is wrong");
        }
    }
    println!("  signed by {} (verify offline with `ewtune audits get {} --json > a.json; ewtune verify a.json`)", hex(&a.public_key), a.audit_id);
    Ok(())
}

/// " on daemon ID" when the event names one (several daemons share the ledger).
fn on_daemon(id: &str) -> String {
    if id.is_empty() || id == "local" {
        String::new()
    } else {
        format!(" on daemon {id}")
    }
}
