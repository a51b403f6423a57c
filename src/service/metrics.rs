//! The daemon's metrics for operators, in Prometheus' text format (served on `metrics_listen`
//! at `/metrics` by `api/http.rs`; docs/reports.md, Metrics for operators). Counters and the API latency
//! histogram are updated as things happen; the job, audit and budget figures are read from the
//! store when scraped, so they are never stale and survive restarts.
//!
//! Nothing here depends on the training data: job states and steps, audits running, API
//! latencies, and each dataset's epsilons, which its budget report states already. They are
//! labelled with tenant names and dataset ids, so the endpoint is for the operators' network.

use crate::store::{JobState, Store, StoreError};
use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every metric, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// DP-SGD steps of every job, counted as each step's spend is recorded (before it runs; a
    /// step re-run after a crash counts again).
    pub steps: IntCounter,
    /// Each running job's steps per second since it started or resumed (removed when it stops).
    pub steps_per_second: GaugeVec,
    /// Time to answer each gRPC method (to the response's headers: for a stream, until it
    /// starts), in seconds.
    pub api_latency: HistogramVec,
    jobs: IntGaugeVec,
    queue_depth: IntGauge,
    audits_running: IntGauge,
    epsilon_spent: GaugeVec,
    epsilon_remaining: GaugeVec,
    epsilon_budget: GaugeVec,
}

