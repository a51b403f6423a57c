//! The server's resource limits over real loopback connections: Watch streams end when their
//! clients leave and are capped per tenant, events are pushed; connections that send no
//! request are closed and the connection cap holds; uploads past their cap wait briefly, then
//! are refused unread, and the daemon's memory stays bounded; what the daemon writes is private
//! (0600/0700) and stale temp files are gone at start-up.
//!
//! Two shapes of server: [`Served`] runs the API alone in-process (no scheduler: a created job
//! stays queued, and the test drives the scheduler's own store calls to push events), and
//! [`Ewtuned`] runs the real `ewtuned` binary (its umask, its memory).

use crate::util::{authed, fixture};
use ewtune::api::pb;
use ewtune::api::watch::RECHECK;
use ewtune::service::config::{DaemonConfig, ServerLimits};
use ewtune::service::State;
use ewtune::store::{JobId, JobState, TenantId};
use ewtune::train::synthetic::{write_model, write_notes, Family, Shape};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;

/// A generous bound for anything that should take milliseconds (2 noisy cores).
const DEADLINE: Duration = Duration::from_secs(30);

const SHAPE: Shape = Shape { vocab: 400, d_model: 32, layers: 2, heads: 2, kv_heads: 2, positions: 64 };

/// The API alone, in-process, with `limits`; models under `<root>/models`.
struct Served {
    addr: String,
    state: Arc<State>,
    _root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    async fn start(limits: ServerLimits) -> Served {
        let root = tempfile::tempdir().unwrap();
        let data_dir = root.path().join("data");
        let mut config = DaemonConfig::resolve(&data_dir, Some("127.0.0.1:0"), None).unwrap();
        config.models_dir = root.path().join("models");
        config.limits = limits;
        write_model(&config.models_dir.join("tiny"), Family::Gpt2, SHAPE, 1, Some(&fixture("audit").join("tokenizer.json"))).unwrap();
        let state = State::open(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ewtune::api::server::serve(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        let task = tokio::spawn(async move { task.await.unwrap().unwrap() });
        Served { addr, state, _root: root, stop: Some(tx), task: Some(task) }
    }

    /// Stops like `daemon::run` does: streams are told first, then the server drains.
    async fn stop(mut self) {
        self.state.stopping.send_replace(true);
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, self.task.take().unwrap()).await.expect("the server drains").unwrap();
    }

    fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(addr.to_string()).unwrap().connect().await.unwrap()
}

fn notes(n: usize, seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    write_notes(&p, n, 0, seed).unwrap();
    std::fs::read(p).unwrap()
}

fn spec(dataset: &str, steps: u64) -> pb::JobSpec {
    pb::JobSpec {
        dataset_id: dataset.to_string(),
        base_model: "tiny".into(),
        finetune: Some(pb::job_spec::Finetune::Lora(pb::LoraConfig { rank: 4, alpha: 8.0, target_modules: vec![] })),
        target_epsilon: 1.0,
        batch_size: 40,
        steps,
        micro_batch: 20,
        learning_rate: 1e-2,
        max_length: 40,
        ..Default::default()
    }
}

/// Registers a dataset and creates a job on it for `token`'s tenant; returns the job id.
async fn queued_job(ch: &Channel, token: &str) -> String {
    let ds = pb::datasets_client::DatasetsClient::new(ch.clone())
        .register(authed(token, pb::RegisterDatasetRequest { name: "notes".into(), content: notes(400, 1), budget_epsilon: 8.0, budget_delta: 1e-5, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    pb::jobs_client::JobsClient::new(ch.clone()).create(authed(token, spec(&ds.dataset_id, 8))).await.unwrap().into_inner().job_id
}

async fn watch(ch: &Channel, token: &str, job: &str) -> Result<tonic::Streaming<pb::JobEvent>, tonic::Status> {
    let r = pb::jobs_client::JobsClient::new(ch.clone()).watch(authed(token, pb::WatchJobRequest { job_id: job.to_string(), after_seq: 0 })).await;
    r.map(tonic::Response::into_inner)
}

/// The next event's kind, within [`DEADLINE`].
async fn next_kind(s: &mut tonic::Streaming<pb::JobEvent>) -> Option<String> {
    tokio::time::timeout(DEADLINE, s.message()).await.expect("an event within the deadline").unwrap().map(|e| e.kind)
}

/// Waits (polling) until `done` holds, or panics with `what` after [`DEADLINE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 9: 200 Watch streams on a queued job, dropped by their clients, leave no task behind
/// (the live-stream gauge returns to 0); a Watch receives the scheduler's events as they are
/// committed, well inside the slow re-check, and ends after the final one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_end_with_their_clients_and_events_are_pushed() {
    let s = Served::start(ServerLimits { watch_streams_per_tenant: 256, ..ServerLimits::default() }).await;
    let token = s.state.store.create_token("clinic").unwrap();
    let tenant = TenantId::parse("clinic").unwrap();
    let ch = channel(&s.addr).await;
    let job = queued_job(&ch, &token).await;
    let mut streams = Vec::new();
    for _ in 0..200 {
        let mut w = watch(&ch, &token, &job).await.unwrap();
        assert_eq!(next_kind(&mut w).await.as_deref(), Some("created"));
        streams.push(w);
    }
    assert_eq!(s.state.watches.open_for(&tenant), 200);
    drop(streams);
    eventually("dropped Watch streams end on the server", || s.state.watches.open_total() == 0).await;

    // Pushed: each store commit reaches the open stream at once.
    let id = JobId::parse(&job).unwrap();
    let mut w = watch(&ch, &token, &job).await.unwrap();
    assert_eq!(next_kind(&mut w).await.as_deref(), Some("created"));
    let pushed = |started: Instant, kind: &str| assert!(started.elapsed() < RECHECK / 2, "{kind} took {:?}: not pushed", started.elapsed());
    let t = Instant::now();
    s.state.store.claim_next_queued().unwrap().unwrap();
    assert_eq!(next_kind(&mut w).await.as_deref(), Some("started"));
    pushed(t, "started");
    let t = Instant::now();
    s.state.store.record_progress(&id, 3, 0.1).unwrap();
    assert_eq!(next_kind(&mut w).await.as_deref(), Some("progress"));
    pushed(t, "progress");
    let t = Instant::now();
    s.state.store.finish_job(&id, JobState::Succeeded, None).unwrap();
    assert_eq!(next_kind(&mut w).await.as_deref(), Some("succeeded"));
    assert_eq!(next_kind(&mut w).await, None, "the stream ends after the final event");
    pushed(t, "succeeded");
    eventually("a finished stream frees its slot", || s.state.watches.open_total() == 0).await;
    s.stop().await;
}

/// Issue 9: past `watch_streams_per_tenant` Watch answers RESOURCE_EXHAUSTED; another tenant is
/// not counted against it; a closed stream frees its slot; a stopping daemon ends open streams
/// with UNAVAILABLE (not a clean end, which would mean the job is over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cap_per_tenant_answers_resource_exhausted_and_frees_slots() {
    let s = Served::start(ServerLimits { watch_streams_per_tenant: 3, ..ServerLimits::default() }).await;
    let alice = s.state.store.create_token("alice").unwrap();
    let bob = s.state.store.create_token("bob").unwrap();
    let ch = channel(&s.addr).await;
    let job = queued_job(&ch, &alice).await;
    let bobs_job = queued_job(&ch, &bob).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(watch(&ch, &alice, &job).await.unwrap());
    }
    let e = watch(&ch, &alice, &job).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("watch_streams_per_tenant"), "{}", e.message());
    assert_eq!(watch(&ch, &bob, &job).await.unwrap_err().code(), Code::NotFound, "another tenant's job");
    let mut bobs = watch(&ch, &bob, &bobs_job).await.unwrap();
    assert_eq!(next_kind(&mut bobs).await.as_deref(), Some("created"));
    drop(open.pop());
    let alice_id = TenantId::parse("alice").unwrap();
    eventually("a dropped stream frees its slot", || s.state.watches.open_for(&alice_id) == 2).await;
    open.push(watch(&ch, &alice, &job).await.unwrap());
    open.push(bobs);
    let stopping = tokio::spawn(s.stop());
    for mut w in open {
        let end = loop {
            match tokio::time::timeout(DEADLINE, w.message()).await.expect("streams end when the daemon stops") {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    }
    stopping.await.unwrap();
}

/// Reads from `sock` until the server closes it (EOF or reset); panics after [`DEADLINE`].
async fn closed_by_server(sock: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, sock.read(&mut buf)).await.expect("the server closes the connection") {
            Ok(0) | Err(_) => return,
            Ok(_) => {} // the server's SETTINGS, GOAWAY
        }
    }
}

