//! Budgets follow the person, through the real server: the same notes registered again as other
//! bytes keep their spend; a dataset of other people keeps its own budget; a 10 % overlap is
//! admitted only up to what those 10 % have left; user-level units match by user id; tenants
//! never share identities; a record repeated in one file is refused.

use crate::daemon::{client, notes, spec, Client, Daemon};
use ewtune::api::pb;
use tonic::Code;

/// The lines of a JSONL file.
fn lines(content: &[u8]) -> Vec<String> {
    String::from_utf8(content.to_vec()).unwrap().lines().map(str::to_string).collect()
}

/// `lines` as another file of the same records: reversed, each re-serialised with its fields
/// reordered, an extra field and other whitespace, and a trailing blank line.
fn reformatted(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .rev()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{{ \"source\": \"export-2\",  \"text\":  {} }}", serde_json::to_string(&v["text"].as_str().unwrap().replace(' ', "  ")).unwrap())
        })
        .collect()
}

fn jsonl(lines: &[String]) -> Vec<u8> {
    format!("{}\n\n", lines.join("\n")).into_bytes()
}

/// New notes, distinct from any `write_notes` line.
fn other_people(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| serde_json::json!({ "text": format!("Resident {tag}-{i} reports a sprained wrist.") }).to_string()).collect()
}

async fn register(c: &mut Client, name: &str, content: Vec<u8>, budget: f64) -> Result<pb::Dataset, tonic::Status> {
    c.datasets
        .register(pb::RegisterDatasetRequest { name: name.into(), content, budget_epsilon: budget, budget_delta: 1e-5, ..Default::default() })
        .await
        .map(|r| r.into_inner())
}

/// A job at `epsilon` over 60 steps: long enough that two jobs at 6 compose to more than 8 (over
/// a few steps, composition of large per-step losses can stay under 8).
fn long_spec(dataset: &str, epsilon: f64) -> pb::JobSpec {
    pb::JobSpec { steps: 60, ..spec(dataset, epsilon) }
}

async fn create(c: &mut Client, dataset: &str, epsilon: f64) -> Result<pb::Job, tonic::Status> {
    c.jobs.create(long_spec(dataset, epsilon)).await.map(|r| r.into_inner())
}

