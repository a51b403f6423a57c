//! Hostile and careless clients against the real daemon over loopback gRPC: nothing one tenant
//! sends changes another's guarantee, no number panics a handler or stalls the API, a refused
//! registration leaves no file, names are bounded, listings page, errors hold no server paths.

use crate::daemon::{client, notes, register, spec, Daemon};
use ewtune::api::pb;
use proptest::prelude::*;
use std::time::{Duration, Instant};
use tonic::Code;

/// Lines with two candidate user fields: 40 users by `user`, 4 groups by `grp`.
fn two_keyed_lines() -> Vec<u8> {
    let mut out = String::new();
    for i in 0..400 {
        out.push_str(&serde_json::json!({ "text": format!("note {i} about the patient"), "user": format!("u{}", i % 40), "grp": format!("g{}", i % 4) }).to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn user_dataset(content: Vec<u8>, field: &str) -> pb::RegisterDatasetRequest {
    pb::RegisterDatasetRequest { name: "by user".into(), content, privacy_unit: pb::PrivacyUnit::User as i32, user_field: field.into(), budget_epsilon: 5.0, budget_delta: 1e-5 }
}

/// Issue 9.1: tenant B registering A's bytes with another user field changes nothing of A's:
/// the privacy unit lives in each tenant's own row, and nothing is written for a refused call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_cannot_rewrite_my_privacy_unit() {
    let d = Daemon::start().await;
    let mut a = client(&d.addr, &d.state.store.create_token("alice").unwrap()).await;
    let mut b = client(&d.addr, &d.state.store.create_token("bob").unwrap()).await;
    let da = a.datasets.register(user_dataset(two_keyed_lines(), "user")).await.unwrap().into_inner();
    assert_eq!(da.units, 40);
    let db = b.datasets.register(user_dataset(two_keyed_lines(), "grp")).await.unwrap().into_inner();
    assert_eq!((db.dataset_id.as_str(), db.units), (da.dataset_id.as_str(), 4));
    // Bob again, refused: still nothing changes for Alice.
    let again = b.datasets.register(user_dataset(two_keyed_lines(), "text")).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let mut s = spec(&da.dataset_id, 2.0);
    s.batch_size = 10;
    let plan = a.jobs.plan(s.clone()).await.unwrap().into_inner();
    assert_eq!(plan.units, 40, "Alice's plan counts her users");
    assert_eq!((plan.examples, plan.dataset_units, plan.dropped_examples), (400, 40, 0), "every example of a user is in their unit");
    // Bob's plan of the same bytes counts his units, not Alice's (the counts are kept per tenant).
    let bob_plan = b.jobs.plan(pb::JobSpec { batch_size: 2, ..spec(&db.dataset_id, 2.0) }).await.unwrap().into_inner();
    assert_eq!((bob_plan.examples, bob_plan.dataset_units), (400, 4));
    let job = a.jobs.create(s).await.unwrap().into_inner();
    let stored: serde_json::Value = serde_json::from_str(&job.spec_json).unwrap();
    assert_eq!(stored["data_format"]["user_field"], "user", "{}", job.spec_json);
    assert!(!job.spec_json.contains(d.state.config.data_dir.to_str().unwrap()), "no server paths: {}", job.spec_json);
    assert!((job.sample_rate - 10.0 / 40.0).abs() < 1e-15);
    // No sidecar file exists for anyone to rewrite.
    let files: Vec<String> = std::fs::read_dir(d.state.config.data_dir.join("datasets")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files, vec![format!("{}.jsonl", da.dataset_id)]);
    d.stop().await;
}

/// A pre-version-3 store: a user-level dataset whose sidecar is readable gets its field; one
/// whose sidecar is missing is refused for jobs (FailedPrecondition), never trained per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sidecars_are_adopted_never_guessed() {
    let root = tempfile::tempdir().unwrap();
    let db = root.path().join("ewtune.db");
    let store = ewtune::store::Store::open(&db).unwrap();
    let tenant = store.authenticate(&store.create_token("acme").unwrap()).unwrap().unwrap();
    drop(store);
    // Put two user-level rows in as a version-2 daemon left them (no user_field).
    let conn = rusqlite_free_insert(&db, &tenant);
    let adopted_id = conn[0].clone();
    let lost_id = conn[1].clone();
    let dir = root.path().join("datasets");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{adopted_id}.json")), br#"{"user_field":"user"}"#).unwrap();
    std::fs::write(dir.join(format!("{lost_id}.json")), b"{corrupt").unwrap();
    let store = ewtune::store::Store::open(&db).unwrap();
    let read = |id: &ewtune::store::DatasetId, _units: u64| {
        let bytes = std::fs::read(dir.join(format!("{id}.json"))).ok()?;
        serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["user_field"].as_str().map(str::to_string)
    };
    let (adopted, unusable) = store.adopt_legacy_user_fields(read).unwrap();
    assert_eq!((adopted, unusable.iter().map(|i| i.to_string()).collect::<Vec<_>>()), (1, vec![lost_id.clone()]));
    let get = |id: &str| store.get_dataset(&tenant, &ewtune::store::DatasetId::parse(id).unwrap()).unwrap();
    // (Their units have no identities yet, which start-up assigns next: the field alone here.)
    assert_eq!(get(&adopted_id).data_user_field_unchecked().unwrap(), Some("user"));
    let err = get(&lost_id).data_user_field_unchecked().unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), Code::FailedPrecondition);
    // Once set, SQL refuses to change it.
    assert_eq!(store.adopt_legacy_user_fields(|_, _| Some("grp".into())).unwrap().0, 1, "only the NULL one is filled");
    assert_eq!(get(&adopted_id).data_user_field_unchecked().unwrap(), Some("user"));
}

