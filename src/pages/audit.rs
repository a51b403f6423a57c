//! An audit report as a page: the canary verdict (the one-run lower bound against the certified
//! epsilon), the ROC curves per score on log-log axes (as the membership-inference literature
//! draws them, so the low-FPR regime shows), the canaries' score histograms, and the metric
//! tables. The report is read as JSON (docs/audit.md, The report), field by field.

use super::charts::{histogram_chart, line_chart, Axis, Bars, Line, LineChart, Series};
use super::{escape, figure, num, page, time_utc, PageError};
use crate::service::signing::SignedReport;
use plotters::style::RGBColor;
use serde_json::Value;

/// Colours for the scores' curves, in the order the report lists them.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x4e, 0x9c),
    RGBColor(0xd9, 0x73, 0x0d),
    RGBColor(0x2e, 0x7d, 0x32),
    RGBColor(0xc6, 0x28, 0x28),
    RGBColor(0x6a, 0x1b, 0x9a),
    RGBColor(0x00, 0x83, 0x8f),
    RGBColor(0x8d, 0x6e, 0x63),
    RGBColor(0xad, 0x14, 0x57),
    RGBColor(0x55, 0x8b, 0x2f),
    RGBColor(0x45, 0x5a, 0x64),
];
/// The chance line.
const CHANCE: RGBColor = RGBColor(0x9e, 0x9e, 0x9e);

/// The page of a signed audit report.
pub fn audit_page(signed: &SignedReport) -> Result<String, PageError> {
    let not_audit = |reason: &str| PageError::NotAReport { kind: "audit", reason: reason.to_string() };
    let report: Value = serde_json::from_str(&signed.report_json).map_err(|e| not_audit(&e.to_string()))?;
    if !report["audit_version"].is_string() {
        return Err(not_audit("it has no audit_version"));
    }
    let s = |v: &Value| escape(v.as_str().unwrap_or("—"));
    let mut body = format!(
        "<h1>Membership audit <code>{}</code></h1>\n<p class=\"sub\">job <code>{}</code> · tenant {} · issued {} · audit version {}</p>\n",
        s(&report["audit_id"]),
        s(&report["job_id"]),
        s(&report["tenant"]),
        report["issued_at_unix_ms"].as_i64().map_or("—".into(), time_utc),
        s(&report["audit_version"]),
    );
    let canary = &report["canary_audit"];
    if canary.is_object() {
        let f = |v: &Value| v.as_f64().ok_or_else(|| PageError::Missing(format!("the canary audit lacks a number: {v}")));
        let lb = f(&canary["best"]["eps_lb"])?;
        let claimed = canary["eps_claimed"].as_f64();
        let verdict = match claimed {
            Some(c) if canary["violation"].as_bool() == Some(true) => format!(
                "<div class=\"alarm\"><strong>VIOLATION:</strong> the measured lower bound {} exceeds the certified epsilon {}: the privacy claim is refuted at 95 %; accounting, sampling, clipping or noise is wrong.</div>",
                num(lb, 4),
                num(c, 4)
            ),
            Some(c) => format!(
                "<div class=\"ok\">certified epsilon ≤ <strong>{}</strong>, measured ≥ <strong>{}</strong> (one-run canary audit, 95 %): consistent.</div>",
                num(c, 4),
                num(lb, 4)
            ),
            None => format!("<div class=\"ok\">measured epsilon ≥ <strong>{}</strong> (one-run canary audit, 95 %); the job's certified epsilon is unknown.</div>", num(lb, 4)),
        };
        body.push_str(&verdict);
        body.push_str(&format!(
            "\n<p>{} canaries, {} inserted; Bonferroni over {} guesses; the largest bound {} canaries can give here is {}. The classic Clopper-Pearson bound on the same scores, {} (heuristic: it assumes independent training runs), is never compared with the claim.</p>\n",
            count(&canary["m"]),
            count(&canary["n_included"]),
            count(&canary["grid_size"]),
            count(&canary["m"]),
            num(canary["eps_ceiling_for_m"].as_f64().unwrap_or(f64::NAN), 3),
            num(canary["eps_classic_heuristic"].as_f64().unwrap_or(f64::NAN), 4),
        ));
        body.push_str("<h2>Canaries</h2>\n");
        body.push_str(&roc_figure("ROC of the canaries (inserted vs held out)", &canary["metrics"])?);
        for (name, h) in canary["histograms"].as_object().into_iter().flatten() {
            let nums = |key: &str| -> Vec<f64> { h[key].as_array().into_iter().flatten().filter_map(Value::as_f64).collect() };
            let counts = |key: &str| -> Vec<u64> { h[key].as_array().into_iter().flatten().filter_map(Value::as_u64).collect() };
            let (inserted, held_out) = (counts("inserted"), counts("held_out"));
            let svg = histogram_chart(
                &format!("canary scores: {name}"),
                "score (higher: more likely inserted)",
                &nums("edges"),
                &[Bars { label: "inserted", color: PALETTE[3], counts: &inserted }, Bars { label: "held out", color: PALETTE[0], counts: &held_out }],
            )
            .map_err(PageError::Chart)?;
            body.push_str(&figure(&svg, &format!("Score <code>{}</code> of each canary. A model that kept no trace of its canaries scores both groups alike.", escape(name))));
        }
        body.push_str(&metric_table(&canary["metrics"]));
    } else {
        body.push_str("<p>The job inserted no canaries: no lower bound on its epsilon is measured.</p>\n");
    }
    let mia = &report["data_mia"];
    if mia.is_object() {
        body.push_str(&format!("<h2>Labelled texts</h2>\n<p>{} members, {} non-members, {} cut at the token limit.</p>\n", count(&mia["n_members"]), count(&mia["n_nonmembers"]), count(&mia["n_truncated"])));
        body.push_str(&roc_figure("ROC of the labelled texts (members vs non-members)", &mia["scores"])?);
        body.push_str(&metric_table(&mia["scores"]));
    }
    Ok(page(&format!("Audit {}", report["audit_id"].as_str().unwrap_or("")), &body, signed))
}