async fn health(addr: &str) -> Result<i32, String> {
    let ch = Channel::from_shared(addr.to_string()).unwrap().connect_timeout(Duration::from_secs(5)).connect().await.map_err(|e| e.to_string())?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest { service: String::new() });
    req.set_timeout(Duration::from_secs(5));
    h.check(req).await.map(|r| r.into_inner().status).map_err(|e| e.to_string())
}

/// Issue 9: raw TCP connections that never send the HTTP/2 preface (or send it and no request)
/// are closed after `handshake_timeout_secs`, while a connection with a Watch in flight outlives
/// both the handshake and the idle timeout and still gets its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_are_closed() {
    let s = Served::start(ServerLimits { handshake_timeout: Duration::from_secs(1), idle_timeout: Duration::from_secs(1), ..ServerLimits::default() }).await;
    let target = format!("127.0.0.1:{}", s.port());
    let token = s.state.store.create_token("clinic").unwrap();
    let ch = channel(&s.addr).await;
    let job = queued_job(&ch, &token).await;
    let mut w = watch(&ch, &token, &job).await.unwrap();
    assert_eq!(next_kind(&mut w).await.as_deref(), Some("created"));
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(&target).await.unwrap());
    }
    let mut preface_only = tokio::net::TcpStream::connect(&target).await.unwrap();
    // The client preface and an empty SETTINGS frame: a handshake, but never a request.
    preface_only.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    silent.push(preface_only);
    for sock in &mut silent {
        closed_by_server(sock).await;
    }
    // Both timeouts have passed for the Watch's connection: still served, events still pushed.
    s.state.store.claim_next_queued().unwrap().unwrap();
    assert_eq!(next_kind(&mut w).await.as_deref(), Some("started"));
    drop(w);
    s.stop().await;
}