/// Inserts two user-level datasets without a user field, as schema version 2 stored them (the
/// test plays the old daemon: it lifts the version-3 trigger for its insert). Returns their ids.
fn rusqlite_free_insert(db: &std::path::Path, tenant: &ewtune::store::TenantId) -> Vec<String> {
    let ids = vec!["a".repeat(64), "b".repeat(64)];
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("DROP TRIGGER datasets_user_datasets_name_their_field").unwrap();
    for id in &ids {
        conn.execute(
            "INSERT INTO datasets (tenant, sha256, name, path, units, privacy_unit, budget_epsilon, budget_delta, created_at_ms) VALUES (?1, ?2, 'old', '/x', 10, 'user', 1.0, 1e-5, 0)",
            rusqlite::params![tenant.as_str(), id],
        )
        .unwrap();
    }
    ids
}

/// Issue 9.6: a refused registration leaves no file; ten concurrent registrations of the same
/// bytes by one tenant are each OK or AlreadyExists (exactly one OK), by two tenants both OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_leave_no_orphans_and_race_cleanly() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("alice").unwrap();
    let mut a = client(&d.addr, &token).await;
    let datasets_dir = d.state.config.data_dir.join("datasets");
    let listing = || std::fs::read_dir(&datasets_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect::<Vec<_>>();
    for bad in [
        pb::RegisterDatasetRequest { name: "x".into(), content: notes(50, 3), budget_epsilon: -1.0, budget_delta: 1e-5, ..Default::default() },
        pb::RegisterDatasetRequest { name: "x".into(), content: b"{\"text\": \"ok\"}\nnot json\n".to_vec(), budget_epsilon: 1.0, budget_delta: 1e-5, ..Default::default() },
        pb::RegisterDatasetRequest { name: "x".into(), content: notes(50, 3), privacy_unit: pb::PrivacyUnit::User as i32, user_field: "absent".into(), budget_epsilon: 1.0, budget_delta: 1e-5 },
        pb::RegisterDatasetRequest { name: "\u{1b}[2J".into(), content: notes(50, 3), budget_epsilon: 1.0, budget_delta: 1e-5, ..Default::default() },
    ] {
        let e = a.datasets.register(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    assert!(listing().is_empty(), "{:?}", listing());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (addr, token) = (d.addr.clone(), if i % 2 == 0 { token.clone() } else { String::new() });
        let bob = if i % 2 == 1 { Some(d.state.store.create_token(&format!("bob{i}")).unwrap()) } else { None };
        tasks.spawn(async move {
            let mut c = client(&addr, bob.as_deref().unwrap_or(&token)).await;
            c.datasets.register(pb::RegisterDatasetRequest { name: "same".into(), content: notes(300, 7), budget_epsilon: 1.0, budget_delta: 1e-5, ..Default::default() }).await.map(|_| ()).map_err(|e| e.code())
        });
    }
    let mut codes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        codes.push(r.unwrap());
    }
    let ok = codes.iter().filter(|c| c.is_ok()).count();
    assert!(codes.iter().all(|c| matches!(c, Ok(()) | Err(Code::AlreadyExists))), "{codes:?}");
    assert_eq!(ok, 1 + 5, "one of Alice's five and each Bob's own: {codes:?}");
    let files = listing();
    assert_eq!(files.len(), 1, "one content-addressed file, no temp files: {files:?}");
    d.stop().await;
}