/// A count from the report, or a dash: never the JSON value itself, which could be text.
fn count(v: &Value) -> String {
    v.as_u64().map_or_else(|| "—".to_string(), |n| n.to_string())
}

/// The ROC curves of every score in `metrics` (a map name -> ScoreMetrics), log-log, with the
/// chance line. Points where either rate is 0 have no place on log axes and are left out.
fn roc_figure(title: &str, metrics: &Value) -> Result<String, PageError> {
    let mut series = Vec::new();
    let mut smallest = 1.0f64;
    for (i, (name, m)) in metrics.as_object().into_iter().flatten().enumerate() {
        let roc = &m["roc"];
        let (p, n) = (roc["members"].as_f64().unwrap_or(0.0), roc["nonmembers"].as_f64().unwrap_or(0.0));
        if p == 0.0 || n == 0.0 {
            // Reports signed before they carried ROC points (or a class with no member): no curve.
            continue;
        }
        smallest = smallest.min(1.0 / n).min(1.0 / p);
        let points: Vec<(f64, f64)> = roc["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pt| Some((pt[0].as_f64()? / n, pt[1].as_f64()? / p)))
            .filter(|&(x, y)| x > 0.0 && y > 0.0)
            .collect();
        let auc = m["auc"].as_f64().unwrap_or(f64::NAN);
        series.push(Series { label: format!("{name} (AUC {auc:.3})"), color: PALETTE[i % PALETTE.len()], line: Line::Solid, points });
    }
    if series.is_empty() {
        return Ok("<p>This report carries no ROC points (reports issued before ewtune recorded them do not); its metrics are in the table.</p>\n".to_string());
    }
    series.push(Series { label: "chance".into(), color: CHANCE, line: Line::Dotted, points: vec![(smallest, smallest), (1.0, 1.0)] });
    let svg = line_chart(&LineChart {
        title,
        x_desc: "false positive rate",
        y_desc: "true positive rate",
        x_axis: Axis::Log,
        y_axis: Axis::Log,
        x_range: Some((smallest, 1.0)),
        y_range: Some((smallest, 1.0)),
        x_labels: None,
        series,
    })
    .map_err(PageError::Chart)?;
    Ok(figure(&svg, "Log-log, so that the rates at low false positives, where membership inference matters, can be read. Above the dotted line, a score tells members apart."))
}

/// A table of each score's metrics.
fn metric_table(metrics: &Value) -> String {
    let mut t = String::from("<table><tr><th>score</th><th>AUC</th><th>95 % CI</th><th>TPR at 0.1 % FPR</th><th>TPR at 1 % FPR</th><th>TPR at 5 % FPR</th><th>NaN dropped</th></tr>\n");
    let f = |v: &Value| num(v.as_f64().unwrap_or(f64::NAN), 4);
    for (name, m) in metrics.as_object().into_iter().flatten() {
        t.push_str(&format!(
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">[{}, {}]</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
            escape(name),
            f(&m["auc"]),
            f(&m["auc_ci95"][0]),
            f(&m["auc_ci95"][1]),
            f(&m["tpr_at_fpr"]["0.001"]["tpr"]),
            f(&m["tpr_at_fpr"]["0.01"]["tpr"]),
            f(&m["tpr_at_fpr"]["0.05"]["tpr"]),
            count(&m["dropped_nan"])
        ));
    }
    t.push_str("</table>\n");
    t
}
