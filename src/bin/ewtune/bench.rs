//! `ewtune bench ...`: benchmarks that print figures (never asserted in tests).

use ewtune::train::bench::{dp_step, dp_step_breakdown, BenchShape, MemoryMode, MemoryRun, MemorySettings};
use ewtune::train::job::DeviceChoice;
use ewtune::train::precision::Precision;
use std::path::PathBuf;

/// Layout of the random model `bench dp-step` runs on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchFamily {
    /// GPT-2: LayerNorm, fused qkv with biases, GELU MLP, tied head.
    Gpt2,
    /// Llama: RMSNorm, grouped-query attention, SwiGLU MLP, untied head.
    Llama,
}

/// The random model a benchmark runs on (defaults: the GPT-2-small shape), and its threads.
#[derive(clap::Args, Debug)]
pub struct ModelShape {
    /// Transformer blocks.
    #[arg(long, default_value_t = 12)]
    layers: i64,
    /// Model width.
    #[arg(long, default_value_t = 768)]
    d_model: i64,
    /// Attention heads.
    #[arg(long, default_value_t = 12)]
    heads: i64,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq_len: i64,
    /// Vocabulary size.
    #[arg(long, default_value_t = 50257)]
    vocab: i64,
    /// libtorch intra-op threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

impl ModelShape {
    fn set_threads(&self) {
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
    }
}

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Unary calls (Datasets.Get, Jobs.List, Budget.Get, health in turn) at a fixed rate
    /// against a running daemon; prints p50/p99 latency per method. Run it while a job trains;
    /// with `--plans`/`--upload-mib`, hostile clients load the daemon at the same time.
    Load {
        /// Requests per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Duration.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// A dataset id of your tenant.
        #[arg(long)]
        dataset: String,
        /// Clients that send Plans with never-seen targets (each one a fresh calibration)
        /// back to back during the measurement.
        #[arg(long, default_value_t = 0)]
        plans: u32,
        /// The model those Plans name (a directory in the daemon's models dir).
        #[arg(long, default_value = "tiny-gpt2")]
        model: String,
        /// One client that registers datasets of this many MiB back to back (0: none).
        #[arg(long, default_value_t = 0)]
        upload_mib: u32,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The per-person ledger at scale, against a fresh daemon (benches/ledger_scale.sh):
    /// registers `--datasets` example-level datasets of `--records` distinct records each, as
    /// overlapping windows over `--units` people, then creates jobs and reads budget reports;
    /// prints the time of each Register and Create and Budget.Get latencies (also with the
    /// charts' data a page asks for).
    Ledger {
        /// People in all (each dataset is a window of them).
        #[arg(long, default_value_t = 1_000_000)]
        units: u64,
        /// Datasets registered.
        #[arg(long, default_value_t = 50)]
        datasets: u64,
        /// Records per dataset.
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// Jobs created, spread over the datasets (the last one refused for its budget).
        #[arg(long, default_value_t = 10)]
        creates: u64,
        /// The model the jobs name (a directory in the daemon's models dir).
        #[arg(long, default_value = "tiny-gpt2")]
        model: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Admissions per second and Budget.Get latency against one daemon or several on one
    /// ledger (benches/shared_ledger.sh runs it against one daemon on SQLite and three on one
    /// PostgreSQL, side by side): registers one dataset through the first `--daemon`, then sends
    /// `--creates` Creates from `--clients` concurrent clients spread over the daemons in turn,
    /// then `--gets` Budget.Gets the same way.
    Admissions {
        /// A daemon's address; repeat for several daemons on one ledger (default: --addr).
        #[arg(long = "daemon")]
        daemons: Vec<String>,
        /// Jobs created.
        #[arg(long, default_value_t = 200)]
        creates: usize,
        /// Budget.Gets sent.
        #[arg(long, default_value_t = 400)]
        gets: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// The model the jobs name (a directory in the daemons' models dir).
        #[arg(long, default_value = "tiny-gpt2")]
        model: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Audit scoring throughput (tokens/s) over plain forward throughput, same model and batches.
    Audit {
        #[command(flatten)]
        shape: ModelShape,
        /// Texts.
        #[arg(long, default_value_t = 32)]
        texts: usize,
        /// Texts per forward pass.
        #[arg(long, default_value_t = 8)]
        batch: usize,
    },
    /// DP step time over non-private step time, LoRA and full fine-tuning, same model and batch.
    DpStep {
        /// Layout of the random model.
        #[arg(long, value_enum, default_value_t = BenchFamily::Gpt2)]
        family: BenchFamily,
        #[command(flatten)]
        shape: ModelShape,
        /// Key/value heads (llama; default heads / 4 where that divides, else heads).
        #[arg(long)]
        kv_heads: Option<i64>,
        /// MLP width (default: gpt2 4 d_model, llama 2.5 d_model).
        #[arg(long)]
        intermediate: Option<i64>,
        /// Sequences per batch.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Timed repeats (after one warm-up).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Device.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
        /// One JSON object per mode per line.
        #[arg(long)]
        json: bool,
        /// Instead: where each step's time goes (forward, backward, per-unit norms and clipped
        /// sums per kind and shape of layer, update), medians over the repeats.
        #[arg(long)]
        breakdown: bool,
    },
    /// Peak memory (resident set) of a job's load and DP steps on a random checkpoint of
    /// Qwen2.5-0.5B's shape (bf16 on disk), LoRA and full fine-tuning, f32 and bf16, each run in
    /// a child process of its own; CPU.
    Memory {
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        seq_len: i64,
        /// Sequences per step (one micro-batch; each a privacy unit).
        #[arg(long, default_value_t = 2)]
        micro_batch: usize,
        /// Transformer blocks (24 is Qwen2.5-0.5B; fewer for a quick run).
        #[arg(long, default_value_t = 24)]
        layers: i64,
        /// DP steps per run (the step time printed is the last one's).
        #[arg(long, default_value_t = 2)]
        steps: usize,
        /// Only these modes (default: lora and full).
        #[arg(long, value_enum)]
        mode: Vec<MemoryMode>,
        /// Write the checkpoint here and keep it (reused when it already holds one of this
        /// shape); default: a temporary directory, removed at the end.
        #[arg(long)]
        keep_dir: Option<PathBuf>,
        /// libtorch intra-op threads in each run (0: libtorch's default).
        #[arg(long, default_value_t = 0)]
        threads: i32,
        /// Leave glibc's malloc at its defaults in the runs (by default their mmap threshold is
        /// pinned at 1 MiB, so freed tensors go back to the system and the peaks are what the
        /// tensors need, reproducible; with glibc's defaults freed blocks of up to 32 MiB stay
        /// in the heap and full fine-tuning peaks move by a GiB or more between runs).
        #[arg(long)]
        glibc_default_malloc: bool,
        /// One JSON object per run per line.
        #[arg(long)]
        json: bool,
    },
    /// One run of `bench memory`, in this process: prints one JSON line (internal).
    #[command(hide = true)]
    MemoryChild {
        /// Checkpoint directory.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_enum)]
        mode: MemoryMode,
        #[arg(long, value_enum)]
        precision: Precision,
        #[arg(long, default_value_t = 128)]
        seq_len: i64,
        #[arg(long, default_value_t = 2)]
        micro_batch: usize,
        #[arg(long, default_value_t = 2)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        threads: i32,
    },
}

pub fn run(cmd: BenchCommand, connect: &crate::client::Connect) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        BenchCommand::Memory { seq_len, micro_batch, layers, steps, mode, keep_dir, threads, glibc_default_malloc, json } => {
            let settings = MemorySettings { seq_len, micro_batch, steps, threads, pin_mmap_threshold: !glibc_default_malloc };
            memory(settings, layers, &mode, keep_dir, json)
        }
        BenchCommand::MemoryChild { model, mode, precision, seq_len, micro_batch, steps, threads } => {
            let run = ewtune::train::bench::memory_run(&model, mode, precision, MemorySettings { seq_len, micro_batch, steps, threads, pin_mmap_threshold: false })?;
            println!("{}", serde_json::to_string(&run)?);
            Ok(())
        }
        BenchCommand::Audit { shape, texts, batch } => {
            shape.set_threads();
            audit_throughput(&shape, texts, batch)
        }
        BenchCommand::Ledger { units, datasets, records, creates, model, json } => {
            let scale = LedgerScale { units, datasets, records, creates, model };
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(ledger(connect, scale, json))
        }
        BenchCommand::Admissions { daemons, creates, gets, clients, model, json } => {
            let daemons = if daemons.is_empty() { vec![connect.addr.clone()] } else { daemons };
            let run = AdmissionRun { daemons, creates, gets, clients: clients.max(1), model };
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(admissions(connect, run, json))
        }
        BenchCommand::Load { rate, seconds, dataset, plans, model, upload_mib, json } => {
            let hostile = Hostile { plans, model, upload_mib };
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(load(connect, rate, seconds, dataset, hostile, json))
        }
        BenchCommand::DpStep { family, shape: s, kv_heads, intermediate, batch, repeats, device, json, breakdown } => {
            s.set_threads();
            use ewtune::train::synthetic::Family;
            let (family, kv_heads) = match family {
                BenchFamily::Gpt2 => (Family::Gpt2, kv_heads.unwrap_or(s.heads)),
                BenchFamily::Llama => (Family::Llama, kv_heads.unwrap_or(if s.heads % 4 == 0 { s.heads / 4 } else { s.heads })),
            };
            let shape = BenchShape {
                family,
                layers: s.layers,
                d_model: s.d_model,
                heads: s.heads,
                kv_heads,
                intermediate,
                seq_len: s.seq_len,
                batch,
                vocab: s.vocab,
                repeats: repeats.max(1),
            };
            let device = device.resolve()?;
            if breakdown {
                for b in dp_step_breakdown(shape, device)? {
                    if json {
                        println!("{}", serde_json::to_string(&b)?);
                        continue;
                    }
                    println!("{} {}: non-dp {:.4}s, dp {:.4}s (ratio {:.3}; parts timed one by one)", b.family, b.mode, b.nondp_total_s, b.dp_total_s, b.dp_total_s / b.nondp_total_s);
                    for (step, parts) in [("non-dp", &b.nondp), ("dp", &b.dp)] {
                        for p in parts {
                            println!("  {step:<6} {:<44} x{:<3} {:>8.2} ms (min {:>8.2})  {:>5.1} % of non-dp", p.name, p.count, p.seconds * 1e3, p.min_seconds * 1e3, 100.0 * p.seconds / b.nondp_total_s);
                        }
                    }
                }
                return Ok(());
            }
            for t in dp_step(shape, device)? {
                if json {
                    println!("{}", serde_json::to_string(&t)?);
                } else {
                    println!(
                        "{} {:<5} dp {:.4}s  non-dp {:.4}s  ratio {:.3} (paired {:.3}, target {:.2})  self-audit on {:.4}s: {:.3} of dp (paired, target 1.03)  (noise draw {:.4}s on the noise thread, {} trainable, {}, {} thread(s))",
                        t.family, t.mode, t.dp_step_s, t.nondp_step_s, t.ratio, t.paired_ratio, t.target, t.audited_step_s, t.self_audit_overhead, t.noise_draw_s, t.trainable_params, t.device, t.threads
                    );
                }
            }
            Ok(())
        }
    }
}

/// The hostile load beside the measured calls.
struct Hostile {
    plans: u32,
    model: String,
    upload_mib: u32,
}

/// Sends `hostile`'s Plans and uploads until `stop` turns true; returns (plans answered,
/// uploads answered, other outcomes).
async fn hostile_load(connect: &crate::client::Connect, hostile: Hostile, dataset: String, stop: tokio::sync::watch::Receiver<bool>) -> Result<tokio::task::JoinSet<(u32, u32, u32)>, Box<dyn std::error::Error>> {
    use ewtune::api::pb;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..hostile.plans {
        let mut jobs = connect.clients().await?.jobs;
        let (ds, model, stop) = (dataset.clone(), hostile.model.clone(), stop.clone());
        tasks.spawn(async move {
            let (mut ok, mut other) = (0, 0);
            let mut n = 0u64;
            while !*stop.borrow() {
                n += 1;
                // A target and length never asked before: no cache can answer it.
                let spec = pb::JobSpec {
                    dataset_id: ds.clone(),
                    base_model: model.clone(),
                    target_epsilon: 0.5 + f64::from(client) * 0.1 + n as f64 * 1e-4,
                    batch_size: 100,
                    steps: 2000 + n * 7 + u64::from(client),
                    ..Default::default()
                };
                match jobs.plan(spec).await {
                    Ok(_) => ok += 1,
                    Err(_) => other += 1,
                }
            }
            (ok, 0, other)
        });
    }
    if hostile.upload_mib > 0 {
        let mut datasets = connect.clients().await?.datasets;
        let stop = stop.clone();
        let line = "{\"text\": \"The patient was seen on Monday with a cough; we advised rest and fluids.\"}\n";
        let body = line.repeat(((hostile.upload_mib as usize) << 20) / line.len());
        tasks.spawn(async move {
            let (mut ok, mut other) = (0, 0);
            let mut n = 0u64;
            while !*stop.borrow() {
                n += 1;
                let mut content = format!("{{\"text\": \"upload {n} {}\"}}\n", std::process::id()).into_bytes();
                content.extend_from_slice(body.as_bytes());
                let req = pb::RegisterDatasetRequest { name: format!("upload {n}"), content, budget_epsilon: 1.0, budget_delta: 1e-6, ..Default::default() };
                match datasets.register(req).await {
                    Ok(_) => ok += 1,
                    Err(_) => other += 1,
                }
            }
            (0, ok, other)
        });
    }
    Ok(tasks)
}

async fn load(connect: &crate::client::Connect, rate: u32, seconds: u64, dataset: String, hostile: Hostile, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    use ewtune::api::pb;
    let clients = connect.clients().await?;
    let health = tonic_health::pb::health_client::HealthClient::new(connect.channel().await?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut background = hostile_load(connect, hostile, dataset.clone(), stop_rx).await?;
    if !background.is_empty() {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await; // let the hostile load build up
    }
    let mut interval = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = u64::from(rate) * seconds;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        interval.tick().await;
        let (mut d, mut j, mut b, mut h, ds) = (clients.datasets.clone(), clients.jobs.clone(), clients.budget.clone(), health.clone(), dataset.clone());
        tasks.spawn(async move {
            let t = std::time::Instant::now();
            let ok = match i % 4 {
                0 => d.get(pb::GetDatasetRequest { dataset_id: ds }).await.is_ok(),
                1 => j.list(pb::ListJobsRequest::default()).await.is_ok(),
                2 => b.get(pb::GetBudgetRequest { dataset_id: ds, charts: false }).await.is_ok(),
                _ => h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok(),
            };
            (i % 4, t.elapsed().as_secs_f64(), ok)
        });
    }
    let mut lat = Vec::new();
    let mut by_method: [Vec<f64>; 4] = Default::default();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (method, s, ok) = r?;
        lat.push(s);
        by_method[method as usize].push(s);
        if !ok {
            errors += 1;
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() as f64 - 1.0) * p).round() as usize] * 1e3
    };
    let (p50, p99, max) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0));
    let _ = stop_tx.send(true);
    let (mut plans, mut uploads, mut refused) = (0, 0, 0);
    while let Some(r) = background.join_next().await {
        let (p, u, o) = r?;
        (plans, uploads, refused) = (plans + p, uploads + u, refused + o);
    }
    let names = ["Datasets.Get", "Jobs.List", "Budget.Get", "health"];
    let per: Vec<(&str, f64, f64)> = names.iter().zip(by_method.iter_mut()).filter(|(_, v)| !v.is_empty()).map(|(n, v)| (*n, pct(v, 0.5), pct(v, 0.99))).collect();
    if json {
        let methods: serde_json::Map<String, serde_json::Value> = per.iter().map(|(n, a, b)| (n.to_string(), serde_json::json!({"p50_ms": a, "p99_ms": b}))).collect();
        println!("{}", serde_json::json!({"rate": rate, "requests": lat.len(), "errors": errors, "p50_ms": p50, "p99_ms": p99, "max_ms": max, "by_method": methods, "hostile": {"plans_answered": plans, "uploads_answered": uploads, "refused": refused}}));
    } else {
        println!("{} requests at {rate}/s: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, {errors} errors", lat.len());
        for (n, a, b) in per {
            println!("  {n:<13} p50 {a:.2} ms, p99 {b:.2} ms");
        }
        if plans + uploads + refused > 0 {
            println!("meanwhile: {plans} uncached Plans answered, {uploads} uploads registered, {refused} refused (busy or deadline)");
        }
    }
    Ok(())
}

