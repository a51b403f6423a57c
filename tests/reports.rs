//! Report trust and credentials through the real binaries against a real daemon (loopback gRPC,
//! a real SQLite file): `ewtuned key show` prints the key that signs Budget.Get; `ewtune verify`
//! exits 0 only for the pinned signer, 3 when nothing is pinned, 2 for another signer or bad hex
//! (never a panic); budget reports carry tenant, dataset, issue time and an increasing sequence
//! number; `ewtuned token revoke` locks a token out of the running daemon at once.

use crate::util::authed;
use crate::daemon::Daemon;
use ewtune::api::pb;
use ewtune::service::signing::{self, SignedReport, Signer};
use ewtune::store::TokenId;
use std::path::Path;
use std::process::{Command, Output};
use tonic::transport::Channel;
use tonic::Code;

/// Runs `bin` with `args` (and no inherited `EWTUNE_PUBLIC_KEY`).
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("EWTUNE_PUBLIC_KEY").env_remove("EWTUNE_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ewtuned(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_ewtuned"), args, &[])
}

fn ewtune(args: &[&str], env: &[(&str, &str)]) -> Output {
    run(env!("CARGO_BIN_EXE_ewtune"), args, env)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data_dir(d: &Daemon) -> String {
    d.state.config.data_dir.to_str().unwrap().to_string()
}

/// A token from `ewtuned token create`, checking that it printed the token's id on stderr.
fn create_token(d: &Daemon, tenant: &str) -> String {
    let out = ewtuned(&["token", "create", "--data-dir", &data_dir(d), "--tenant", tenant]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("ewt_"), "stdout is the token alone: {token:?}");
    assert!(stderr(&out).contains(TokenId::of(&token).as_str()), "{}", stderr(&out));
    token
}

async fn channel(d: &Daemon) -> Channel {
    Channel::from_shared(d.addr.clone()).unwrap().connect().await.unwrap()
}

async fn register(ch: &Channel, token: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.jsonl");
    ewtune::train::synthetic::write_notes(&notes, 50, 0, 3).unwrap();
    let req = pb::RegisterDatasetRequest {
        name: "notes".into(),
        content: std::fs::read(&notes).unwrap(),
        privacy_unit: pb::PrivacyUnit::Example as i32,
        budget_epsilon: 4.0,
        budget_delta: 1e-5,
        ..Default::default()
    };
    pb::datasets_client::DatasetsClient::new(ch.clone()).register(authed(token, req)).await.unwrap().into_inner().dataset_id
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_trusts_only_the_pinned_daemon_key() {
    let d = Daemon::start().await;
    let token = create_token(&d, "clinic");
    let ch = channel(&d).await;
    let dataset = register(&ch, &token).await;

    // Two reports in a row: numbered 1 and 2, saying whose, which and when.
    let mut budget = pb::budget_client::BudgetClient::new(ch.clone());
    let before = now_ms();
    let r1 = budget.get(authed(&token, pb::GetBudgetRequest { dataset_id: dataset.clone(), charts: false })).await.unwrap().into_inner();
    let r2 = budget.get(authed(&token, pb::GetBudgetRequest { dataset_id: dataset.clone(), charts: false })).await.unwrap().into_inner();
    let after = now_ms();
    let j1: serde_json::Value = serde_json::from_str(&r1.report_json).unwrap();
    let j2: serde_json::Value = serde_json::from_str(&r2.report_json).unwrap();
    for j in [&j1, &j2] {
        assert_eq!((j["tenant"].as_str(), j["dataset"].as_str()), (Some("clinic"), Some(dataset.as_str())), "{j}");
        let at = j["issued_at_unix_ms"].as_i64().unwrap();
        assert!((before..=after).contains(&at), "{before} <= {at} <= {after}");
    }
    assert_eq!((j1["sequence"].as_u64(), j2["sequence"].as_u64()), (Some(1), Some(2)));
    assert!(j1["issued_at_unix_ms"].as_i64() <= j2["issued_at_unix_ms"].as_i64());

    // `ewtuned key show` prints the key Budget.Get signs with, and creates none where there is none.
    let shown = ewtuned(&["key", "show", "--data-dir", &data_dir(&d)]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let key = stdout(&shown).trim().to_string();
    assert_eq!(key, ewtune::digest::hex(&r1.public_key));
    let empty = tempfile::tempdir().unwrap();
    let none = ewtuned(&["key", "show", "--data-dir", empty.path().to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(2));
    assert!(stderr(&none).contains("no signing key"), "{}", stderr(&none));
    assert!(std::fs::read_dir(empty.path()).unwrap().next().is_none(), "key show wrote into the data dir");

    // The CLI saves report 3; verify it every way.
    let saved = ewtune(&["budget", "show", &dataset, "--json", "--addr", &d.addr], &[("EWTUNE_TOKEN", &token)]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("report.json");
    std::fs::write(&file, stdout(&saved)).unwrap();
    let file = file.to_str().unwrap();

    let pinned = ewtune(&["verify", file, "--public-key", &key], &[]);
    assert_eq!(pinned.status.code(), Some(0), "{}{}", stdout(&pinned), stderr(&pinned));
    let text = stdout(&pinned);
    assert!(text.starts_with("OK"), "{text}");
    for expected in [key.as_str(), "tenant      clinic", &format!("dataset     {dataset}"), "sequence    3", "issued_at   20"] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    let upper = ewtune(&["verify", file, "--public-key", &key.to_uppercase()], &[]);
    assert_eq!(upper.status.code(), Some(0), "{}", stderr(&upper));
    let by_env = ewtune(&["verify", file], &[("EWTUNE_PUBLIC_KEY", &key)]);
    assert_eq!(by_env.status.code(), Some(0), "{}", stderr(&by_env));

    let unpinned = ewtune(&["verify", file], &[]);
    assert_eq!(unpinned.status.code(), Some(3), "{}", stderr(&unpinned));
    assert!(stdout(&unpinned).contains("signer is NOT verified"), "{}", stdout(&unpinned));
    assert!(stdout(&unpinned).contains("sequence    3"), "{}", stdout(&unpinned));

    // Another daemon's key (generated as a daemon generates its own) is refused.
    let other_dir = tempfile::tempdir().unwrap();
    Signer::load_or_create(&signing::key_path(other_dir.path())).unwrap();
    let other = ewtuned(&["key", "show", "--data-dir", other_dir.path().to_str().unwrap()]);
    let other_key = stdout(&other).trim().to_string();
    assert_eq!(other_key.len(), 64);
    assert_ne!(other_key, key);
    let refused = ewtune(&["verify", file, "--public-key", &other_key], &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("not by the pinned key"), "{}", stderr(&refused));
    let env_refused = ewtune(&["verify", file], &[("EWTUNE_PUBLIC_KEY", &other_key)]);
    assert_eq!(env_refused.status.code(), Some(2));

    // Malformed pins: non-ASCII, odd length, too short, not hex: a clear error, exit 2, no panic.
    let non_ascii = format!("é{}", &key[2..]);
    for bad in [non_ascii.as_str(), &key[1..], &key[..62], "zz"] {
        let out = ewtune(&["verify", file, "--public-key", bad], &[]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("the pinned public key") && !err.contains("panicked"), "{bad:?}: {err}");
    }

    // A report whose bytes were changed (a replay dressed up as a newer one), or whose
    // signature holds a non-ASCII character, fails.
    let signed: SignedReport = serde_json::from_str(&stdout(&saved)).unwrap();
    let cases = [
        ("renumbered", SignedReport { report_json: signed.report_json.replace("\"sequence\":3", "\"sequence\":9"), ..signed.clone() }),
        ("non-ASCII signature", SignedReport { signature: format!("ü{}", &signed.signature[2..]), ..signed.clone() }),
        ("odd signature", SignedReport { signature: signed.signature[1..].to_string(), ..signed.clone() }),
    ];
    for (what, case) in cases {
        assert_ne!(case, signed, "{what}");
        let path = files.path().join("case.json");
        std::fs::write(&path, serde_json::to_string(&case).unwrap()).unwrap();
        let out = ewtune(&["verify", path.to_str().unwrap(), "--public-key", &key], &[]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stdout(&out));
        assert!(!stderr(&out).contains("panicked"), "{what}: {}", stderr(&out));
    }

    let help = ewtune(&["verify", "--help"], &[]);
    assert!(stdout(&help).contains("Exit codes") && stdout(&help).contains("EWTUNE_PUBLIC_KEY"), "{}", stdout(&help));
    d.stop().await;
}

/// The lines of `ewtuned token list`, after its header.
fn token_list(data: &str, tenant: Option<&str>) -> Vec<String> {
    let mut args = vec!["token", "list", "--data-dir", data];
    if let Some(t) = tenant {
        args.extend(["--tenant", t]);
    }
    let out = ewtuned(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().skip(1).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_the_running_daemon() {
    let d = Daemon::start().await;
    let data = data_dir(&d);
    let alice = create_token(&d, "alice");
    let alice2 = create_token(&d, "alice");
    let bob = create_token(&d, "bob");
    let ch = channel(&d).await;
    let mut datasets = pb::datasets_client::DatasetsClient::new(ch.clone());
    let list = |token: &str| authed(token, pb::ListDatasetsRequest::default());
    for t in [&alice, &alice2, &bob] {
        datasets.list(list(t)).await.unwrap();
    }

    // The list names ids, tenants and times, never a token.
    let rows = token_list(&data, None);
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, (token, tenant)) in rows.iter().zip([(&alice, "alice"), (&alice2, "alice"), (&bob, "bob")]) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!((cols[0], cols[1], cols[3]), (TokenId::of(token).as_str(), tenant, "-"), "{row}");
        assert!(!row.contains(&token[4..]), "a token was printed: {row}");
    }
    assert_eq!(token_list(&data, Some("bob")).len(), 1);

    // Revoked in another process; the running daemon refuses it on the next call.
    let id = TokenId::of(&alice);
    let revoked = ewtuned(&["token", "revoke", "--data-dir", &data, id.as_str()]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(stdout(&revoked).contains(&format!("token {id} of tenant alice revoked at 20")), "{}", stdout(&revoked));
    let err = datasets.list(list(&alice)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    datasets.list(list(&alice2)).await.unwrap();
    datasets.list(list(&bob)).await.unwrap();
    let rows = token_list(&data, Some("alice"));
    assert!(rows[0].starts_with(id.as_str()) && rows[0].trim_end().ends_with('Z'), "revoked time shown: {rows:?}");
    assert!(rows[1].trim_end().ends_with('-'), "{rows:?}");

    // Again: nothing changes. Unknown and malformed ids are clear errors.
    let again = ewtuned(&["token", "revoke", "--data-dir", &data, id.as_str()]);
    assert!(again.status.success() && stdout(&again).contains("already revoked"), "{}", stdout(&again));
    let unknown = ewtuned(&["token", "revoke", "--data-dir", &data, "ffffffffffff"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("not found"), "{}", stderr(&unknown));
    let malformed = ewtuned(&["token", "revoke", "--data-dir", &data, "ewt_xyz"]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(stderr(&malformed).contains("token id"), "{}", stderr(&malformed));
    assert_eq!(datasets.list(list(&alice)).await.unwrap_err().code(), Code::Unauthenticated);
    assert!(Path::new(&data).join("ewtune.db").exists());
    d.stop().await;
}