/// Issue 9: at `max_connections` a new connection is closed at once (the handshake timeout is
/// 60 s here, past the deadline) and a health check fails; once a slot frees, a fresh client's
/// health check is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_until_a_slot_frees() {
    let s = Served::start(ServerLimits { max_connections: 4, handshake_timeout: Duration::from_secs(60), ..ServerLimits::default() }).await;
    let target = format!("127.0.0.1:{}", s.port());
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(&target).await.unwrap());
    }
    // The server accepts in order: once a fifth is closed, the four hold every slot.
    let mut extra = tokio::net::TcpStream::connect(&target).await.unwrap();
    closed_by_server(&mut extra).await;
    assert!(health(&s.addr).await.is_err(), "at the cap no new client is served");
    drop(held.pop());
    let start = Instant::now();
    loop {
        match health(&s.addr).await {
            Ok(status) => {
                assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
                break;
            }
            Err(e) => assert!(start.elapsed() < DEADLINE, "a freed slot serves a fresh client: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    s.stop().await;
}

/// The `ewtuned` binary on a fresh data directory, with `config` as its ewtuned.toml and the
/// models in `<root>/models` (outside the data directory).
struct Ewtuned {
    child: Child,
    root: tempfile::TempDir,
    port: u16,
    token: String,
}

impl Ewtuned {
    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    async fn start(config: &str, prepare: impl FnOnce(&Path)) -> Ewtuned {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let models = root.path().join("models");
        write_model(&models.join("tiny"), Family::Gpt2, SHAPE, 1, Some(&fixture("audit").join("tokenizer.json"))).unwrap();
        let toml = root.path().join("ewtuned.toml");
        std::fs::write(&toml, format!("models_dir = {:?}\n{config}", models.to_str().unwrap())).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ewtuned")).args(["token", "create", "--data-dir", data.to_str().unwrap(), "--tenant", "clinic"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        prepare(&data);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_ewtuned"))
            .args(["--data-dir", data.to_str().unwrap(), "--config", toml.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Ewtuned { child, root, port, token };
        let start = Instant::now();
        while health(&d.addr()).await.is_err() {
            assert!(start.elapsed() < DEADLINE * 2, "ewtuned did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The daemon's peak resident memory so far (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }
}

impl Drop for Ewtuned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSONL dataset of about `bytes` bytes, distinct per `seed`.
fn big_dataset(bytes: usize, seed: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 1024);
    let filler = "x".repeat(1000);
    let mut i = 0;
    while out.len() < bytes {
        out.extend_from_slice(format!("{{\"text\": \"{seed} {i} {filler}\"}}\n").as_bytes());
        i += 1;
    }
    out
}

/// Issue 9: with `max_concurrent_uploads = 1`, four 32 MiB uploads sent at once on one
/// connection each succeed or, past the cap and its short wait, are answered RESOURCE_EXHAUSTED
/// (naming the key) without being read and succeed when sent again; small uploads from ten
/// connections at once all get through by waiting; the daemon's peak memory grows by well under what four decoded at once
/// would take (measured against one upload alone: under twice its growth, where four at once
/// would be about four times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_cap_wait_briefly_and_memory_stays_bounded() {
    const SIZE: usize = 32 << 20;
    let d = Ewtuned::start("max_concurrent_uploads = 1\n", |_| {}).await;
    let ch = channel(&d.addr()).await;
    let register = |seed: usize| {
        let (ch, token) = (ch.clone(), d.token.clone());
        async move {
            let content = big_dataset(SIZE, seed);
            pb::datasets_client::DatasetsClient::new(ch)
                .max_encoding_message_size(usize::MAX)
                .register(authed(&token, pb::RegisterDatasetRequest { name: "big".into(), content, budget_epsilon: 1.0, budget_delta: 1e-5, ..Default::default() }))
                .await
        }
    };
    let base = d.peak_rss();
    register(0).await.unwrap();
    let one = d.peak_rss() - base;
    let uploads: Vec<_> = (1..=4).map(|seed| tokio::spawn(register(seed))).collect();
    let mut refused = Vec::new();
    for (seed, u) in (1..=4).zip(uploads) {
        match u.await.unwrap() {
            Ok(_) => {}
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("max_concurrent_uploads"), "{}", e.message());
                refused.push(seed);
            }
            Err(e) => panic!("upload {seed}: {e:?}"),
        }
    }
    let four = d.peak_rss() - base;
    eprintln!("ewtuned peak RSS growth: one 32 MiB upload {} MiB; four at once (cap 1, {} refused) {} MiB", one >> 20, refused.len(), four >> 20);
    assert!(one >= SIZE as u64, "one upload grows the peak by at least its size ({one} bytes)");
    assert!(four < 2 * one, "four uploads at once took {four} bytes, one alone {one}");
    for seed in refused {
        register(seed).await.unwrap();
    }
    // Small uploads from separate connections wait for the one slot and all succeed.
    let small: Vec<_> = (0..10u64)
        .map(|seed| {
            let (addr, token) = (d.addr(), d.token.clone());
            tokio::spawn(async move {
                let ch = channel(&addr).await;
                pb::datasets_client::DatasetsClient::new(ch)
                    .register(authed(&token, pb::RegisterDatasetRequest { name: "small".into(), content: notes(300, 100 + seed), budget_epsilon: 1.0, budget_delta: 1e-5, ..Default::default() }))
                    .await
            })
        })
        .collect();
    for s in small {
        s.await.unwrap().unwrap();
    }
}

/// Every file under `dir` is 0600 and every directory 0700 (`dir` included); returns the files.
fn assert_private(dir: &Path) -> Vec<PathBuf> {
    let mode = std::fs::symlink_metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            files.extend(assert_private(&path));
        } else {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", path.display());
            files.push(path);
        }
    }
    files
}

