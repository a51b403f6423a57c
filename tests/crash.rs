//! Crash safety: `ewtuned` is killed with SIGKILL in the middle of training, at several points,
//! restarted, and the job resumes from its last checkpoint and succeeds; the ledger never records
//! fewer steps than ran (every progress event is preceded by its spend), nothing is lost.

use crate::util::{authed, fixture, free_port};
use ewtune::api::pb;
use ewtune::train::synthetic::{write_model, write_notes, Family, Shape};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

fn start(data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ewtuned"))
        .args(["--data-dir", data.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn connect(port: u16) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await {
            return ch;
        }
        assert!(Instant::now() < deadline, "ewtuned did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn events(ch: &Channel, token: &str, job: &str) -> Vec<pb::JobEvent> {
    // Watch ends only at a terminal state, so read the job's events through List-free polling:
    // a watch with a short deadline returns what exists so far.
    let mut jobs = pb::jobs_client::JobsClient::new(ch.clone());
    let mut req = authed(token, pb::WatchJobRequest { job_id: job.to_string(), after_seq: 0 });
    req.set_timeout(Duration::from_millis(400));
    let mut out = Vec::new();
    if let Ok(resp) = jobs.watch(req).await {
        let mut s = resp.into_inner();
        while let Ok(Some(e)) = s.message().await {
            out.push(e);
        }
    }
    out
}

async fn job(ch: &Channel, token: &str, id: &str) -> pb::Job {
    pb::jobs_client::JobsClient::new(ch.clone()).get(authed(token, pb::GetJobRequest { job_id: id.to_string() })).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_training_resumes_without_undercounting() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let shape = Shape { vocab: 400, d_model: 64, layers: 2, heads: 2, kv_heads: 2, positions: 64 };
    write_model(&data.join("models/tiny"), Family::Gpt2, shape, 1, Some(&fixture("audit").join("tokenizer.json"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ewtuned")).args(["token", "create", "--data-dir", data.to_str().unwrap(), "--tenant", "ward"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let notes = root.path().join("notes.jsonl");
    write_notes(&notes, 300, 0, 4).unwrap();

    let port = free_port();
    let mut daemon = start(&data, port);
    let ch = connect(port).await;
    let ds = pb::datasets_client::DatasetsClient::new(ch.clone())
        .register(authed(&token, pb::RegisterDatasetRequest { name: "n".into(), content: std::fs::read(&notes).unwrap(), budget_epsilon: 20.0, budget_delta: 1e-5, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let spec = pb::JobSpec {
        dataset_id: ds.dataset_id.clone(),
        base_model: "tiny".into(),
        finetune: Some(pb::job_spec::Finetune::Full(true)),
        noise_multiplier: 2.0,
        batch_size: 30,
        steps: 400,
        micro_batch: 30,
        max_length: 32,
        ..Default::default()
    };
    let id = pb::jobs_client::JobsClient::new(ch.clone()).create(authed(&token, spec)).await.unwrap().into_inner().job_id;

    let mut ch = ch;
    for kill_after in [30u64, 170, 330] {
        // Wait until the job has run past `kill_after` steps, then SIGKILL the daemon.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let j = job(&ch, &token, &id).await;
            if j.steps_done > kill_after || j.state == pb::JobState::Succeeded as i32 {
                break;
            }
            assert!(Instant::now() < deadline, "no progress: {j:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sigkill(daemon.id());
        daemon.wait().unwrap();
        {
            // While the daemon is dead, read its store directly: the ledger must cover every
            // step that could have run (each progress event is written before its step) and the
            // steps the last checkpoint holds.
            let store = ewtune::store::Store::open(data.join("ewtune.db")).unwrap();
            let tenant = ewtune::store::TenantId::parse("ward").unwrap();
            let jid = ewtune::store::JobId::parse(&id).unwrap();
            let j = store.get_job(&tenant, &jid).unwrap();
            let progressed = store
                .events_since(&tenant, &jid, 0, u32::MAX)
                .unwrap()
                .iter()
                .filter(|e| e.kind == "progress")
                .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.payload_json).ok()?["step"].as_u64())
                .max()
                .unwrap_or(0);
            assert!(j.steps_done >= progressed, "ledger {} < {progressed} steps that ran", j.steps_done);
            assert!(j.steps_done > kill_after && j.steps_done < 400, "not killed mid-training: {j:?}");
            let latest = data.join("jobs").join(&id).join("checkpoints/LATEST");
            if let Ok(name) = std::fs::read_to_string(&latest) {
                let ckpt_step: u64 = name.trim().trim_start_matches("ckpt-").parse().unwrap();
                assert!(j.steps_done >= ckpt_step, "ledger {} < checkpoint step {ckpt_step}", j.steps_done);
            }
        }
        // Restart on a new port; the job is requeued and resumes from its checkpoint.
        let port = free_port();
        daemon = start(&data, port);
        ch = connect(port).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let j = job(&ch, &token, &id).await;
        if j.state != pb::JobState::Queued as i32 && j.state != pb::JobState::Running as i32 {
            break j;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    assert!(done.steps_done >= 400, "{done:?}");
    let all = events(&ch, &token, &id).await;
    let interrupted = all.iter().filter(|e| e.kind == "interrupted").count();
    assert_eq!(interrupted, 3, "{:?}", all.iter().map(|e| &e.kind).collect::<Vec<_>>());
    // The model was written, and the last checkpoint covers all 45 steps.
    let job_dir = data.join("jobs").join(&id);
    assert!(job_dir.join("model/model.safetensors").exists());
    let latest = std::fs::read_to_string(job_dir.join("checkpoints/LATEST")).unwrap();
    assert_eq!(latest.trim(), "ckpt-00000400");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// SIGKILL, without a libc dependency: `kill -9`.
fn sigkill(pid: u32) {
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// SIGKILL while a dataset that shares units with an earlier one registers, and while jobs on
/// it are admitted, at several points: after each kill the registration is all or nothing
/// (every shared unit moved to the shared class, or the dataset absent with none of its units
/// stored), every admitted job on it counts against the earlier dataset's people, and their
/// committed epsilon never goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_overlapping_registration_and_admission_loses_no_spend() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let shape = Shape { vocab: 400, d_model: 32, layers: 1, heads: 2, kv_heads: 2, positions: 64 };
    write_model(&data.join("models/tiny"), Family::Gpt2, shape, 1, Some(&fixture("audit").join("tokenizer.json"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ewtuned")).args(["token", "create", "--data-dir", data.to_str().unwrap(), "--tenant", "ward"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let notes = root.path().join("notes.jsonl");
    write_notes(&notes, 7000, 0, 11).unwrap();
    let first_bytes = std::fs::read(&notes).unwrap();
    let shared: Vec<&str> = std::str::from_utf8(&first_bytes).unwrap().lines().take(6000).collect();
    let mut second: Vec<String> = shared.iter().rev().map(|l| l.to_string()).collect();
    second.extend((0..1000).map(|i| serde_json::json!({ "text": format!("Visitor {i} has a sore throat.") }).to_string()));
    let second_bytes = second.join("\n").into_bytes();
    let second_id = ewtune::store::DatasetId::parse(&ewtune::digest::sha256_hex(&second_bytes)).unwrap();
    let tenant = ewtune::store::TenantId::parse("ward").unwrap();
    let register = |name: &str, content: Vec<u8>| pb::RegisterDatasetRequest { name: name.into(), content, budget_epsilon: 50.0, budget_delta: 1e-5, ..Default::default() };
    let job_on = |dataset: &str| pb::JobSpec {
        dataset_id: dataset.to_string(),
        base_model: "tiny".into(),
        finetune: Some(pb::job_spec::Finetune::Full(true)),
        noise_multiplier: 4.0,
        batch_size: 20,
        steps: 5,
        micro_batch: 20,
        max_length: 32,
        ..Default::default()
    };

    let port = free_port();
    let mut daemon = start(&data, port);
    let ch = connect(port).await;
    let first = pb::datasets_client::DatasetsClient::new(ch.clone()).register(authed(&token, register("first", first_bytes.clone()))).await.unwrap().into_inner();
    let first_id = ewtune::store::DatasetId::parse(&first.dataset_id).unwrap();
    pb::jobs_client::JobsClient::new(ch.clone()).create(authed(&token, job_on(&first.dataset_id))).await.unwrap();

    let mut ch = ch;
    let mut committed_before = 0.0;
    let mut registered_at_kill = Vec::new();
    for kill_after_ms in [2u64, 30, 60, 90, 150, 250] {
        let (c, t, b, second) = (ch.clone(), token.clone(), second_bytes.clone(), second_id.to_string());
        let spec = job_on(&second);
        let client = tokio::spawn(async move {
            let _ = pb::datasets_client::DatasetsClient::new(c.clone()).register(authed(&t, pb::RegisterDatasetRequest { name: "second".into(), content: b, budget_epsilon: 50.0, budget_delta: 1e-5, ..Default::default() })).await;
            loop {
                if pb::jobs_client::JobsClient::new(c.clone()).create(authed(&t, spec.clone())).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        sigkill(daemon.id());
        daemon.wait().unwrap();
        client.abort();
        {
            let store = ewtune::store::Store::open(data.join("ewtune.db")).unwrap();
            let db = rusqlite::Connection::open(data.join("ewtune.db")).unwrap();
            let stored_units: i64 = db.query_row("SELECT count(*) FROM units", [], |r| r.get(0)).unwrap();
            let in_classes: i64 = db.query_row("SELECT sum(units) FROM unit_classes", [], |r| r.get(0)).unwrap();
            assert_eq!(stored_units, in_classes, "every unit in exactly one class");
            let report = store.budget_report(&tenant, &first_id, false).unwrap();
            match store.get_dataset(&tenant, &second_id) {
                Ok(_) => {
                    registered_at_kill.push(true);
                    assert_eq!(stored_units, 8000, "all of the second dataset's units, once");
                    assert_eq!(store.shared_units(&tenant, &second_id).unwrap().units, 6000);
                    let jobs_on_second = store.list_jobs(&tenant, Default::default()).unwrap().items.iter().filter(|j| j.dataset == second_id).count();
                    assert_eq!(report.jobs.iter().filter(|j| j.dataset == second_id).count(), jobs_on_second, "every admitted job counts against the shared people");
                }
                Err(ewtune::store::StoreError::NotFound { .. }) => {
                    registered_at_kill.push(false);
                    assert_eq!(stored_units, 7000, "none of an unregistered dataset's units");
                }
                Err(e) => panic!("{e}"),
            }
            assert!(report.committed_epsilon >= committed_before, "{} < {committed_before}", report.committed_epsilon);
            committed_before = report.committed_epsilon;
        }
        let port = free_port();
        daemon = start(&data, port);
        ch = connect(port).await;
    }
    assert!(registered_at_kill.contains(&true), "the registration never finished: {registered_at_kill:?}");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}
