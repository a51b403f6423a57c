//! The report pages, from a real daemon's signed reports to a real browser: the CLI writes them
//! (`budget show --html`, `audits get --html`), `ewtune verify PAGE.html` checks the embedded
//! report and redraws the same page, the data behind the charts agrees with the report's own
//! numbers (and the ROC with its AUC), and headless Chromium (Debian's package, driven by
//! Playwright) lays every chart out with no console error and no request beyond the page.

use crate::daemon::{client, notes, register, spec, Daemon};
use ewtune::api::pb;
use ewtune::service::signing::SignedReport;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `ewtune ARGS` against the daemon, as the tenant of `token`.
fn ewtune(d: &Daemon, token: &str, args: &[&str]) -> std::process::Output {
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_ewtune")).args(args).env("EWTUNE_ADDR", &d.addr).env("EWTUNE_TOKEN", token).env_remove("EWTUNE_PUBLIC_KEY").output().unwrap()
    });
    assert!(out.status.success(), "ewtune {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// The browser: Debian's chromium, which scripts/test.sh installs when it is missing.
pub fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("headless Chromium is needed for the page tests: scripts/test.sh installs Debian's `chromium` package")
}

/// Renders `pages` in Chromium and returns what `tests/python/render_pages.py` measured.
pub fn render(pages: &[&Path], out: &Path) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("tests/python/render_pages.py")).arg(chromium()).arg(out).args(pages);
    let o = tokio::task::block_in_place(|| cmd.output().unwrap());
    assert!(o.status.success(), "render_pages.py: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every page rendered cleanly: no console message, no error, nothing fetched but itself, a
/// screenshot, and `min_svgs` charts, each the size it was drawn at, whose lines (and bars)
/// were laid out inside it with non-empty boxes.
pub fn assert_rendered(page: &serde_json::Value, min_svgs: usize) {
    let name = page["page"].as_str().unwrap();
    assert_eq!(page["console"].as_array().unwrap().len(), 0, "{name}: {}", page["console"]);
    assert_eq!(page["errors"].as_array().unwrap().len(), 0, "{name}: {}", page["errors"]);
    let requests = page["requests"].as_array().unwrap();
    assert!(requests.len() == 1 && requests[0].as_str().unwrap().ends_with(".html"), "{name} fetched more than itself: {requests:?}");
    let png = std::fs::read(page["png"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{name}: screenshot of {} bytes", png.len());
    let svgs = page["svgs"].as_array().unwrap();
    assert!(svgs.len() >= min_svgs, "{name}: {} charts", svgs.len());
    for (i, svg) in svgs.iter().enumerate() {
        let (w, h) = (svg["width"].as_f64().unwrap(), svg["height"].as_f64().unwrap());
        assert!(w > 300.0 && h > 150.0, "{name} chart {i} laid out at {w}x{h}");
        let inside = |b: &serde_json::Value| {
            let b: Vec<f64> = b.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            b[0] >= -1.0 && b[1] >= -1.0 && b[0] + b[2] <= w + 1.0 && b[1] + b[3] <= h + 1.0
        };
        let drawn = |key: &str| svg[key].as_array().unwrap().iter().filter(|b| b[2].as_f64().unwrap() > 0.0 || b[3].as_f64().unwrap() > 0.0).count();
        assert!(drawn("polylines") + drawn("rects") > 2, "{name} chart {i}: nothing drawn: {svg}");
        assert!(drawn("texts") >= 4, "{name} chart {i}: no title, axis or tick labels: {svg}");
        for key in ["polylines", "rects", "texts"] {
            assert!(svg[key].as_array().unwrap().iter().all(inside), "{name} chart {i}: a {key} element outside the chart");
        }
    }
}

/// `GET url` with curl (a real HTTP client), as the tenant of `token` when given (HTTP Basic, as
/// a browser sends it): the status, the headers and the body.
pub fn curl(url: &str, token: Option<&str>) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", body.to_str().unwrap(), "-D", headers.to_str().unwrap(), "-w", "%{http_code}", url]);
    if let Some(t) = token {
        cmd.args(["-u", &format!("reader:{t}")]);
    }
    let out = tokio::task::block_in_place(|| cmd.output().unwrap());
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (code, std::fs::read_to_string(headers).unwrap(), std::fs::read_to_string(body).unwrap_or_default())
}

/// The value of the first series `name` (with its labels) in a Prometheus scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
}

/// The area under a ROC given as `[fp, tp]` counts, by trapezoids: exactly the AUC with ties
/// counted 1/2 when no point was thinned out.
fn trapezoid_auc(points: &[serde_json::Value], members: f64, nonmembers: f64) -> f64 {
    let p: Vec<(f64, f64)> = points.iter().map(|pt| (pt[0].as_f64().unwrap(), pt[1].as_f64().unwrap())).collect();
    p.windows(2).map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0).sum::<f64>() / (members * nonmembers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_pages_carry_signed_chart_data_and_render_in_chromium() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("clinic").unwrap();
    let mut c = client(&d.addr, &token).await;
    let ds = register(&mut c, 8.0).await;
    let mut with_canaries = spec(&ds.dataset_id, 2.0);
    with_canaries.steps = 30;
    with_canaries.canaries = Some(pb::CanaryConfig { count: 200, length: 16 });
    let metrics = format!("http://{}/metrics", d.metrics_addr);
    let before = curl(&metrics, None).2;
    assert_eq!(sample(&before, "ewtune_training_steps_total"), Some(0.0), "{before}");
    let job = c.jobs.create(with_canaries).await.unwrap().into_inner();
    let second = c.jobs.create(spec(&ds.dataset_id, 1.0)).await.unwrap().into_inner();
    // Scraped while the first job trains: its steps, its rate and the dataset's spend move.
    let ds_labels = format!("{{dataset=\"{}\",tenant=\"clinic\"}}", ds.dataset_id);
    let mut during = String::new();
    for _ in 0..600 {
        during = curl(&metrics, None).2;
        if sample(&during, "ewtune_training_steps_total").unwrap() >= 5.0 && sample(&during, &format!("ewtune_job_steps_per_second{{job=\"{}\"}}", job.job_id)).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&during, "ewtune_jobs{state=\"running\"}"), Some(1.0), "{during}");
    assert_eq!(sample(&during, "ewtune_queue_depth"), Some(1.0), "the second job waits: {during}");
    assert!(sample(&during, &format!("ewtune_dataset_epsilon_spent{ds_labels}")).unwrap() > 0.0, "{during}");
    assert!(sample(&during, &format!("ewtune_job_steps_per_second{{job=\"{}\"}}", job.job_id)).unwrap() > 0.0, "{during}");
    assert!(sample(&during, "ewtune_api_request_duration_seconds_count{method=\"ewtune.v1.Jobs/Create\"}").unwrap() >= 2.0, "{during}");
    for j in [&job, &second] {
        let mut stream = c.jobs.watch(pb::WatchJobRequest { job_id: j.job_id.clone(), after_seq: 0 }).await.unwrap().into_inner();
        while stream.message().await.unwrap().is_some() {}
    }
    let lines = |b: Vec<u8>| String::from_utf8(b).unwrap().lines().map(str::to_string).collect::<Vec<_>>();
    let mut texts: Vec<pb::LabeledText> = lines(notes(400, 1))[..40].iter().map(|t| pb::LabeledText { input: t.clone(), member: true }).collect();
    texts.extend(lines(notes(40, 2)).into_iter().map(|t| pb::LabeledText { input: t, member: false }));
    let audit = c.audits.create(pb::CreateAuditRequest { job_id: job.job_id.clone(), texts, max_tokens: 0 }).await.unwrap().into_inner();

    let dir = tempfile::tempdir().unwrap();
    let (budget_html, audit_html) = (dir.path().join("budget.html"), dir.path().join("audit.html"));
    ewtune(&d, &token, &["budget", "show", &ds.dataset_id, "--html", budget_html.to_str().unwrap()]);
    ewtune(&d, &token, &["audits", "get", &audit.audit_id, "--html", audit_html.to_str().unwrap()]);

    let budget_page = std::fs::read_to_string(&budget_html).unwrap();
    assert!(budget_page.contains("<h2>Self-audits</h2>") && budget_page.contains("passed: canary noise"), "each job's self-audit is shown");
    // The embedded reports verify against the daemon's key and redraw into the same pages.
    let key = ewtune::digest::hex(&d.state.signer.public_key());
    for page in [&budget_html, &audit_html] {
        let redrawn = dir.path().join("redrawn.html");
        let out = ewtune(&d, &token, &["verify", page.to_str().unwrap(), "--public-key", &key, "--html", redrawn.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK:"), "{}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(std::fs::read(&redrawn).unwrap(), std::fs::read(page).unwrap(), "{}", page.display());
    }
    let tampered = dir.path().join("tampered.html");
    let original = std::fs::read_to_string(&budget_html).unwrap();
    let altered = original.replacen("\\\"budget_epsilon\\\":8.0", "\\\"budget_epsilon\\\":80.0", 1);
    assert_ne!(altered, original);
    std::fs::write(&tampered, altered).unwrap();
    let out = tokio::task::block_in_place(|| Command::new(env!("CARGO_BIN_EXE_ewtune")).args(["verify", tampered.to_str().unwrap()]).output().unwrap());
    assert_eq!(out.status.code(), Some(2), "a page whose report was altered fails: {}", String::from_utf8_lossy(&out.stderr));

    // After both jobs: every step counted, nothing running, the spend the report states.
    let after = curl(&metrics, None).2;
    assert_eq!(sample(&after, "ewtune_training_steps_total"), Some(38.0), "30 + 8 steps: {after}");
    let report_now: ewtune::store::BudgetReport = serde_json::from_str(&c.budget.get(pb::GetBudgetRequest { dataset_id: ds.dataset_id.clone(), charts: false }).await.unwrap().into_inner().report_json).unwrap();
    assert_eq!(sample(&after, &format!("ewtune_dataset_epsilon_spent{ds_labels}")), Some(report_now.spent_epsilon), "{after}");
    assert_eq!((sample(&after, "ewtune_jobs{state=\"succeeded\"}"), sample(&after, "ewtune_jobs{state=\"running\"}")), (Some(2.0), Some(0.0)), "{after}");
    assert!(!after.contains("ewtune_job_steps_per_second{"), "a finished job's rate is removed: {after}");
    assert_eq!(curl(&format!("http://{}/other", d.metrics_addr), None).0, 404);

    // The budget report's chart data agrees with the report's own numbers.
    let embedded = |page: &Path| -> SignedReport { ewtune::pages::embedded_report(&std::fs::read_to_string(page).unwrap()).unwrap().unwrap() };
    let report: ewtune::store::BudgetReport = serde_json::from_str(&embedded(&budget_html).report_json).unwrap();
    let charts = report.charts.as_ref().expect("--html asks for the charts' data");
    assert_eq!(charts.jobs.len(), 2);
    for (curve, row) in charts.jobs.iter().zip(&report.jobs) {
        assert_eq!(curve.job, row.job);
        let last = curve.points.last().unwrap();
        assert_eq!((last.step, curve.steps_done), (row.steps_planned, row.steps_done));
        assert_eq!(last.certified_upper, row.epsilon_alone, "the finished job's curve ends at its spent epsilon");
        assert!(curve.points.windows(2).all(|w| w[0].step < w[1].step && w[0].certified_upper <= w[1].certified_upper));
        assert!(curve.points.iter().all(|p| p.rdp >= p.certified_upper), "RDP is the looser bound");
    }
    let burn = &charts.burn_down;
    assert_eq!(burn.len(), 3, "registration, then each job");
    assert_eq!((burn[0].spent_epsilon, burn[0].remaining_epsilon), (0.0, 8.0));
    assert!(burn.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms && w[0].spent_epsilon < w[1].spent_epsilon));
    let end = burn.last().unwrap();
    assert!((end.spent_epsilon - report.spent_epsilon).abs() < 1e-9 * report.spent_epsilon, "{} vs {}", end.spent_epsilon, report.spent_epsilon);
    assert!((end.remaining_epsilon - report.remaining_epsilon).abs() < 1e-9 * report.budget_epsilon);

    // The audit report's ROC points give back its AUCs; the histograms count every canary.
    let audit_report: serde_json::Value = serde_json::from_str(&embedded(&audit_html).report_json).unwrap();
    for (name, m) in audit_report["data_mia"]["scores"].as_object().unwrap() {
        let roc = &m["roc"];
        let points = roc["points"].as_array().unwrap();
        assert_eq!((points[0].clone(), points.last().unwrap().clone()), (serde_json::json!([0, 0]), serde_json::json!([40, 40])), "{name}");
        let auc = trapezoid_auc(points, roc["members"].as_f64().unwrap(), roc["nonmembers"].as_f64().unwrap());
        assert!((auc - m["auc"].as_f64().unwrap()).abs() < 1e-12, "{name}: {auc} vs {}", m["auc"]);
    }
    let canary = &audit_report["canary_audit"];
    for (name, h) in canary["histograms"].as_object().unwrap() {
        let total = |k: &str| h[k].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum::<u64>();
        assert_eq!((total("inserted"), total("inserted") + total("held_out")), (canary["n_included"].as_u64().unwrap(), 200), "{name}");
    }

    // The daemon serves the same pages behind the tokens: a browser is asked for one, another
    // tenant's token finds nothing, the index links the tenant's reports.
    let pages = format!("http://{}", d.pages_addr);
    let (code, headers, _) = curl(&format!("{pages}/budget/{}", ds.dataset_id), None);
    assert!(code == 401 && headers.to_lowercase().contains("www-authenticate: basic"), "{code} {headers}");
    let rival = d.state.store.create_token("rival").unwrap();
    assert_eq!(curl(&format!("{pages}/budget/{}", ds.dataset_id), Some(&rival)).0, 404);
    assert_eq!(curl(&format!("{pages}/audits/{}", audit.audit_id), Some(&rival)).0, 404);
    assert_eq!(curl(&format!("{pages}/budget/{}", ds.dataset_id), Some("ewt_not-a-token")).0, 401);
    let (code, headers, index) = curl(&format!("{pages}/"), Some(&token));
    assert!(code == 200 && index.contains(&format!("href=\"/budget/{}\"", ds.dataset_id)) && index.contains(&format!("href=\"/audits/{}\"", audit.audit_id)), "{code} {index}");
    assert!(headers.to_lowercase().contains("cache-control: no-store"), "{headers}");
    let served = [dir.path().join("served-budget.html"), dir.path().join("served-audit.html"), dir.path().join("index.html")];
    for (path, url) in served.iter().zip([format!("{pages}/budget/{}", ds.dataset_id), format!("{pages}/audits/{}", audit.audit_id)]) {
        let (code, headers, html) = curl(&url, Some(&token));
        assert!(code == 200 && headers.to_lowercase().contains("content-security-policy: default-src 'none'"), "{url}: {code} {headers}");
        std::fs::write(path, &html).unwrap();
        let out = ewtune(&d, &token, &["verify", path.to_str().unwrap(), "--public-key", &key]);
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK:"), "{url}");
    }
    std::fs::write(&served[2], &index).unwrap();

    // A real browser lays the pages out.
    let shots = tempfile::tempdir().unwrap();
    let rendered = render(&[&budget_html, &audit_html, &served[0], &served[1]], shots.path());
    // The burn-down and a chart per job; the canaries' ROC, a histogram per canary score, the
    // texts' ROC.
    assert_rendered(&rendered[0], 1 + 2);
    assert_rendered(&rendered[1], 1 + 2 + 1);
    assert_rendered(&rendered[2], 1 + 2);
    assert_rendered(&rendered[3], 1 + 2 + 1);
    assert!(rendered[0]["title"].as_str().unwrap().contains(&ds.dataset_id));
    d.stop().await;
}