/// What `bench ledger` registers and creates.
struct LedgerScale {
    units: u64,
    datasets: u64,
    records: u64,
    creates: u64,
    model: String,
}

/// Percentile `p` of `v` in milliseconds (sorts `v`).
fn percentile_ms(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize] * 1e3
}

async fn ledger(connect: &crate::client::Connect, scale: LedgerScale, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    use ewtune::api::pb;
    use std::time::Instant;
    let LedgerScale { units, datasets, records, creates, model } = scale;
    if datasets < 1 || records < 1 || records > units {
        return Err("need --datasets >= 1 and 1 <= --records <= --units".into());
    }
    let mut c = connect.clients().await?;
    let stride = units / datasets;
    let (mut ids, mut register_s) = (Vec::new(), Vec::new());
    let mut shared = Vec::new();
    for i in 0..datasets {
        // Dataset i: people i*stride .. i*stride + records (mod units), one distinct note each.
        let mut content = String::with_capacity(records as usize * 64);
        for k in 0..records {
            let person = (i * stride + k) % units;
            content.push_str(&format!("{{\"text\": \"Person {person} was seen for a routine check; all values normal.\"}}\n"));
        }
        let t = Instant::now();
        let d = c
            .datasets
            .register(pb::RegisterDatasetRequest { name: format!("window {i}"), content: content.into_bytes(), budget_epsilon: 40.0, budget_delta: 1e-5, ..Default::default() })
            .await?
            .into_inner();
        register_s.push(t.elapsed().as_secs_f64());
        shared.push(d.units_shared);
        ids.push(d.dataset_id);
        if !json {
            eprintln!("registered {} of {datasets}: {:.3} s, {} of its {} units already known", i + 1, register_s.last().unwrap(), d.units_shared, d.units);
        }
    }
    let (mut create_s, mut refused_s) = (Vec::new(), None);
    for k in 0..creates {
        let dataset = ids[(k * datasets / creates.max(1)) as usize % ids.len()].clone();
        let last = k + 1 == creates;
        let spec = pb::JobSpec {
            dataset_id: dataset,
            base_model: model.clone(),
            finetune: Some(pb::job_spec::Finetune::Full(true)),
            noise_multiplier: if last { 0.5 } else { 1.0 },
            batch_size: 1000,
            steps: if last { 100_000 } else { 200 },
            micro_batch: 50,
            max_length: 32,
            ..Default::default()
        };
        let t = Instant::now();
        let created = c.jobs.create(spec).await;
        let s = t.elapsed().as_secs_f64();
        match (created, last) {
            (Ok(_), _) => create_s.push(s),
            (Err(e), true) if e.code() == tonic::Code::FailedPrecondition => refused_s = Some(s),
            (Err(e), _) => return Err(format!("Create: {}", e.message()).into()),
        }
    }
    let mut budget_s = Vec::new();
    for k in 0..100 {
        let t = Instant::now();
        c.budget.get(pb::GetBudgetRequest { dataset_id: ids[k % ids.len()].clone(), charts: false }).await?;
        budget_s.push(t.elapsed().as_secs_f64());
    }
    // The same reports with their charts' data (what a page asks for), side by side: the first
    // of each dataset composes every chart point, later ones find them memoised.
    let mut charts_first_s = Vec::new();
    let mut charts_again_s = Vec::new();
    for k in 0..2 * ids.len().min(10) {
        let t = Instant::now();
        c.budget.get(pb::GetBudgetRequest { dataset_id: ids[k % ids.len().min(10)].clone(), charts: true }).await?;
        let s = t.elapsed().as_secs_f64();
        if k < ids.len().min(10) { charts_first_s.push(s) } else { charts_again_s.push(s) }
    }
    let report = c.budget.get(pb::GetBudgetRequest { dataset_id: ids[0].clone(), charts: false }).await?.into_inner();
    let last_register = *register_s.last().unwrap();
    let (reg_p50, reg_max) = (percentile_ms(&mut register_s, 0.5), percentile_ms(&mut register_s, 1.0));
    let (create_p50, create_max) = if create_s.is_empty() { (f64::NAN, f64::NAN) } else { (percentile_ms(&mut create_s, 0.5), percentile_ms(&mut create_s, 1.0)) };
    let (get_p50, get_p99) = (percentile_ms(&mut budget_s, 0.5), percentile_ms(&mut budget_s, 0.99));
    let (charts_first, charts_again) = (percentile_ms(&mut charts_first_s, 0.5), percentile_ms(&mut charts_again_s, 0.5));
    let figures = serde_json::json!({
        "units": units, "datasets": datasets, "records_per_dataset": records,
        "register_ms": {"p50": reg_p50, "max": reg_max, "last": last_register * 1e3},
        "units_already_known_in_last": shared.last(),
        "create_ms": {"p50": create_p50, "max": create_max, "admitted": create_s.len()},
        "refused_create_ms": refused_s.map(|s| s * 1e3),
        "budget_get_ms": {"p50": get_p50, "p99": get_p99},
        "budget_get_with_charts_ms": {"first_p50": charts_first, "again_p50": charts_again},
        "classes_of_first_dataset": report.classes.len(),
    });
    if json {
        println!("{figures}");
    } else {
        println!("{units} people, {datasets} datasets of {records} records (each person in about {} datasets)", datasets * records / units.max(1));
        println!("Register: p50 {reg_p50:.0} ms, max {reg_max:.0} ms (the last, with {} units already known: {:.0} ms)", shared.last().unwrap_or(&0), last_register * 1e3);
        println!("Create (admitted): p50 {create_p50:.0} ms, max {create_max:.0} ms over {}; refused with the largest target quoted: {}", create_s.len(), refused_s.map_or("-".into(), |s| format!("{:.0} ms", s * 1e3)));
        println!("Budget.Get: p50 {get_p50:.1} ms, p99 {get_p99:.1} ms; the first dataset's units form {} classes", report.classes.len());
        println!("Budget.Get with charts (a page): p50 {charts_first:.1} ms the first time per dataset, {charts_again:.1} ms again");
    }
    Ok(())
}

