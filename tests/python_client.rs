//! The Python grpcio client in examples/ against a daemon this test starts: it learns the API by
//! server reflection (no .proto files), registers, plans, submits a job with canaries, watches,
//! gets refused on an overspend, reads the signed budget report and audits the model.

use crate::daemon::Daemon;
use ewtune::train::synthetic::write_notes;
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_runs_the_whole_flow() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("python").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.jsonl");
    write_notes(&notes, 200, 0, 3).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "scripts/setup.sh makes the venv with grpcio (requirements-ci.txt)");
    let addr = d.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(root.join("examples/python_client.py"))
            .args([&addr, notes.to_str().unwrap(), "tiny"])
            .env("EWTUNE_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("job succeeded") && stdout.contains("overspend refused") && stdout.contains("budget report") && stdout.contains("empirical epsilon lower bound"), "{stdout}");
    d.stop().await;
}