/// Issue 9.7: names are at most 256 bytes of printable text, errors quote a short prefix of
/// any input, and listings page (AIP-158) so a tenant's list never outgrows a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_bounded_and_lists_page() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("alice").unwrap();
    let mut a = client(&d.addr, &token).await;
    let huge = "n".repeat(10 << 20);
    let e = a.datasets.register(pb::RegisterDatasetRequest { name: huge.clone(), content: notes(20, 1), budget_epsilon: 1.0, budget_delta: 1e-5, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() < 300, "{} bytes of error", e.message().len());
    let mut first = None;
    for i in 0..7 {
        let d = a.datasets.register(pb::RegisterDatasetRequest { name: format!("d{i}"), content: notes(20, 100 + i), budget_epsilon: 1.0, budget_delta: 1e-5, ..Default::default() }).await.unwrap();
        first.get_or_insert(d.into_inner().dataset_id);
    }
    let mut s = spec(&first.unwrap(), 1.0);
    s.base_model = huge[..1 << 20].to_string(); // under the Jobs service's 4 MiB message limit
    let e = a.jobs.plan(s).await.unwrap_err();
    assert!(e.message().len() < 300 && e.message().contains("base_model"), "{}", &e.message()[..e.message().len().min(300)]);
    let mut names = Vec::new();
    let mut token_ = String::new();
    let mut pages = 0;
    loop {
        let page = a.datasets.list(pb::ListDatasetsRequest { page_size: 3, page_token: token_ }).await.unwrap().into_inner();
        assert!(page.datasets.len() <= 3);
        names.extend(page.datasets.into_iter().map(|d| d.name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token_ = page.next_page_token;
    }
    assert_eq!((pages, names), (3, (0..7).map(|i| format!("d{i}")).collect::<Vec<_>>()));
    let e = a.datasets.list(pb::ListDatasetsRequest { page_size: 3, page_token: "forged".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // The CLI lists every page and escapes control characters it prints.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ewtune")).args(["datasets", "list", "--addr", &d.addr]).env("EWTUNE_TOKEN", &token).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1 + 7);
    d.stop().await;
}

/// Issue 9.2/9.3: absurd numbers are refused with InvalidArgument naming the field, in well
/// under a second each, while a health probe keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_plans_are_refused_fast_while_health_answers() {
    let d = Daemon::start().await;
    let mut a = client(&d.addr, &d.state.store.create_token("alice").unwrap()).await;
    let ds = register(&mut a, 5.0).await;
    let probe = {
        let addr = d.addr.clone();
        tokio::spawn(async move {
            let ch = tonic::transport::Channel::from_shared(addr).unwrap().connect().await.unwrap();
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
            let mut worst = Duration::ZERO;
            for _ in 0..100 {
                let t = Instant::now();
                health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            worst
        })
    };
    let base = spec(&ds.dataset_id, 1.0);
    let cases: Vec<(&str, pb::JobSpec)> = vec![
        ("target_epsilon", pb::JobSpec { target_epsilon: 1e-300, steps: 3, ..base.clone() }),
        ("target_epsilon", pb::JobSpec { target_epsilon: f64::NAN, ..base.clone() }),
        ("noise_multiplier", pb::JobSpec { target_epsilon: 0.0, noise_multiplier: 1e-300, ..base.clone() }),
        ("noise_multiplier", pb::JobSpec { target_epsilon: 0.0, noise_multiplier: 1e300, ..base.clone() }),
        ("steps", pb::JobSpec { steps: (1 << 63) - 1, ..base.clone() }),
        ("steps", pb::JobSpec { steps: u64::MAX, ..base.clone() }),
        ("steps", pb::JobSpec { steps: 1 << 63, ..base.clone() }),
        ("epochs", pb::JobSpec { steps: 0, epochs: 1e300, ..base.clone() }),
        ("lora.alpha", pb::JobSpec { finetune: Some(pb::job_spec::Finetune::Lora(pb::LoraConfig { rank: 4, alpha: f64::NAN, target_modules: vec![] })), ..base.clone() }),
        ("lora.rank", pb::JobSpec { finetune: Some(pb::job_spec::Finetune::Lora(pb::LoraConfig { rank: u32::MAX, alpha: 8.0, target_modules: vec![] })), ..base.clone() }),
        ("lora.target_modules", pb::JobSpec { finetune: Some(pb::job_spec::Finetune::Lora(pb::LoraConfig { rank: 4, alpha: 8.0, target_modules: vec!["q_proj".into()] })), ..base.clone() }),
        ("clip_norm", pb::JobSpec { clip_norm: 1e300, ..base.clone() }),
        ("max_length", pb::JobSpec { max_length: 65, ..base.clone() }),
        ("micro_batch", pb::JobSpec { micro_batch: u32::MAX, ..base.clone() }),
        ("learning_rate", pb::JobSpec { learning_rate: f64::INFINITY, ..base.clone() }),
        ("self_audit.canaries", pb::JobSpec { self_audit: Some(pb::SelfAuditConfig { disabled: false, canaries: 99 }), ..base.clone() }),
        ("self_audit.canaries", pb::JobSpec { self_audit: Some(pb::SelfAuditConfig { disabled: false, canaries: u32::MAX }), ..base.clone() }),
        ("self_audit.canaries", pb::JobSpec { self_audit: Some(pb::SelfAuditConfig { disabled: true, canaries: 500 }), ..base.clone() }),
    ];
    for (field, s) in cases {
        let t = Instant::now();
        let e = a.jobs.plan(s.clone()).await.unwrap_err();
        assert!(e.code() == Code::InvalidArgument && e.message().starts_with(field), "{field}: {e:?}");
        assert!(t.elapsed() < Duration::from_secs(1), "{field} took {:?}", t.elapsed());
        let e = a.jobs.create(s).await.unwrap_err();
        assert!(e.code() == Code::InvalidArgument && e.message().starts_with(field), "{field}: {e:?}");
    }
    let worst = probe.await.unwrap();
    assert!(worst < Duration::from_secs(2), "health took {worst:?}");
    assert!(a.jobs.list(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.is_empty(), "nothing was admitted");
    d.stop().await;
}

/// Issue 9.3, the property: random field values (NaN, infinities, 0, maxima, negatives and
/// ordinary values) at Plan and Create through the real server get OK or a clear
/// InvalidArgument/FailedPrecondition within a deadline; never CANCELLED, INTERNAL or UNKNOWN.
/// Seeded (proptest's deterministic runner), so a failure reproduces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_specs_get_ok_or_a_clear_refusal() {
    let d = Daemon::start().await;
    let mut a = client(&d.addr, &d.state.store.create_token("alice").unwrap()).await;
    let ds = register(&mut a, 1000.0).await;
    // Each field: mostly sensible values (so deep paths, calibration included, are reached),
    // sometimes unset (0: the default), sometimes absurd.
    let weird = || prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(-1.0), Just(f64::MAX), Just(f64::MIN_POSITIVE), Just(1e-300)];
    let float = |sane: std::ops::Range<f64>| prop_oneof![12 => sane, 6 => Just(0.0), 1 => weird()];
    let count = prop_oneof![16 => 1u64..50, 1 => Just(0u64), 1 => prop_oneof![Just(u64::MAX), Just(1u64 << 63), Just(10_000_001u64)]];
    let small = |sane: std::ops::Range<u32>| prop_oneof![16 => sane, 4 => Just(0u32), 1 => Just(u32::MAX)];
    let length = prop_oneof![12 => Just(0u32), 6 => 2u32..64, 1 => Just(1), 1 => Just(65), 1 => Just(u32::MAX)];
    let modules = prop_oneof![12 => Just(vec![]), 6 => Just(vec!["c_attn".to_string()]), 1 => Just(vec!["q_proj".to_string()]), 1 => Just(vec!["\u{1b}".repeat(300)])];
    let privacy = (float(0.5..20.0), float(0.3..5.0), float(1e-9..1e-5), float(0.1..10.0));
    let training = (count, prop_oneof![24 => Just(0.0), 2 => 0.01f64..3.0, 1 => weird()], small(1..400), small(1..64), float(1e-4..0.1), length);
    let lora = (small(1..16), float(1.0..32.0), modules);
    let strategy = (privacy, training, lora, prop_oneof![3 => Just(false), 1 => Just(true)]);
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        proptest::test_runner::Config { cases: 64, failure_persistence: None, ..Default::default() },
        proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let runtime = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |((eps, sigma, delta, clip), (steps, epochs, batch, micro, lr, max_length), (rank, alpha, target_modules), create)| {
            let s = pb::JobSpec {
                dataset_id: ds.dataset_id.clone(),
                base_model: "tiny".into(),
                finetune: Some(pb::job_spec::Finetune::Lora(pb::LoraConfig { rank, alpha, target_modules })),
                target_epsilon: eps,
                noise_multiplier: sigma,
                delta,
                clip_norm: clip,
                batch_size: batch,
                epochs,
                steps,
                micro_batch: micro,
                learning_rate: lr,
                max_length,
                canaries: None,
                precision: String::new(),
                self_audit: None,
            };
            let mut req = tonic::Request::new(s.clone());
            req.set_timeout(Duration::from_secs(20));
            let t = Instant::now();
            let mut jobs = a.jobs.clone();
            let answer = runtime.block_on(async { if create { jobs.create(req).await.map(|_| ()) } else { jobs.plan(req).await.map(|_| ()) } });
            let code = answer.as_ref().map_or_else(|e| e.code(), |_| Code::Ok);
            prop_assert!(matches!(code, Code::Ok | Code::InvalidArgument | Code::FailedPrecondition), "{code:?} for {s:?}: {answer:?}");
            if let Err(e) = &answer {
                prop_assert!(!e.message().is_empty() && e.message().len() < 400, "{e:?}");
            }
            prop_assert!(t.elapsed() < Duration::from_secs(20), "{s:?}");
            *seen.lock().unwrap().entry(format!("{code:?} {}", answer.as_ref().err().map(|e| e.message().split(':').next().unwrap_or("").to_string()).unwrap_or_default())).or_insert(0) += 1;
            Ok(())
        })
    });
    result.unwrap();
    let seen = seen.into_inner().unwrap();
    eprintln!("answers over the random specs: {seen:?}");
    // Both sides of the edge were reached: refusals, and specs planned (and jobs queued) for real.
    assert!(seen.keys().any(|k| k.starts_with("InvalidArgument")) && seen.keys().any(|k| k.starts_with("Ok")), "{seen:?}");
    d.stop().await;
}