/// The largest target epsilon a refusal quotes.
fn quoted(status: &tonic::Status) -> f64 {
    let m = status.message();
    let at = m.find("largest target epsilon").unwrap_or_else(|| panic!("no target quoted: {m}"));
    m[at..].rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{m}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_follows_the_person() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("clinic").unwrap();
    let mut c = client(&d.addr, &token).await;

    // The scenario: 400 notes at budget 8, a job at 6; the same notes shuffled and
    // reformatted plus 20 new ones and a trailing newline, with another budget of 8.
    let original = notes(400, 1);
    let first = register(&mut c, "notes", original.clone(), 8.0).await.unwrap();
    assert_eq!((first.units_shared, first.unit_identities.as_str()), (0, "identified"));
    create(&mut c, &first.dataset_id, 6.0).await.unwrap();
    let mut again_lines = reformatted(&lines(&original));
    again_lines.extend(other_people(20, "new"));
    let again = register(&mut c, "notes again", jsonl(&again_lines), 8.0).await.unwrap();
    assert_ne!(again.dataset_id, first.dataset_id, "other bytes");
    assert_eq!((again.units, again.units_shared), (420, 400), "Register says how many units were known");
    assert!((1.9..2.1).contains(&again.shared_units_remaining_epsilon), "{}", again.shared_units_remaining_epsilon);
    let refused = create(&mut c, &again.dataset_id, 6.0).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("400 of the 420 privacy units"), "{}", refused.message());
    let target = quoted(&refused);
    assert!(target > 0.1 && target < 6.0, "{target}");
    create(&mut c, &again.dataset_id, target).await.unwrap();
    let report = c.budget.get(pb::GetBudgetRequest { dataset_id: again.dataset_id.clone(), charts: false }).await.unwrap().into_inner();
    let classes: Vec<(u64, usize)> = report.classes.iter().map(|k| (k.units, k.dataset_ids.len())).collect();
    assert_eq!(classes, [(400, 2), (20, 1)]);
    assert!(report.remaining_epsilon < 0.1, "{}", report.remaining_epsilon);
    let json: serde_json::Value = serde_json::from_str(&report.report_json).unwrap();
    assert_eq!(json["jobs"].as_array().unwrap().len(), 2, "both jobs spend the 400");
    assert_eq!(json["classes"][0]["units"], 400);

    // A dataset of other people keeps its own budget.
    let others = register(&mut c, "others", jsonl(&other_people(400, "ward-b")), 8.0).await.unwrap();
    assert_eq!(others.units_shared, 0);
    create(&mut c, &others.dataset_id, 6.0).await.unwrap();

    // 10 % of the others again, with 360 new people: admitted only up to what the 40 have left.
    let mut tenth = other_people(400, "ward-b")[..40].to_vec();
    tenth.extend(other_people(360, "ward-c"));
    let tenth = register(&mut c, "tenth", jsonl(&tenth), 8.0).await.unwrap();
    assert_eq!(tenth.units_shared, 40);
    let refused = create(&mut c, &tenth.dataset_id, 6.0).await.unwrap_err();
    assert!(refused.message().contains("40 of the 400 privacy units"), "{}", refused.message());
    let target = quoted(&refused);
    create(&mut c, &tenth.dataset_id, target).await.unwrap();
    let report = c.budget.get(pb::GetBudgetRequest { dataset_id: tenth.dataset_id.clone(), charts: false }).await.unwrap().into_inner();
    assert_eq!(report.classes.iter().map(|k| k.units).collect::<Vec<_>>(), [40, 360]);
    assert!(report.classes[1].remaining_epsilon > 8.0 - target - 1e-9, "the 360 new people spent only this job");

    // Another tenant's identical notes are other people: their own budget, no shared units.
    let other_token = d.state.store.create_token("hospice").unwrap();
    let mut o = client(&d.addr, &other_token).await;
    let theirs = register(&mut o, "notes", original.clone(), 8.0).await.unwrap();
    assert_eq!(theirs.units_shared, 0);
    create(&mut o, &theirs.dataset_id, 6.0).await.unwrap();
    // Get says the same as Register did; List leaves the overlap out.
    let got = c.datasets.get(pb::GetDatasetRequest { dataset_id: again.dataset_id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.units_shared, 400);

    // `budget show` prints labelled figures and aligned tables of the classes and the jobs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ewtune")).args(["budget", "show", &again.dataset_id, "--addr", &d.addr]).env("EWTUNE_TOKEN", &token).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success() && text.contains(" issued 20") && text.contains("left for the worst-off"), "{text}");
    let tables: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    assert!(tables.iter().any(|l| l.contains("| units ")) && tables.iter().any(|l| l.contains("epsilon spent")), "{text}");
    for width in [tables[0].chars().count(), tables[tables.len() - 1].chars().count()] {
        let rows = tables.iter().filter(|l| l.chars().count() == width).count();
        assert!(rows >= 3, "every row of a table is as wide as its header: {text}");
    }

    // A record repeated in one example-level file is refused, naming both lines.
    let mut repeated = lines(&notes(30, 5));
    repeated.push(repeated[3].replace("\"text\":", "\"text\" :"));
    let e = register(&mut c, "repeats", jsonl(&repeated), 8.0).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("line 31 repeats the record of line 4"), "{}", e.message());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_level_units_match_by_user_id() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("support").unwrap();
    let mut c = client(&d.addr, &token).await;
    let tickets = |users: std::ops::Range<u32>, words: &str| -> Vec<u8> {
        let lines: Vec<String> = users
            .flat_map(|u| (0..3).map(move |k| serde_json::json!({ "customer": format!("c{u}"), "text": format!("Ticket {k} of c{u}: {words}") }).to_string()))
            .collect();
        jsonl(&lines)
    };
    let register_users = |content: Vec<u8>| pb::RegisterDatasetRequest {
        name: "tickets".into(),
        content,
        privacy_unit: pb::PrivacyUnit::User as i32,
        user_field: "customer".into(),
        budget_epsilon: 8.0,
        budget_delta: 1e-5,
    };
    let a = c.datasets.register(register_users(tickets(0..200, "printer jams"))).await.unwrap().into_inner();
    assert_eq!(a.units, 200);
    c.jobs.create(pb::JobSpec { batch_size: 20, ..long_spec(&a.dataset_id, 6.0) }).await.unwrap();
    // Other words, some of the same customers: the budget follows them.
    let b = c.datasets.register(register_users(tickets(150..350, "login fails"))).await.unwrap().into_inner();
    assert_eq!((b.units, b.units_shared), (200, 50));
    let refused = c.jobs.create(pb::JobSpec { batch_size: 20, ..long_spec(&b.dataset_id, 6.0) }).await.unwrap_err();
    assert!(refused.message().contains("50 of the 200 privacy units"), "{}", refused.message());
    // The same texts as example-level units are other identities than users.
    let same_records = [tickets(0..200, "printer jams"), b"\n".to_vec()].concat();
    let e = c.datasets.register(pb::RegisterDatasetRequest { name: "flat".into(), content: same_records, budget_epsilon: 8.0, budget_delta: 1e-5, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(e.units_shared, 0);
    d.stop().await;
}

/// A data directory from before identities (schema 4): at start-up the daemon gives the units of
/// a dataset whose file is there their identities (and a later registration of the same people
/// is linked to its spend); a dataset whose file is gone is refused, naming the fix, and its
/// spend counts against every other dataset of the tenant until the file is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_identifies_old_datasets_from_their_files() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir_all(data.join("datasets")).unwrap();
    let kept = notes(300, 21);
    let lost = jsonl(&other_people(300, "lost"));
    let (kept_id, lost_id) = (ewtune::digest::sha256_hex(&kept), ewtune::digest::sha256_hex(&lost));
    std::fs::write(data.join("datasets").join(format!("{kept_id}.jsonl")), &kept).unwrap();
    {
        // What a schema-4 daemon left: the tenant, both datasets and a finished job on each.
        let db = rusqlite::Connection::open(data.join("ewtune.db")).unwrap();
        for sql in [
            include_str!("../src/store/migrations/0001_init.sql"),
            include_str!("../src/store/migrations/0002_audits.sql"),
            include_str!("../src/store/migrations/0003_hardening.sql"),
            include_str!("../src/store/migrations/0004_outputs.sql"),
        ] {
            db.execute_batch(sql).unwrap();
        }
        db.pragma_update(None, "user_version", 4).unwrap();
        db.execute("INSERT INTO tenants (name, created_at_ms) VALUES ('clinic', 0)", []).unwrap();
        for (i, id) in [&kept_id, &lost_id].into_iter().enumerate() {
            db.execute(
                "INSERT INTO datasets (tenant, sha256, name, path, units, privacy_unit, budget_epsilon, budget_delta, created_at_ms) VALUES ('clinic', ?1, 'old', 'x', 300, 'example', 8.0, 1e-5, 0)",
                [id],
            )
            .unwrap();
            db.execute(
                "INSERT INTO jobs (id, tenant, dataset, spec_json, noise_multiplier, sample_rate, steps_planned, steps_done, state, created_at_ms) VALUES (?1, 'clinic', ?2, '{}', 0.8, 0.1, 60, 60, 'succeeded', 0)",
                rusqlite::params![format!("{i}").repeat(32), id],
            )
            .unwrap();
        }
    }
    let d = Daemon::start_in(root).await;
    let token = d.state.store.create_token("clinic").unwrap();
    let mut c = client(&d.addr, &token).await;
    let get = |id: &str| pb::GetDatasetRequest { dataset_id: id.to_string() };
    let kept_now = c.datasets.get(get(&kept_id)).await.unwrap().into_inner();
    let lost_now = c.datasets.get(get(&lost_id)).await.unwrap().into_inner();
    assert_eq!((kept_now.unit_identities.as_str(), lost_now.unit_identities.as_str()), ("identified", "unidentified"));
    let refused = create(&mut c, &lost_id, 1.0).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("put the file back"), "{}", refused.message());

    // The lost dataset's spend counts against the kept one's people (never assumed disjoint).
    let both = c.budget.get(pb::GetBudgetRequest { dataset_id: kept_id.clone(), charts: false }).await.unwrap().into_inner();
    assert_eq!(both.classes.len(), 1);
    assert_eq!(both.classes[0].dataset_ids.len(), 2, "{:?}", both.classes);
    // The kept notes again, as other bytes: linked to their old spend.
    let again = register(&mut c, "kept again", jsonl(&reformatted(&lines(&kept))), 8.0).await.unwrap();
    assert_eq!(again.units_shared, 300);
    let kept_alone = ewtune::accountant::pld::PldAccountant::default()
        .epsilon(&ewtune::accountant::History::homogeneous(0.8, 0.1, 60).unwrap(), 1e-5)
        .unwrap()
        .bounds
        .upper;
    assert!(both.spent_epsilon > kept_alone, "both old jobs count: {} vs one {kept_alone}", both.spent_epsilon);
    d.stop().await;
}