/// What `bench admissions` sends, and where.
struct AdmissionRun {
    daemons: Vec<String>,
    creates: usize,
    gets: usize,
    clients: usize,
    model: String,
}

async fn admissions(connect: &crate::client::Connect, run: AdmissionRun, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    use ewtune::api::pb;
    use std::time::Instant;
    let AdmissionRun { daemons, creates, gets, clients, model } = run;
    let mut per_daemon = Vec::new();
    for addr in &daemons {
        let c = crate::client::Connect { addr: addr.clone(), ..connect.clone() };
        per_daemon.push(c.clients().await?);
    }
    // Fresh bytes each run (a dataset's bytes register once per tenant).
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let content: String = (0..1000).map(|k| format!("{{\"text\": \"Note {k} of run {run_id}: seen for a routine check; all values normal.\"}}\n")).collect();
    let dataset = per_daemon[0]
        .datasets
        .register(pb::RegisterDatasetRequest { name: "admissions".into(), content: content.into_bytes(), budget_epsilon: 1000.0, budget_delta: 1e-5, ..Default::default() })
        .await?
        .into_inner()
        .dataset_id;
    let spec = pb::JobSpec {
        dataset_id: dataset.clone(),
        base_model: model,
        finetune: Some(pb::job_spec::Finetune::Full(true)),
        // Small jobs (about 0.03 certified epsilon each at q = 0.01): the budget outlasts the run.
        noise_multiplier: 5.0,
        batch_size: 10,
        steps: 20,
        micro_batch: 10,
        max_length: 32,
        ..Default::default()
    };
    // Every client takes the next call's number and sends it to daemon number % daemons;
    // a daemon asks for a retry past its per-tenant share of plans (ResourceExhausted).
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (next, spec) = (next.clone(), spec.clone());
        let mut jobs: Vec<_> = per_daemon.iter().map(|c| c.jobs.clone()).collect();
        tasks.spawn(async move {
            let (mut admitted, mut retries) = (0usize, 0usize);
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= creates {
                    return Ok::<_, tonic::Status>((admitted, retries));
                }
                let n = jobs.len();
                loop {
                    match jobs[k % n].create(spec.clone()).await {
                        Ok(_) => break admitted += 1,
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            retries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                        Err(s) => return Err(s),
                    }
                }
            }
        });
    }
    let (mut admitted, mut retries) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (a, b) = r??;
        admitted += a;
        retries += b;
    }
    let create_s = t.elapsed().as_secs_f64();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (next, dataset) = (next.clone(), dataset.clone());
        let mut budget: Vec<_> = per_daemon.iter().map(|c| c.budget.clone()).collect();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= gets {
                    return Ok::<_, tonic::Status>(latencies);
                }
                let n = budget.len();
                let t = Instant::now();
                budget[k % n].get(pb::GetBudgetRequest { dataset_id: dataset.clone(), charts: false }).await?;
                latencies.push(t.elapsed().as_secs_f64());
            }
        });
    }
    let mut get_s = Vec::new();
    while let Some(r) = tasks.join_next().await {
        get_s.extend(r??);
    }
    let (p50, p99) = (percentile_ms(&mut get_s, 0.5), percentile_ms(&mut get_s, 0.99));
    let rate = admitted as f64 / create_s;
    if json {
        println!("{}", serde_json::json!({"daemons": daemons.len(), "clients": clients, "admitted": admitted, "seconds": create_s, "admissions_per_second": rate, "retries": retries, "budget_get_ms": {"p50": p50, "p99": p99}, "jobs_on_the_ledger": admitted}));
    } else {
        println!("{} daemon(s), {clients} clients: {admitted} admitted in {create_s:.2} s = {rate:.1} admissions/s ({retries} retries after ResourceExhausted)", daemons.len());
        println!("Budget.Get over {admitted} jobs: p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
    Ok(())
}

fn audit_throughput(shape: &ModelShape, texts: usize, batch: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ModelShape { layers, d_model, heads, seq_len, vocab, .. } = *shape;
    use ewtune::audit::logprobs::{forward_only, token_stats};
    use ewtune::train::synthetic::{write_model, Family, Shape};
    let dir = std::env::temp_dir().join(format!("ewtune-bench-audit-{}", std::process::id()));
    write_model(&dir, Family::Gpt2, Shape { vocab, d_model, layers, heads, kv_heads: heads, positions: seq_len }, 0, None)?;
    let model = ewtune::train::model::Model::load_output(&dir, tch::Device::Cpu)?;
    tch::manual_seed(3);
    let ids = tch::Tensor::randint(vocab, [texts as i64, seq_len], (tch::Kind::Int64, tch::Device::Cpu));
    let seqs: Vec<Vec<i64>> = (0..texts as i64).map(|r| Vec::<i64>::try_from(&ids.get(r)).unwrap_or_default()).collect();
    let tokens = (texts as f64) * seq_len as f64;
    let (mut fwd, mut aud) = (Vec::new(), Vec::new());
    for rep in 0..4 {
        let t = std::time::Instant::now();
        forward_only(&model, &seqs, seq_len as usize, batch, tch::Device::Cpu);
        let f = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        token_stats(&model, &seqs, seq_len as usize, batch, tch::Device::Cpu);
        let a = t.elapsed().as_secs_f64();
        if rep > 0 {
            fwd.push(f);
            aud.push(a);
        }
    }
    fwd.sort_by(|a, b| a.total_cmp(b));
    aud.sort_by(|a, b| a.total_cmp(b));
    let (f, a) = (fwd[1], aud[1]);
    println!("{}", serde_json::json!({"forward_tokens_per_s": tokens / f, "audit_tokens_per_s": tokens / a, "ratio": f / a, "texts": texts, "seq_len": seq_len, "batch": batch}));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

const GIB: f64 = (1u64 << 30) as f64;

/// `ewtune bench memory`: the checkpoint, then each (mode, precision) run in a child process.
fn memory(settings: MemorySettings, layers: i64, modes: &[MemoryMode], keep_dir: Option<PathBuf>, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    use ewtune::train::bench::{ensure_qwen2_checkpoint, memory_ratio, memory_run_in_child, precision_name, MEMORY_RUNS};
    use ewtune::train::synthetic::Qwen2Shape;
    if layers < 1 || settings.seq_len < 2 || settings.micro_batch < 1 || settings.steps < 1 {
        return Err("--layers, --micro-batch and --steps must be >= 1, --seq-len >= 2".into());
    }
    let shape = Qwen2Shape { layers, ..Qwen2Shape::QWEN25_0_5B };
    let (dir, _temp) = match keep_dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new().prefix("ewtune-bench-memory-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let t = std::time::Instant::now();
    let wrote = ensure_qwen2_checkpoint(&dir, shape)?;
    let written = if wrote { format!("written in {:.1} s", t.elapsed().as_secs_f64()) } else { "reused".to_string() };
    let exe = std::env::current_exe()?;
    let MemorySettings { seq_len, micro_batch, steps, pin_mmap_threshold, .. } = settings;
    if !json {
        let malloc = match std::env::var("GLIBC_TUNABLES") {
            Ok(t) => format!("GLIBC_TUNABLES={t} as given"),
            Err(_) if pin_mmap_threshold => format!("glibc mmap threshold pinned at {} KiB", ewtune::train::bench::PINNED_MMAP_THRESHOLD >> 10),
            Err(_) => "glibc malloc defaults".into(),
        };
        println!(
            "Qwen2.5-0.5B shape, {layers} of 24 layers ({:.1} M parameters, random, bf16 on disk, {written}: {}); micro-batch {micro_batch} x {seq_len} tokens, {steps} DP step(s) with AdamW, CPU; each run a fresh process, {malloc}",
            shape.params() as f64 / 1e6,
            dir.display()
        );
        println!("{:<5} {:<9} {:>8} {:>9} {:>9} {:>6} {:>6} {:>6} {:>10} {:>10}", "mode", "precision", "peak GiB", "load peak", "step peak", "load s", "step s", "run s", "trainable", "frozen GiB");
    }
    let mut runs: Vec<MemoryRun> = Vec::new();
    let mut failed = false;
    for (mode, precision) in MEMORY_RUNS.into_iter().filter(|(m, _)| modes.is_empty() || modes.contains(m)) {
        match memory_run_in_child(&exe, &dir, mode, precision, settings) {
            Ok(r) => {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let step_peak = r.step_peak_rss_bytes.map_or("-".to_string(), |b| format!("{:.2}", b as f64 / GIB));
                    println!(
                        "{:<5} {:<9} {:>8.2} {:>9.2} {:>9} {:>6.1} {:>6.1} {:>6.0} {:>9.2}M {:>10.2}",
                        mode.name(),
                        precision_name(precision),
                        r.peak_rss_bytes as f64 / GIB,
                        r.load_peak_rss_bytes as f64 / GIB,
                        step_peak,
                        r.load_s,
                        r.last_step_s(),
                        r.process_s,
                        r.trainable_params as f64 / 1e6,
                        r.frozen_bytes as f64 / GIB
                    );
                }
                runs.push(r);
            }
            Err(e) => {
                failed = true;
                if json {
                    println!("{}", serde_json::json!({"mode": mode, "precision": precision, "error": e}));
                } else {
                    println!("{:<5} {:<9} failed: {e}", mode.name(), precision_name(precision));
                }
            }
        }
    }
    if !json {
        for mode in [MemoryMode::Lora, MemoryMode::Full] {
            if let Some(ratio) = memory_ratio(&runs, mode, |r| Some(r.peak_rss_bytes)) {
                let step = memory_ratio(&runs, mode, |r| r.step_peak_rss_bytes).map_or(String::new(), |s| format!(" (step peaks {s:.2})"));
                println!("bf16 / f32 peak, {}: {ratio:.2}{step}", mode.name());
            }
        }
        println!("({:.0} s in all; load/step peaks: the resident-set peak up to the end of loading / from there to the end of the last step)", t.elapsed().as_secs_f64());
    }
    if failed {
        return Err("some runs failed (see above)".into());
    }
    Ok(())
}