/// Issue 9.10: statuses and job reasons name the problem without paths on the daemon's machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_reasons_hold_no_server_paths() {
    let d = Daemon::start().await;
    let mut a = client(&d.addr, &d.state.store.create_token("alice").unwrap()).await;
    let ds = register(&mut a, 5.0).await;
    let models = d.state.config.models_dir.clone();
    // A model whose config is corrupt, and one whose weights are missing.
    std::fs::create_dir_all(models.join("corrupt")).unwrap();
    std::fs::write(models.join("corrupt/config.json"), b"{not json").unwrap();
    std::fs::create_dir_all(models.join("hollow")).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(models.join("tiny").join(f), models.join("hollow").join(f)).unwrap();
    }
    let root = d.state.config.data_dir.parent().unwrap().to_str().unwrap().to_string();
    let mut s = spec(&ds.dataset_id, 1.0);
    s.base_model = "corrupt".into();
    let e = a.jobs.create(s.clone()).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && !e.message().contains(&root), "{e:?}");
    s.base_model = "hollow".into();
    let job = a.jobs.create(s).await.unwrap().into_inner();
    assert!(!job.spec_json.contains(&root), "{}", job.spec_json);
    let mut stream = a.jobs.watch(pb::WatchJobRequest { job_id: job.job_id.clone(), after_seq: 0 }).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    let failed = a.jobs.get(pb::GetJobRequest { job_id: job.job_id }).await.unwrap().into_inner();
    assert_eq!(failed.state, pb::JobState::Failed as i32);
    assert!(failed.reason.contains("model.safetensors") && !failed.reason.contains(&root), "{}", failed.reason);
    d.stop().await;
}