/// Issue 9: after a job has run, every file the daemon wrote (store, WAL, shared memory,
/// datasets, job outputs and checkpoints, signing key) is 0600 and every directory 0700; a file
/// an older daemon left 0644 is tightened at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_private_after_a_job_runs() {
    let d = Ewtuned::start("", |data| {
        let legacy = data.join("datasets/legacy.jsonl");
        std::fs::create_dir_all(data.join("datasets")).unwrap(); // `token create` lays out only the store
        std::fs::write(&legacy, "{}\n").unwrap();
        std::fs::set_permissions(&legacy, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o755)).unwrap();
    })
    .await;
    let ch = channel(&d.addr()).await;
    let job = queued_job(&ch, &d.token).await;
    let mut w = watch(&ch, &d.token, &job).await.unwrap();
    let mut last = None;
    while let Some(e) = tokio::time::timeout(DEADLINE * 4, w.message()).await.expect("the job finishes").unwrap() {
        last = Some(e.kind);
    }
    assert_eq!(last.as_deref(), Some("succeeded"));
    let files = assert_private(&d.data());
    let names: Vec<String> = files.iter().map(|p| p.strip_prefix(d.data()).unwrap().display().to_string()).collect();
    for expected in ["ewtune.db", "ewtune.db-wal", "ewtune.db-shm", "signing_key.pk8", "datasets/legacy.jsonl"] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("datasets/") && n.ends_with(".jsonl") && n != "datasets/legacy.jsonl"), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with(&format!("jobs/{job}/"))), "job outputs: {names:?}");
}

/// Issue 9: temp files of unfinished writes (`.tmp*` from the tempfile crate, `<name>.tmp-<pid>`
/// from atomic writes, in datasets/ and anywhere under jobs/) are removed at start-up, before
/// serving; everything else stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_temp_files_are_removed_at_start_up() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let ckpt = data.join("jobs/0123456789abcdef0123456789abcdef/ckpt-00000004");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::create_dir_all(data.join("datasets")).unwrap();
    let stale = [data.join("datasets/.tmpa1B2c3"), data.join("jobs/0123456789abcdef0123456789abcdef/privacy.json.tmp-4242"), ckpt.join("trainable.safetensors.tmp-17"), ckpt.join(".tmpZZ")];
    let kept = [data.join("datasets/abc.jsonl"), ckpt.join("trainable.safetensors"), data.join("jobs/0123456789abcdef0123456789abcdef/LATEST")];
    for p in stale.iter().chain(&kept) {
        std::fs::write(p, "x").unwrap();
    }
    let config = DaemonConfig::resolve(&data, Some("127.0.0.1:0"), None).unwrap();
    let state = State::open(config).unwrap();
    for p in &stale {
        assert!(!p.exists(), "{} is removed", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} stays", p.display());
    }
    drop(state);
}
