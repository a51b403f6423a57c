//! The daemon over real loopback gRPC, a real SQLite store and the real engine on a tiny model:
//! the whole lifecycle, overspend refused with nothing changed, bad inputs with the right codes,
//! tenant isolation, signed reports that verify offline.

use crate::util::fixture;
use ewtune::api::pb;
use ewtune::service::{config::DaemonConfig, signing, State};
use ewtune::train::synthetic::{write_model, write_notes, Family, Shape};
use std::sync::Arc;
use tonic::transport::Channel;
use tonic::Code;

pub struct Daemon {
    pub addr: String,
    /// Where it serves the report pages (HTTP, or HTTPS with TLS).
    pub pages_addr: std::net::SocketAddr,
    /// Where it serves /metrics.
    pub metrics_addr: std::net::SocketAddr,
    pub state: Arc<State>,
    /// Keeps the data directory alive for the daemon's lifetime.
    _root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    pub async fn start() -> Daemon {
        Daemon::start_with(|_| None).await
    }

    /// Starts a daemon whose TLS identity `tls(root)` writes (certificate and key paths).
    pub async fn start_with(tls: impl FnOnce(&std::path::Path) -> Option<(std::path::PathBuf, std::path::PathBuf)>) -> Daemon {
        Daemon::start_at(tempfile::tempdir().unwrap(), tls).await
    }

    /// Starts a daemon on the data directory `root/data` as a test left it.
    pub async fn start_in(root: tempfile::TempDir) -> Daemon {
        Daemon::start_at(root, |_| None).await
    }