/// Latency buckets, seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Metrics {
    /// The metrics, all at zero.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let dataset_labels = ["tenant", "dataset"];
        let metrics = Metrics {
            steps: IntCounter::new("ewtune_training_steps_total", "DP-SGD steps of every job since the daemon started, counted as each step's spend is recorded").expect("valid metric"),
            steps_per_second: GaugeVec::new(Opts::new("ewtune_job_steps_per_second", "A running job's DP-SGD steps per second since it started or resumed"), &["job"]).expect("valid metric"),
            api_latency: HistogramVec::new(
                HistogramOpts::new("ewtune_api_request_duration_seconds", "Time to answer a gRPC request (for a stream: until it starts), by method").buckets(LATENCY_BUCKETS.to_vec()),
                &["method"],
            )
            .expect("valid metric"),
            jobs: IntGaugeVec::new(Opts::new("ewtune_jobs", "Jobs by state"), &["state"]).expect("valid metric"),
            queue_depth: IntGauge::new("ewtune_queue_depth", "Jobs queued, waiting for the scheduler").expect("valid metric"),
            audits_running: IntGauge::new("ewtune_audits_running", "Audits running").expect("valid metric"),
            epsilon_spent: GaugeVec::new(Opts::new("ewtune_dataset_epsilon_spent", "Certified epsilon spent on the dataset's worst-off privacy units, at its delta"), &dataset_labels)
                .expect("valid metric"),
            epsilon_remaining: GaugeVec::new(Opts::new("ewtune_dataset_epsilon_remaining", "Budget left to the dataset's worst-off privacy units (spent and reserved counted)"), &dataset_labels)
                .expect("valid metric"),
            epsilon_budget: GaugeVec::new(Opts::new("ewtune_dataset_epsilon_budget", "The dataset's epsilon budget"), &dataset_labels).expect("valid metric"),
            registry,
        };
        let r = &metrics.registry;
        r.register(Box::new(metrics.steps.clone())).expect("registered once");
        r.register(Box::new(metrics.steps_per_second.clone())).expect("registered once");
        r.register(Box::new(metrics.api_latency.clone())).expect("registered once");
        r.register(Box::new(metrics.jobs.clone())).expect("registered once");
        r.register(Box::new(metrics.queue_depth.clone())).expect("registered once");
        r.register(Box::new(metrics.audits_running.clone())).expect("registered once");
        r.register(Box::new(metrics.epsilon_spent.clone())).expect("registered once");
        r.register(Box::new(metrics.epsilon_remaining.clone())).expect("registered once");
        r.register(Box::new(metrics.epsilon_budget.clone())).expect("registered once");
        metrics
    }

    /// Reads the store's figures and renders every metric (blocking: SQLite and the accountant).
    pub fn render(&self, store: &Store) -> Result<String, StoreError> {
        let counts = store.job_counts()?;
        for state in [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            let n = counts.iter().find(|(s, _)| *s == state).map_or(0, |&(_, n)| n);
            self.jobs.with_label_values(&[state.as_str()]).set(n as i64);
            if state == JobState::Queued {
                self.queue_depth.set(n as i64);
            }
        }
        self.audits_running.set(store.running_audits()? as i64);
        for d in store.dataset_spend()? {
            let labels = [d.tenant.as_str(), d.dataset.as_str()];
            self.epsilon_spent.with_label_values(&labels).set(d.spent_epsilon);
            self.epsilon_remaining.with_label_values(&labels).set(d.remaining_epsilon);
            self.epsilon_budget.with_label_values(&labels).set(d.budget_epsilon);
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into memory");
        Ok(String::from_utf8(out).expect("the text format is UTF-8"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Every method the daemon serves, as `package.Service/Method` (a test checks the protos').
const METHODS: [&str; 19] = [
    "ewtune.v1.Datasets/Register",
    "ewtune.v1.Datasets/Get",
    "ewtune.v1.Datasets/List",
    "ewtune.v1.Jobs/Plan",
    "ewtune.v1.Jobs/Create",
    "ewtune.v1.Jobs/Get",
    "ewtune.v1.Jobs/List",
    "ewtune.v1.Jobs/Watch",
    "ewtune.v1.Jobs/Cancel",
    "ewtune.v1.Jobs/GetArtifacts",
    "ewtune.v1.Budget/Get",
    "ewtune.v1.Audits/Create",
    "ewtune.v1.Audits/Get",
    "ewtune.v1.Audits/List",
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.health.v1.Health/List",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The label of a gRPC path: `ewtune.v1.Jobs/Create` for a method the daemon serves, `other`
/// for any other path (requests are timed before they are authenticated: a client must not be
/// able to grow the label set).
pub fn method_label(path: &str) -> &'static str {
    let path = path.strip_prefix('/').unwrap_or(path);
    METHODS.iter().find(|m| **m == path).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_figures_and_the_counters_are_rendered() {
        use crate::store::testutil::{new_dataset, new_job, Fixture};
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d = fx.store.register_dataset(&acme, new_dataset(1, 8.0)).unwrap();
        let job = fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 200)).unwrap();
        fx.store.create_job(&acme, new_job(&d.id, 1.0, 0.01, 100)).unwrap();
        fx.store.claim_next_queued().unwrap().unwrap();
        fx.store.record_progress(&job.id, 50, 0.5).unwrap();
        let m = Metrics::new();
        m.steps.inc_by(3);
        m.api_latency.with_label_values(&[method_label("/ewtune.v1.Jobs/Create")]).observe(0.002);
        let text = m.render(&fx.store).unwrap();
        assert!(text.contains("ewtune_training_steps_total 3"), "{text}");
        assert!(text.contains("ewtune_jobs{state=\"queued\"} 1") && text.contains("ewtune_jobs{state=\"running\"} 1"), "{text}");
        assert!(text.contains("ewtune_queue_depth 1") && text.contains("ewtune_audits_running 0"), "{text}");
        // The spend is the report's, read from the same ledger.
        let report = fx.store.budget_report(&acme, &d.id, false).unwrap();
        let labels = format!("{{dataset=\"{}\",tenant=\"acme\"}}", d.id);
        assert!(report.spent_epsilon > 0.0);
        for (name, value) in [("spent", report.spent_epsilon), ("remaining", report.remaining_epsilon), ("budget", 8.0)] {
            assert!(text.contains(&format!("ewtune_dataset_epsilon_{name}{labels} {value}")), "{name} {value}: {text}");
        }
        assert!(text.contains("ewtune_api_request_duration_seconds_bucket{method=\"ewtune.v1.Jobs/Create\",le=\"0.0025\"} 1"), "{text}");
        assert_eq!(method_label("/evil/../x"), "other");
        assert_eq!(method_label("/ewtune.v1.Jobs/Made-up-123"), "other", "only served methods are labels");
        // Every rpc of the protos is a label of its own.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/ewtune/v1");
        let mut rpcs = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let service = text.lines().find_map(|l| l.trim().strip_prefix("service ")).unwrap().split_whitespace().next().unwrap().to_string();
            for rpc in text.lines().filter_map(|l| l.trim().strip_prefix("rpc ")) {
                let method = rpc.split('(').next().unwrap().trim();
                assert_eq!(method_label(&format!("/ewtune.v1.{service}/{method}")), format!("ewtune.v1.{service}/{method}"));
                rpcs += 1;
            }
        }
        assert_eq!(rpcs, METHODS.iter().filter(|m| m.starts_with("ewtune.v1.")).count());
    }
}
