//! What people see on a terminal, on a real pseudo-terminal (tests/python/pty_run.py): `ewtune
//! train` states its plan, then each phase, then a bar with the step count; `ewtune jobs watch`
//! draws a bar with the job's total, rate and time left, and leaves it full at the end; `ewtune
//! audits create` shows how far the scoring has got. The same commands in a pipe print lines and
//! no escape code (here, tests/train.rs, tests/outputs.rs).

use crate::daemon::{client, notes, register, spec, Daemon};
use ewtune::api::pb;
use std::path::Path;
use std::process::Command;

/// `ewtune ARGS` on a 120 x 40 pseudo-terminal with `env`: everything it wrote there, and
/// whether it succeeded.
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> (String, bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(root.join(".venv/bin/python"));
    cmd.arg(root.join("tests/python/pty_run.py")).arg(env!("CARGO_BIN_EXE_ewtune")).args(args).env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::block_in_place(|| cmd.output().unwrap());
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.success())
}

#[test]
fn train_on_a_terminal_states_its_plan_and_phases_then_draws_a_bar() {
    let root = crate::train::setup(ewtune::train::synthetic::Family::Gpt2);
    let config = root.path().join("job.toml");
    std::fs::write(
        &config,
        "model = \"base\"\ndata = \"train.jsonl\"\noutput = \"out\"\ndevice = \"cpu\"\n[finetune]\nmode = \"lora\"\nrank = 4\nalpha = 8\n\
         [privacy]\nepsilon = 4.0\ndelta = 1e-5\n[training]\nbatch_size = 64\nsteps = 6\nmicro_batch = 32\ncheckpoint_every = 3\n[data_format]\nmax_length = 40\n",
    )
    .unwrap();
    let (screen, ok) = on_a_terminal(&["train", "--config", config.to_str().unwrap()], &[]);
    assert!(ok, "{screen}");
    let at = |s: &str| screen.find(s).unwrap_or_else(|| panic!("{s:?} not on the terminal:\n{screen}"));
    // The plan comes before the model is loaded and before any step.
    assert!(at("calibrating the noise") < at("plan: privacy units N = 600") && at("plan: privacy units N = 600") < at("loading the model..."), "{screen}");
    assert!(screen.contains("certified epsilon 4.0") || screen.contains("certified epsilon 3.9"), "{screen}");
    assert!(screen.contains("Edgeworth estimate"), "{screen}");
    // The bar: total steps, rate, the certified epsilon, and it is left full.
    assert!(screen.contains("6/6 steps") && screen.contains("/s  eta") && screen.contains("(certified)"), "{screen}");
    assert!(screen.contains('\x1b'), "a terminal gets a drawn bar: {screen}");
    assert!(at("loading the model...") < at("6/6 steps") && at("6/6 steps") < at("model written to"), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_a_terminal_draws_the_jobs_bar_with_its_total() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("clinic").unwrap();
    let mut c = client(&d.addr, &token).await;
    let ds = register(&mut c, 8.0).await;
    let mut s = spec(&ds.dataset_id, 2.0);
    s.steps = 12;
    let job = c.jobs.create(s).await.unwrap().into_inner();
    let env = [("EWTUNE_ADDR", d.addr.as_str()), ("EWTUNE_TOKEN", token.as_str())];
    let (screen, ok) = on_a_terminal(&["jobs", "watch", &job.job_id], &env);
    assert!(ok, "{screen}");
    assert!(screen.contains("12/12 steps") && screen.contains("ETA") && screen.contains("(certified)"), "{screen}");
    assert!(!screen.contains("/0 steps"), "the total is known from the start: {screen}");
    assert!(screen.contains("admitted: 12 steps"), "events above the bar in words: {screen}");
    assert!(screen.contains(&format!("job {} succeeded: 12/12 steps", job.job_id)), "{screen}");
    // The same on a pipe: lines, no escape code.
    let pipe = tokio::task::block_in_place(|| Command::new(env!("CARGO_BIN_EXE_ewtune")).args(["jobs", "watch", &job.job_id]).envs(env).output().unwrap());
    let text = format!("{}{}", String::from_utf8_lossy(&pipe.stdout), String::from_utf8_lossy(&pipe.stderr));
    assert!(pipe.status.success() && text.contains("/12: certified epsilon spent") && !text.contains('\x1b'), "{text}");
    assert!(!text.contains("{\""), "no raw payloads: {text}");
    // Refusals in words, not gRPC code names.
    let missing = tokio::task::block_in_place(|| Command::new(env!("CARGO_BIN_EXE_ewtune")).args(["jobs", "get", &"0".repeat(32)]).envs(env).output().unwrap());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(missing.status.code() == Some(2) && err.starts_with("error: not found: "), "{err}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_show_how_far_their_scoring_has_got() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("clinic").unwrap();
    let mut c = client(&d.addr, &token).await;
    let ds = register(&mut c, 8.0).await;
    let mut s = spec(&ds.dataset_id, 2.0);
    s.canaries = Some(pb::CanaryConfig { count: 200, length: 16 });
    let job = c.jobs.create(s).await.unwrap().into_inner();
    let mut stream = c.jobs.watch(pb::WatchJobRequest { job_id: job.job_id.clone(), after_seq: 0 }).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    // Enough texts that the scoring lasts a few of the CLI's polls.
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.jsonl");
    let line = |t: &str, label: u8| format!("{}\n", serde_json::json!({ "input": t, "label": label }));
    let members: String = String::from_utf8(notes(400, 1)).unwrap().lines().map(|t| line(t, 1)).collect();
    let others: String = String::from_utf8(notes(2600, 9)).unwrap().lines().map(|t| line(t, 0)).collect();
    std::fs::write(&texts, members + &others).unwrap();
    let env = [("EWTUNE_ADDR", d.addr.as_str()), ("EWTUNE_TOKEN", token.as_str())];
    let args = ["audits", "create", "--job", &job.job_id, "--texts", texts.to_str().unwrap()];
    let (screen, ok) = on_a_terminal(&args, &env);
    assert!(ok, "{screen}");
    assert!(screen.contains("(sequence, model) pairs") && screen.contains("/9400"), "3000 texts x 3 + 200 canaries x 2 scorings: {screen}");
    assert!(screen.contains("3000 texts, 3 scorings each, and 200 canaries, 2 each"), "{screen}");
    assert!(screen.contains("empirical epsilon lower bound"), "the report follows: {screen}");
    // On a pipe: a line at every tenth, no escape code.
    let pipe = tokio::task::block_in_place(|| Command::new(env!("CARGO_BIN_EXE_ewtune")).args(args).envs(env).output().unwrap());
    let err = String::from_utf8_lossy(&pipe.stderr);
    assert!(pipe.status.success() && err.contains("scorings done (3000 texts") && !err.contains('\x1b'), "{err}");
    d.stop().await;
}

/// The command names people type: `score` (local) and `audits` (the daemon's) cannot be confused,
/// `audit` is a hidden alias, and the shells' completions know every command.
#[test]
fn commands_have_distinct_names_and_shell_completions() {
    let ewtune = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_ewtune")).args(args).output().unwrap();
    let help = String::from_utf8(ewtune(&["--help"]).stdout).unwrap();
    let commands: Vec<&str> = help.lines().filter_map(|l| l.strip_prefix("  ")).filter_map(|l| l.split_whitespace().next()).collect();
    assert!(commands.contains(&"score") && commands.contains(&"audits") && !commands.contains(&"audit"), "{help}");
    for shell in ["bash", "zsh", "fish"] {
        let out = ewtune(&["completions", shell]);
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success() && ["score", "audits", "verify", "--html", "completions"].iter().all(|w| script.contains(w)), "{shell}: {script}");
    }
    let bash = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bash.path(), ewtune(&["completions", "bash"]).stdout).unwrap();
    let checked = Command::new("bash").arg("-n").arg(bash.path()).output().unwrap();
    assert!(checked.status.success(), "bash -n: {}", String::from_utf8_lossy(&checked.stderr));
}