    async fn start_at(root: tempfile::TempDir, tls: impl FnOnce(&std::path::Path) -> Option<(std::path::PathBuf, std::path::PathBuf)>) -> Daemon {
        let data_dir = root.path().join("data");
        let shape = Shape { vocab: 400, d_model: 32, layers: 2, heads: 2, kv_heads: 2, positions: 64 };
        write_model(&data_dir.join("models/tiny"), Family::Gpt2, shape, 1, Some(&fixture("audit").join("tokenizer.json"))).unwrap();
        let mut config = DaemonConfig::resolve(&data_dir, Some("127.0.0.1:0"), None).unwrap();
        config.tls = tls(root.path());
        let state = State::open(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        // The report pages and the metrics, each on a port of its own.
        let pages = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = (pages.local_addr().unwrap(), metrics.local_addr().unwrap());
        let listeners = ewtune::api::server::Listeners { grpc: listener, pages: Some(pages), metrics: Some(metrics) };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s = state.clone();
        let task = tokio::spawn(async move {
            ewtune::api::server::run(s, listeners, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Daemon { addr, pages_addr: http.0, metrics_addr: http.1, state, _root: root, stop: Some(tx), task: Some(task) }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

#[derive(Clone)]
pub struct Bearer(pub String);
impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.0.is_empty() {
            r.metadata_mut().insert("authorization", format!("Bearer {}", self.0).parse().unwrap());
        }
        Ok(r)
    }
}

pub type Svc = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

pub struct Client {
    pub datasets: pb::datasets_client::DatasetsClient<Svc>,
    pub jobs: pb::jobs_client::JobsClient<Svc>,
    pub budget: pb::budget_client::BudgetClient<Svc>,
    pub audits: pb::audits_client::AuditsClient<Svc>,
}

pub async fn client(addr: &str, token: &str) -> Client {
    let ch = Channel::from_shared(addr.to_string()).unwrap().connect().await.unwrap();
    let b = Bearer(token.to_string());
    Client {
        datasets: pb::datasets_client::DatasetsClient::with_interceptor(ch.clone(), b.clone()),
        jobs: pb::jobs_client::JobsClient::with_interceptor(ch.clone(), b.clone()),
        budget: pb::budget_client::BudgetClient::with_interceptor(ch.clone(), b.clone()),
        audits: pb::audits_client::AuditsClient::with_interceptor(ch, b),
    }
}

pub fn notes(n: usize, seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    write_notes(&p, n, 0, seed).unwrap();
    std::fs::read(p).unwrap()
}

pub fn spec(dataset: &str, epsilon: f64) -> pb::JobSpec {
    pb::JobSpec {
        dataset_id: dataset.to_string(),
        base_model: "tiny".into(),
        finetune: Some(pb::job_spec::Finetune::Lora(pb::LoraConfig { rank: 4, alpha: 8.0, target_modules: vec![] })),
        target_epsilon: epsilon,
        batch_size: 40,
        steps: 8,
        micro_batch: 20,
        learning_rate: 1e-2,
        max_length: 40,
        ..Default::default()
    }
}

pub async fn register(c: &mut Client, budget: f64) -> pb::Dataset {
    c.datasets
        .register(pb::RegisterDatasetRequest { name: "notes".into(), content: notes(400, 1), privacy_unit: pb::PrivacyUnit::Example as i32, user_field: String::new(), budget_epsilon: budget, budget_delta: 1e-5 })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_budget_and_signed_report() {
    let d = Daemon::start().await;
    // grpc.health.v1 answers for every ewtune service, without a token.
    let ch = Channel::from_shared(d.addr.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    for service in ["ewtune.v1.Datasets", "ewtune.v1.Jobs", "ewtune.v1.Budget", "ewtune.v1.Audits"] {
        let status = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}");
    }
    let token = d.state.store.create_token("clinic").unwrap();
    let mut c = client(&d.addr, &token).await;
    let ds = register(&mut c, 3.0).await;
    assert_eq!(ds.units, 400);
    let plan = c.jobs.plan(spec(&ds.dataset_id, 1.0)).await.unwrap().into_inner();
    assert!(plan.certified_epsilon <= 1.0 && plan.steps == 8, "{plan:?}");
    // Plan counts the data as the job will read it (the model's tokenizer, max_length 40).
    let local = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.jsonl");
        std::fs::write(&path, notes(400, 1)).unwrap();
        let tok = tokenizers::Tokenizer::from_file(fixture("audit").join("tokenizer.json")).unwrap();
        ewtune::train::data::count(&path, &tok, &ewtune::train::data::DataConfig { max_length: 40, ..Default::default() }, 400).unwrap()
    };
    assert_eq!((plan.examples, plan.dataset_units, plan.truncated_examples, plan.dropped_examples), (400, 400, local.truncated_examples as u64, 0));
    let short = c.jobs.plan(pb::JobSpec { max_length: 8, ..spec(&ds.dataset_id, 1.0) }).await.unwrap().into_inner();
    assert_eq!(short.truncated_examples, 400, "every note is longer than 8 tokens");
    let job = c.jobs.create(spec(&ds.dataset_id, 1.0)).await.unwrap().into_inner();
    let mut stream = c.jobs.watch(pb::WatchJobRequest { job_id: job.job_id.clone(), after_seq: 0 }).await.unwrap().into_inner();
    let mut kinds = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        kinds.push(e.kind);
    }
    assert_eq!(kinds.first().map(String::as_str), Some("created"));
    assert_eq!(kinds.last().map(String::as_str), Some("succeeded"), "{kinds:?}");
    let done = c.jobs.get(pb::GetJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!((done.state, done.steps_done), (pb::JobState::Succeeded as i32, 8));
    assert!((done.epsilon_spent - plan.certified_epsilon).abs() < 1e-9);
    // The daemon runs a self-audit by default; its verdict rides with the job.
    let audit = done.self_audit.clone().expect("a self-audit by default");
    assert!(audit.passed && audit.canaries == 10_000 && audit.steps == 8, "{audit:?}");
    assert!(audit.summary.starts_with("certified <= ") && audit.summary.ends_with("implementation checks passed"), "{}", audit.summary);
    assert!((audit.certified_epsilon - plan.certified_epsilon).abs() < 1e-9 && audit.steinke_epsilon < audit.certified_epsilon);
    assert!(audit.fdp_p_value >= 1e-6 && audit.fdp_in_family_epsilon.is_finite(), "{audit:?}");
    assert!(["V", "M", "D"].iter().all(|n| audit.tests.iter().any(|t| t.name == *n)), "{:?}", audit.tests);
    // The budget report is signed and verifies offline; a tampered copy does not.
    let r = c.budget.get(pb::GetBudgetRequest { dataset_id: ds.dataset_id.clone(), charts: false }).await.unwrap().into_inner();
    let report: serde_json::Value = serde_json::from_str(&r.report_json).unwrap();
    assert_eq!(report["jobs"][0]["self_audit"]["steinke_epsilon"].as_f64(), Some(audit.steinke_epsilon), "the signed report carries the self-audit");
    assert!((r.spent_epsilon - plan.certified_epsilon).abs() < 1e-9 && r.remaining_epsilon < 3.0 - 0.5);
    let signed = signing::SignedReport::new(r.report_json.clone(), &r.signature, &r.public_key);
    signing::verify(&signed, Some(&ewtune::digest::hex(&d.state.signer.public_key()))).unwrap();
    let tampered = signing::SignedReport { report_json: r.report_json.replace("clinic", "clinio"), ..signed.clone() };
    assert!(signing::verify(&tampered, None).is_err() || tampered.report_json == signed.report_json);
    // Overspend: a job that would exceed the budget is refused and nothing changes.
    let jobs_before = c.jobs.list(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.len();
    let err = c.jobs.create(spec(&ds.dataset_id, 3.0)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("left"), "{}", err.message());
    assert_eq!(c.jobs.list(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.len(), jobs_before);
    let r2 = c.budget.get(pb::GetBudgetRequest { dataset_id: ds.dataset_id.clone(), charts: false }).await.unwrap().into_inner();
    assert_eq!(r2.committed_epsilon, r.committed_epsilon);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_tenants_are_isolated() {
    let d = Daemon::start().await;
    let alice = d.state.store.create_token("alice").unwrap();
    let bob = d.state.store.create_token("bob").unwrap();
    let mut a = client(&d.addr, &alice).await;
    let mut b = client(&d.addr, &bob).await;
    let mut nobody = client(&d.addr, "").await;
    let mut forged = client(&d.addr, "ewt_0000").await;
    assert_eq!(nobody.datasets.list(pb::ListDatasetsRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(forged.datasets.list(pb::ListDatasetsRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);
    let ds = register(&mut a, 5.0).await;
    // Bob sees nothing of Alice's.
    assert!(b.datasets.list(pb::ListDatasetsRequest::default()).await.unwrap().into_inner().datasets.is_empty());
    assert_eq!(b.datasets.get(pb::GetDatasetRequest { dataset_id: ds.dataset_id.clone() }).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(b.budget.get(pb::GetBudgetRequest { dataset_id: ds.dataset_id.clone(), charts: false }).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(b.jobs.create(spec(&ds.dataset_id, 1.0)).await.unwrap_err().code(), Code::NotFound);
    let job = a.jobs.create(spec(&ds.dataset_id, 1.0)).await.unwrap().into_inner();
    assert_eq!(b.jobs.get(pb::GetJobRequest { job_id: job.job_id.clone() }).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(b.jobs.cancel(pb::CancelJobRequest { job_id: job.job_id.clone() }).await.unwrap_err().code(), Code::NotFound);
    // Bad fields are InvalidArgument naming the field, and change nothing.
    let bad_line = a
        .datasets
        .register(pb::RegisterDatasetRequest { name: "x".into(), content: b"{\"text\": \"ok\"}\nnot json\n".to_vec(), budget_epsilon: 1.0, budget_delta: 1e-5, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad_line.code(), Code::InvalidArgument);
    assert!(bad_line.message().contains("line 2"), "{}", bad_line.message());
    let bad_budget = a
        .datasets
        .register(pb::RegisterDatasetRequest { name: "x".into(), content: notes(10, 9), budget_epsilon: -1.0, budget_delta: 1e-5, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad_budget.code(), Code::InvalidArgument);
    assert!(bad_budget.message().contains("budget_epsilon"), "{}", bad_budget.message());
    let again = a
        .datasets
        .register(pb::RegisterDatasetRequest { name: "again".into(), content: notes(400, 1), budget_epsilon: 50.0, budget_delta: 1e-5, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "re-registering must not reset a budget");
    let mut no_eps = spec(&ds.dataset_id, 0.0);
    no_eps.target_epsilon = 0.0;
    let e = a.jobs.create(no_eps).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("target_epsilon"));
    let mut no_model = spec(&ds.dataset_id, 1.0);
    no_model.base_model = "missing".into();
    assert_eq!(a.jobs.create(no_model).await.unwrap_err().code(), Code::NotFound);
    let mut bad_batch = spec(&ds.dataset_id, 1.0);
    bad_batch.batch_size = 0;
    assert!(a.jobs.create(bad_batch).await.unwrap_err().message().contains("batch_size"));
    assert_eq!(a.jobs.get(pb::GetJobRequest { job_id: "../etc".into() }).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(a.jobs.list(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.len(), 1);
    d.stop().await;
}

/// The `text` of each line of a notes dataset.
fn lines(content: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(content).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string()).collect()
}

async fn wait_for_audit(c: &mut Client, id: &str) -> pb::Audit {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let a = c.audits.get(pb::GetAuditRequest { audit_id: id.to_string() }).await.unwrap().into_inner();
        if a.state != pb::AuditState::Running as i32 || std::time::Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A job with canaries: the manifest is committed with the job before training, the inserted
/// canaries count in N, and the Audits service answers with a signed report (docs/audit.md, The report) whose
/// one-run lower bound stays at or below the certified epsilon. Audits of unfinished or other
/// tenants' jobs, and audits with nothing to score, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_a_job_with_canaries_is_signed_and_consistent() {
    use ewtune::train::canaries::Manifest;
    let d = Daemon::start().await;
    let mut c = client(&d.addr, &d.state.store.create_token("clinic").unwrap()).await;
    let mut other = client(&d.addr, &d.state.store.create_token("rival").unwrap()).await;
    let ds = register(&mut c, 8.0).await;
    let mut with_canaries = spec(&ds.dataset_id, 2.0);
    with_canaries.steps = 30;
    with_canaries.canaries = Some(pb::CanaryConfig { count: 200, length: 16 });
    let plan = c.jobs.plan(with_canaries.clone()).await.unwrap().into_inner();
    assert_eq!(plan.units, 400 + 100, "Plan assumes m/2 inserted");
    assert!(plan.warnings.iter().any(|w| w.contains("canaries")), "{:?}", plan.warnings);
    let mut too_few = with_canaries.clone();
    too_few.canaries = Some(pb::CanaryConfig { count: 20, length: 16 });
    let e = c.jobs.create(too_few).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("canaries.count"), "{e:?}");
    let mut too_many = with_canaries.clone();
    too_many.canaries = Some(pb::CanaryConfig { count: u32::MAX, length: 16 });
    let e = c.jobs.create(too_many).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("canaries.count"), "{e:?}");
    let mut too_long = with_canaries.clone();
    too_long.canaries = Some(pb::CanaryConfig { count: 200, length: 41 });
    let e = c.jobs.create(too_long).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("canaries.length"), "{e:?}");

    let job = c.jobs.create(with_canaries).await.unwrap().into_inner();
    // The plain job also opts out of the self-audit.
    let no_self_audit = pb::JobSpec { self_audit: Some(pb::SelfAuditConfig { disabled: true, canaries: 0 }), ..spec(&ds.dataset_id, 1.0) };
    let plain = c.jobs.create(no_self_audit).await.unwrap().into_inner();
    assert!(plain.canary_manifest_sha256.is_empty());
    // The manifest was committed with the job; N counts the inserted canaries.
    let id = ewtune::store::JobId::parse(&job.job_id).unwrap();
    let (sha, json) = d.state.store.canary_manifest(&id).unwrap().unwrap();
    assert_eq!(job.canary_manifest_sha256, sha);
    let manifest: Manifest = serde_json::from_str(&json).unwrap();
    let inserted = manifest.included.iter().filter(|&&s| s).count();
    assert!((job.sample_rate - 40.0 / (400 + inserted) as f64).abs() < 1e-15, "q = B / (N + inserted)");
    // Not finished yet (it trains 30 steps, the plain job waits behind it).
    let e = c.audits.create(pb::CreateAuditRequest { job_id: job.job_id.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = c.audits.create(pb::CreateAuditRequest { job_id: plain.job_id.clone(), ..Default::default() }).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("no canaries"), "{e:?}");
    for j in [&job, &plain] {
        let mut stream = c.jobs.watch(pb::WatchJobRequest { job_id: j.job_id.clone(), after_seq: 0 }).await.unwrap().into_inner();
        while stream.message().await.unwrap().is_some() {}
    }
    let done = c.jobs.get(pb::GetJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.reason);
    assert!(done.self_audit.is_some_and(|a| a.passed), "membership canaries and gradient canaries run side by side");
    let plain_done = c.jobs.get(pb::GetJobRequest { job_id: plain.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!((plain_done.state, plain_done.self_audit), (pb::JobState::Succeeded as i32, None), "opted out");
    assert_eq!(other.audits.create(pb::CreateAuditRequest { job_id: job.job_id.clone(), ..Default::default() }).await.unwrap_err().code(), Code::NotFound);
    let members_only: Vec<pb::LabeledText> = lines(&notes(400, 1))[..5].iter().map(|t| pb::LabeledText { input: t.clone(), member: true }).collect();
    let e = c.audits.create(pb::CreateAuditRequest { job_id: job.job_id.clone(), texts: members_only, max_tokens: 0 }).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("non-members"), "{e:?}");

    let mut texts: Vec<pb::LabeledText> = lines(&notes(400, 1))[..40].iter().map(|t| pb::LabeledText { input: t.clone(), member: true }).collect();
    texts.extend(lines(&notes(40, 2)).into_iter().map(|t| pb::LabeledText { input: t, member: false }));
    let started = c.audits.create(pb::CreateAuditRequest { job_id: job.job_id.clone(), texts, max_tokens: 0 }).await.unwrap().into_inner();
    assert_eq!(started.state, pb::AuditState::Running as i32);
    let a = wait_for_audit(&mut c, &started.audit_id).await;
    assert_eq!(a.state, pb::AuditState::Succeeded as i32, "{}", a.reason);
    // Its progress: every text scored three times (fine-tuned, lowercase, base), every canary twice.
    assert_eq!((a.texts, a.scored, a.to_score), (80, 80 * 3 + 200 * 2, 80 * 3 + 200 * 2));
    // Signed by the daemon; a tampered copy fails.
    let signed = signing::SignedReport::new(a.report_json.clone(), &a.signature, &a.public_key);
    signing::verify(&signed, Some(&ewtune::digest::hex(&d.state.signer.public_key()))).unwrap();
    let tampered = signing::SignedReport { report_json: a.report_json.replace("\"violation\":false", "\"violation\":true"), ..signed.clone() };
    assert_ne!(tampered.report_json, signed.report_json);
    assert!(signing::verify(&tampered, None).is_err());
    // The report: the committed manifest, the claim, the bound below it.
    let r: serde_json::Value = serde_json::from_str(&a.report_json).unwrap();
    let ca = &r["canary_audit"];
    assert_eq!(r["job_id"], job.job_id.as_str());
    assert_eq!((ca["m"].as_u64(), ca["n_included"].as_u64()), (Some(200), Some(inserted as u64)));
    assert_eq!(ca["manifest_sha256"], sha.as_str());
    assert!((a.certified_epsilon - done.epsilon_spent).abs() < 1e-9 && a.certified_epsilon <= 2.0, "{} vs {}", a.certified_epsilon, done.epsilon_spent);
    assert!(a.has_canary_audit && a.epsilon_lower_bound <= a.certified_epsilon && !a.violation, "{}", a.report_json);
    assert_eq!(r["data_mia"]["n_members"], 40);
    assert_eq!(r["data_mia"]["n_nonmembers"], 40);
    for score in ["ref", "loss", "min_k_20", "min_k_pp_20", "zlib"] {
        let auc = r["data_mia"]["scores"][score]["auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auc), "{score}: {auc}");
    }
    assert_eq!(r["models"]["target_sha256"].as_str().unwrap().len(), 64);
    assert!(!a.report_json.contains(&lines(&notes(400, 1))[0]), "reports hold aggregates, never texts");
    let listed = c.audits.list(pb::ListAuditsRequest { job_id: job.job_id.clone(), ..Default::default() }).await.unwrap().into_inner().audits;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].report_json, a.report_json);
    assert!(other.audits.list(pb::ListAuditsRequest::default()).await.unwrap().into_inner().audits.is_empty());
    d.stop().await;
}

/// With `tls_cert`/`tls_key` the daemon speaks TLS only: a client trusting the certificate is
/// served (health and an authenticated call, the `ewtune` CLI with `--ca-cert`, and the report
/// pages over HTTPS), a plaintext client is not. The certificate is a fresh self-signed one for `localhost` (rcgen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_only_clients_that_trust_its_certificate() {
    let identity = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = identity.cert.pem();
    let key_pem = identity.signing_key.serialize_pem();
    let written = cert_pem.clone();
    let d = Daemon::start_with(move |root| {
        let (cert, key) = (root.join("cert.pem"), root.join("key.pem"));
        std::fs::write(&cert, written).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        Some((cert, key))
    })
    .await;
    let port = d.addr.rsplit(':').next().unwrap().to_string();
    let https = format!("https://localhost:{port}");
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem));
    let ch = Channel::from_shared(https.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: "ewtune.v1.Jobs".into() }).await.unwrap().into_inner().status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let token = d.state.store.create_token("clinic").unwrap();
    let mut datasets = pb::datasets_client::DatasetsClient::with_interceptor(ch, Bearer(token.clone()));
    assert!(datasets.list(pb::ListDatasetsRequest::default()).await.unwrap().into_inner().datasets.is_empty());
    // Plaintext to the TLS port: no answer.
    let plain = Channel::from_shared(d.addr.clone()).unwrap().connect().await;
    if let Ok(ch) = plain {
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        assert!(health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_err());
    }
    // The CLI, trusting the certificate.
    let cert_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cert_file.path(), &cert_pem).unwrap();
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_ewtune"))
        .args(["datasets", "list", "--addr", &https, "--ca-cert", cert_file.path().to_str().unwrap(), "--json"])
        .env("EWTUNE_TOKEN", &token)
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert_eq!(String::from_utf8_lossy(&cli.stdout).trim(), "[]");
    let untrusted = std::process::Command::new(env!("CARGO_BIN_EXE_ewtune")).args(["datasets", "list", "--addr", &https]).env("EWTUNE_TOKEN", &token).output().unwrap();
    assert!(String::from_utf8_lossy(&untrusted.stderr).contains("--ca-cert"), "{}", String::from_utf8_lossy(&untrusted.stderr));
    // The report pages are served over TLS with the same certificate (curl trusting it), and
    // not in plaintext.
    let pages = format!("https://localhost:{}/", d.pages_addr.port());
    let curl = |args: &[&str]| tokio::task::block_in_place(|| std::process::Command::new("curl").args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"]).args(args).output().unwrap());
    let trusted = curl(&["--cacert", cert_file.path().to_str().unwrap(), "-u", &format!("me:{token}"), &pages]);
    assert_eq!(String::from_utf8_lossy(&trusted.stdout), "200", "{}", String::from_utf8_lossy(&trusted.stderr));
    let plaintext = curl(&["-u", &format!("me:{token}"), &format!("http://localhost:{}/", d.pages_addr.port())]);
    assert_ne!(String::from_utf8_lossy(&plaintext.stdout), "200");
    d.stop().await;
}
