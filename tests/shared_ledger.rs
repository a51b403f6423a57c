//! Several `ewtuned` processes on one PostgreSQL ledger and one shared data directory (a
//! throwaway cluster this test starts with initdb and pg_ctl): concurrent Creates spread over
//! three daemons never admit more than the budget; a daemon killed with SIGKILL while it trains
//! loses its job to another within the lease, which finishes it without the ledger ever counting
//! fewer steps than ran; a Watch on any daemon follows the job wherever it runs; with the
//! database gone, calls fail with Unavailable.

use crate::util::{authed, fixture, free_port};
use ewtune::api::pb;
use ewtune::store::scratch_postgres::ScratchPostgres;
use ewtune::train::synthetic::{write_model, write_notes, Family, Shape};
use ewtune_accountant::pld::PldAccountant;
use ewtune_accountant::History;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// One daemon of the group, killed on drop.
struct Daemon {
    child: Child,
    id: String,
    channel: Channel,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(data: &Path, url: &str, id: &str, lease_secs: u64) -> Daemon {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ewtuned"))
        .args(["--data-dir", data.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}"), "--database-url", url, "--daemon-id", id])
        .args(["--lease-secs", &lease_secs.to_string()])
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = loop {
        if let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await {
            break ch;
        }
        assert!(Instant::now() < deadline, "ewtuned {id} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Daemon { child, id: id.into(), channel }
}

/// A cluster, a database on it, a shared data directory with a tiny base model, 300 notes, and
/// a tenant's token.
struct Setup {
    pg: ScratchPostgres,
    url: String,
    root: tempfile::TempDir,
    token: String,
}

fn setup() -> Setup {
    let pg = ScratchPostgres::start(false).expect("a throwaway PostgreSQL cluster (scripts/test.sh installs the server)");
    let url = pg.fresh_database().unwrap();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let shape = Shape { vocab: 400, d_model: 32, layers: 1, heads: 2, kv_heads: 2, positions: 64 };
    write_model(&data.join("models/tiny"), Family::Gpt2, shape, 1, Some(&fixture("audit").join("tokenizer.json"))).unwrap();
    write_notes(&root.path().join("notes.jsonl"), 300, 0, 4).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ewtuned"))
        .args(["token", "create", "--data-dir", data.to_str().unwrap(), "--database-url", &url, "--tenant", "ward"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    Setup { pg, url, root, token }
}

impl Setup {
    fn data(&self) -> std::path::PathBuf {
        self.root.path().join("data")
    }

    async fn register(&self, via: &Daemon, budget_epsilon: f64) -> String {
        pb::datasets_client::DatasetsClient::new(via.channel.clone())
            .register(authed(
                &self.token,
                pb::RegisterDatasetRequest {
                    name: "notes".into(),
                    content: std::fs::read(self.root.path().join("notes.jsonl")).unwrap(),
                    budget_epsilon,
                    budget_delta: 1e-5,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .dataset_id
    }
}

fn spec(dataset_id: &str, noise_multiplier: f64, steps: u64) -> pb::JobSpec {
    pb::JobSpec {
        dataset_id: dataset_id.into(),
        base_model: "tiny".into(),
        finetune: Some(pb::job_spec::Finetune::Full(true)),
        noise_multiplier,
        batch_size: 30,
        steps,
        micro_batch: 30,
        max_length: 32,
        ..Default::default()
    }
}

async fn get_job(ch: &Channel, token: &str, id: &str) -> pb::Job {
    pb::jobs_client::JobsClient::new(ch.clone()).get(authed(token, pb::GetJobRequest { job_id: id.to_string() })).await.unwrap().into_inner()
}

/// 40 Creates at once, spread over three daemons, against one budget: exactly as many are
/// admitted as the budget holds, and the certified composition of the admitted plans (the
/// accountant run here, independently of the daemons) is within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_over_three_daemons_never_overspend() {
    let s = setup();
    let daemons = [start(&s.data(), &s.url, "a", 30).await, start(&s.data(), &s.url, "b", 30).await, start(&s.data(), &s.url, "c", 30).await];
    let budget = 6.0;
    let dataset = s.register(&daemons[0], budget).await;
    let (sigma, steps) = (2.0, 20);

    let creates: Vec<_> = (0..40)
        .map(|i| {
            let ch = daemons[i % 3].channel.clone();
            let (token, spec) = (s.token.clone(), spec(&dataset, sigma, steps));
            // A daemon computes at most a few plans per tenant at once and asks for a retry past
            // that (ResourceExhausted), as a client does.
            tokio::spawn(async move {
                loop {
                    match pb::jobs_client::JobsClient::new(ch.clone()).create(authed(&token, spec.clone())).await {
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => tokio::time::sleep(Duration::from_millis(20)).await,
                        other => return other,
                    }
                }
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for c in creates {
        match c.await.unwrap() {
            Ok(r) => admitted.push(r.into_inner().job_id),
            Err(status) => assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}"),
        }
    }
    let first = get_job(&daemons[1].channel, &s.token, &admitted[0]).await;
    let q = first.sample_rate;
    let composed = |k: usize| PldAccountant::default().epsilon(&History::homogeneous(sigma, q, k as u64 * steps).unwrap(), 1e-5).unwrap().bounds.upper;
    let capacity = (1..=40).take_while(|&k| composed(k) <= budget).count();
    assert!((2..40).contains(&capacity), "the test needs a budget that refuses some: capacity {capacity}");
    assert_eq!(admitted.len(), capacity, "every admissible job admitted, none more");
    assert!(composed(admitted.len()) <= budget);

    // Any daemon reports the same ledger, within the budget, signed with the one shared key.
    let mut keys = Vec::new();
    for d in &daemons {
        let report = pb::budget_client::BudgetClient::new(d.channel.clone())
            .get(authed(&s.token, pb::GetBudgetRequest { dataset_id: dataset.clone(), ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        keys.push(report.public_key.clone());
        let json: serde_json::Value = serde_json::from_str(&report.report_json).unwrap();
        let committed = json["committed_epsilon"].as_f64().unwrap();
        assert!(committed <= budget, "{} reports {committed} > {budget}", d.id);
        assert_eq!(json["jobs"].as_array().unwrap().len(), capacity);
    }
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "daemons starting together made one signing key");

    // Without its database a daemon answers Unavailable, and admits nothing.
    drop(s.pg);
    let err = pb::jobs_client::JobsClient::new(daemons[2].channel.clone()).create(authed(&s.token, spec(&dataset, sigma, steps))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}

/// SIGKILL of the daemon running a job: another daemon takes it over once the lease runs out,
/// resumes it from its last checkpoint and finishes it; a Watch opened on the other daemon
/// before the kill follows the whole job; the ledger never counted fewer steps than ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_running_daemon_hands_the_job_to_another() {
    let s = setup();
    let lease_secs = 2;
    let mut a = start(&s.data(), &s.url, "a", lease_secs).await;
    let dataset = s.register(&a, 50.0).await;
    let steps = 300;
    let id = pb::jobs_client::JobsClient::new(a.channel.clone()).create(authed(&s.token, spec(&dataset, 2.0, steps))).await.unwrap().into_inner().job_id;
    // Only a runs until the job has started there; b joins and watches.
    let deadline = Instant::now() + Duration::from_secs(120);
    while get_job(&a.channel, &s.token, &id).await.steps_done < 20 {
        assert!(Instant::now() < deadline, "no progress on a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = start(&s.data(), &s.url, "b", lease_secs).await;
    let mut watch = pb::jobs_client::JobsClient::new(b.channel.clone())
        .watch(authed(&s.token, pb::WatchJobRequest { job_id: id.clone(), after_seq: 0 }))
        .await
        .unwrap()
        .into_inner();

    // The kill, in the middle of training.
    while get_job(&b.channel, &s.token, &id).await.steps_done < 60 {
        assert!(Instant::now() < deadline, "no progress on a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("kill").args(["-9", &a.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let killed_at = Instant::now();
    a.child.wait().unwrap();
    let at_kill = get_job(&b.channel, &s.token, &id).await.steps_done;

    // The watch on b sees every event, the takeover included, until the end.
    let mut events = Vec::new();
    let mut taken_over_after = None;
    while let Some(e) = tokio::time::timeout(Duration::from_secs(300), watch.message()).await.expect("the job went quiet").unwrap() {
        if e.kind == "started" && taken_over_after.is_none() && events.iter().any(|p: &pb::JobEvent| p.kind == "interrupted") {
            taken_over_after = Some(killed_at.elapsed());
        }
        events.push(e);
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"created"));
    assert_eq!(kinds.last(), Some(&"succeeded"), "{kinds:?}");
    let resumed = |e: &pb::JobEvent| match &e.detail {
        Some(pb::job_event::Detail::Started(r) | pb::job_event::Detail::Interrupted(r)) => r.clone(),
        other => panic!("{other:?}"),
    };
    let moves: Vec<(String, String, bool)> = events
        .iter()
        .filter(|e| e.kind == "started" || e.kind == "interrupted")
        .map(|e| (e.kind.clone(), resumed(e).daemon_id, resumed(e).lease_expired))
        .collect();
    assert_eq!(
        moves,
        [("started".into(), "a".into(), false), ("interrupted".into(), "a".into(), true), ("started".into(), "b".into(), false)],
        "{kinds:?}"
    );
    let waited = taken_over_after.expect("taken over");
    assert!(waited <= Duration::from_secs(lease_secs + 5), "taken over {waited:?} after the kill (lease {lease_secs} s)");

    // The spend: recorded before each step, never less than the steps that ran; resumed from
    // what the ledger held at the takeover, to exactly the plan.
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.detail {
            Some(pb::job_event::Detail::Progress(p)) => Some(p.step),
            _ => None,
        })
        .collect();
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "progress never goes back: {progress:?}");
    let interrupted = events.iter().find(|e| e.kind == "interrupted").unwrap();
    assert!(resumed(interrupted).steps_done >= at_kill, "the ledger kept at least the {at_kill} steps seen before the kill");
    let done = get_job(&b.channel, &s.token, &id).await;
    assert_eq!((done.state, done.steps_done), (pb::JobState::Succeeded as i32, steps));
    assert!(s.data().join("jobs").join(&id).join("model/model.safetensors").exists(), "the output is in the shared directory");
}