/// Plan answers admit or refuse against the live ledger, and Create agrees on the same spec;
/// an admitted plan says what it would leave and the largest target that would still fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_create_agree() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("clinic").unwrap();
    let mut c = client(&d.addr, &token).await;
    let ds = register(&mut c, "notes", notes(400, 3), 8.0).await.unwrap();
    let mut decisions = Vec::new();
    for target in [3.0, 5.0, 4.0, 6.0, 2.0, 1.0] {
        let plan = c.jobs.plan(long_spec(&ds.dataset_id, target)).await.unwrap().into_inner();
        let created = create(&mut c, &ds.dataset_id, target).await;
        assert_eq!(plan.admitted, created.is_ok(), "target {target}: plan {plan:?}, create {created:?}");
        if plan.admitted {
            assert!(plan.largest_admissible_epsilon >= target * 0.99, "{plan:?}");
            let after = c.budget.get(pb::GetBudgetRequest { dataset_id: ds.dataset_id.clone(), charts: false }).await.unwrap().into_inner();
            assert!((after.remaining_epsilon - plan.remaining_epsilon_after).abs() < 1e-9, "{} vs {}", after.remaining_epsilon, plan.remaining_epsilon_after);
        } else {
            assert_eq!(plan.remaining_epsilon_after, 0.0);
            assert_eq!(plan.refusal, created.unwrap_err().message());
            assert!(plan.largest_admissible_epsilon < target);
        }
        decisions.push(plan.admitted);
    }
    assert!(decisions.contains(&true) && decisions.contains(&false), "{decisions:?}");

    // The CLI shows what is left on list and get, as Budget.Get states it, and gets a job.
    let report = c.budget.get(pb::GetBudgetRequest { dataset_id: ds.dataset_id.clone(), charts: false }).await.unwrap().into_inner();
    let cli = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ewtune")).args(args).args(["--addr", &d.addr, "--json"]).env("EWTUNE_TOKEN", &token).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let listed = cli(&["datasets", "list"]);
    assert_eq!(listed[0]["remaining_epsilon"].as_f64(), Some(report.remaining_epsilon));
    let got = cli(&["datasets", "get", &ds.dataset_id]);
    assert_eq!((got["remaining_epsilon"].as_f64(), got["unit_identities"].as_str()), (Some(report.remaining_epsilon), Some("identified")));
    let job = c.jobs.list(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.remove(0);
    let shown = cli(&["jobs", "get", &job.job_id]);
    assert_eq!((shown["job_id"].as_str(), shown["steps_planned"].as_u64()), (Some(job.job_id.as_str()), Some(60)));
    d.stop().await;
}
