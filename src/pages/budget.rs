//! A budget report as a page: the headline numbers (certified, each labelled), the dataset's
//! burn-down over time, each job's epsilon over its steps by the certified, Edgeworth and RDP
//! accountants, the tables of the report, and the jobs' self-audits. Needs a report issued with its charts' data
//! (`Budget.Get` with `charts`).

use super::charts::{line_chart, Axis, Line, LineChart, Series};
use super::{escape, figure, num, page, time_utc, PageError};
use crate::service::signing::SignedReport;
use crate::store::{BudgetReport, JobCurve};
use crate::train::self_audit::SelfAuditReport;
use plotters::style::RGBColor;

/// Certified (the guarantee).
const CERTIFIED: RGBColor = RGBColor(0x1f, 0x4e, 0x9c);
/// Edgeworth (an estimate).
const EDGEWORTH: RGBColor = RGBColor(0xd9, 0x73, 0x0d);
/// RDP.
const RDP: RGBColor = RGBColor(0x70, 0x70, 0x70);
/// Budgets and markers.
const MARK: RGBColor = RGBColor(0x2e, 0x7d, 0x32);

/// At most this many job charts, the latest jobs' (the table lists every job).
pub const MAX_JOB_CHARTS: usize = 12;

/// The page of a signed budget report.
pub fn budget_page(signed: &SignedReport) -> Result<String, PageError> {
    let report: BudgetReport =
        serde_json::from_str(&signed.report_json).map_err(|e| PageError::NotAReport { kind: "budget", reason: e.to_string() })?;
    let charts = report.charts.as_ref().ok_or_else(|| {
        PageError::Missing("the report holds no chart data: it was issued without `charts` (`ewtune budget show ID --html FILE` asks for it)".into())
    })?;
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>Privacy budget of dataset <code>{}</code></h1>\n<p class=\"sub\">tenant {} · report {} · issued {} · every epsilon at delta {:e}, one privacy unit = one {}</p>\n",
        escape(report.dataset.as_str()),
        escape(report.tenant.as_str()),
        report.sequence,
        time_utc(report.issued_at_unix_ms),
        report.budget_delta,
        match report.privacy_unit {
            crate::store::PrivacyUnit::Example => "example",
            crate::store::PrivacyUnit::User => "user",
        },
    ));
    let edgeworth = report.spent_epsilon_edgeworth_estimate.map_or("—".to_string(), |e| num(e, 4));
    body.push_str(&format!(
        r#"<div class="headline">
<div><div class="value">{}</div><div class="label">budget epsilon</div></div>
<div><div class="value">{}</div><div class="label">spent, certified upper bound</div></div>
<div><div class="value">{}</div><div class="label">spent + reserved by queued and running jobs, certified</div></div>
<div><div class="value">{}</div><div class="label">left for the worst-off of its {} units (not additive: <code>ewtune jobs plan</code> says what a job would leave)</div></div>
<div class="estimate"><div class="value">{edgeworth}</div><div class="label">spent, Edgeworth ESTIMATE (not a guarantee)</div></div>
</div>
"#,
        num(report.budget_epsilon, 4),
        num(report.spent_epsilon, 4),
        num(report.committed_epsilon, 4),
        num(report.remaining_epsilon, 4),
        report.units,
    ));

    body.push_str("<h2>Burn-down</h2>\n");
    let now = report.issued_at_unix_ms as f64;
    let remaining = steps(charts.burn_down.iter().map(|p| (p.at_unix_ms as f64, p.remaining_epsilon)), now);
    let spent = steps(charts.burn_down.iter().map(|p| (p.at_unix_ms as f64, p.spent_epsilon)), now);
    let start = charts.burn_down.first().map_or(now, |p| p.at_unix_ms as f64);
    // Minutes, or seconds when the whole history is shorter than two hours.
    let span = now - start;
    let label = |ms: &f64| {
        let t = time_utc(*ms as i64);
        if span < 7_200_000.0 { t[11..19].to_string() } else { t[..16].to_string() }
    };
    let burn = line_chart(&LineChart {
        title: "Budget left over time (worst-off units)",
        x_desc: "time (UTC)",
        y_desc: "epsilon",
        x_axis: Axis::Linear,
        y_axis: Axis::Linear,
        x_range: Some((start, if now > start { now } else { start + 60_000.0 })),
        y_range: Some((0.0, report.budget_epsilon.max(report.spent_epsilon) * 1.08)),
        x_labels: Some(&label),
        series: vec![
            Series { label: "left (budget - spent), certified".into(), color: CERTIFIED, line: Line::Solid, points: remaining },
            Series { label: "spent, certified".into(), color: EDGEWORTH, line: Line::Dashed, points: spent },
            Series { label: "budget".into(), color: MARK, line: Line::Dotted, points: vec![(start, report.budget_epsilon), (now.max(start + 1.0), report.budget_epsilon)] },
        ],
    })
    .map_err(PageError::Chart)?;
    body.push_str(&figure(&burn, "From the dataset's registration to this report: each job's steps count when its spending ended (a running job's, now). Spent steps only; reservations are in the headline."));

    body.push_str("<h2>Epsilon over each job's steps</h2>\n");
    if charts.jobs.is_empty() {
        body.push_str("<p>No job has spent these units' budget yet.</p>\n");
    }
    let shown = charts.jobs.len().saturating_sub(MAX_JOB_CHARTS);
    if shown > 0 {
        body.push_str(&format!("<p>The latest {MAX_JOB_CHARTS} jobs of {}; the table below lists every job.</p>\n", charts.jobs.len()));
    }
    for curve in &charts.jobs[shown..] {
        let row = report.jobs.iter().find(|r| r.job == curve.job);
        let svg = job_chart(curve, row.map(|r| (r.noise_multiplier, r.sample_rate))).map_err(PageError::Chart)?;
        body.push_str(&figure(
            &svg,
            &format!(
                "Job {} alone, at delta {:e}, over its {} planned steps ({} done). The certified bound is the guarantee; Edgeworth is an estimate that can understate epsilon; RDP is a looser bound.",
                escape(curve.job.as_str()),
                report.budget_delta,
                curve.points.last().map_or(0, |p| p.step),
                curve.steps_done
            ),
        ));
    }

    if report.classes.len() > 1 || report.classes.iter().any(|c| c.datasets.len() > 1) {
        body.push_str("<h2>Its units by the datasets they are in</h2>\n<p>Worst first; the headline is the first row's.</p>\n<table><tr><th>units</th><th>spent</th><th>spent + reserved</th><th>left</th><th>in datasets</th><th>bound by</th></tr>\n");
        for c in &report.classes {
            let datasets: Vec<String> = c.datasets.iter().map(|d| format!("<code>{}</code>", escape(d.as_str()))).collect();
            body.push_str(&format!(
                "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
                c.units,
                num(c.spent_epsilon, 4),
                num(c.committed_epsilon, 4),
                num(c.remaining_epsilon, 4),
                datasets.join(" "),
                escape(c.binding_dataset.as_str())
            ));
        }
        body.push_str("</table>\n");
    }
    body.push_str("<h2>Jobs</h2>\n");
    if report.jobs.is_empty() {
        body.push_str("<p>None.</p>\n");
    } else {
        body.push_str("<table><tr><th>job</th><th>dataset</th><th>state</th><th>steps done</th><th>planned</th><th>reserved</th><th>sigma</th><th>q</th><th>epsilon spent (alone, certified)</th></tr>\n");
        for j in &report.jobs {
            body.push_str(&format!(
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
                escape(j.job.as_str()),
                escape(j.dataset.as_str()),
                escape(j.state.as_str()),
                j.steps_done,
                j.steps_planned,
                j.steps_reserved,
                num(j.noise_multiplier, 4),
                num(j.sample_rate, 6),
                num(j.epsilon_alone, 4)
            ));
        }
        body.push_str("</table>\n");
    }
    self_audits(&mut body, &report);
    Ok(page(&format!("Privacy budget of {}", report.dataset), &body, signed))
}

/// The self-audits of the report's ended jobs: the certified epsilon beside what one run
/// demonstrated, and the verdict of the implementation checks.
fn self_audits(body: &mut String, report: &BudgetReport) {
    let audits: Vec<(&str, SelfAuditReport)> =
        report.jobs.iter().filter_map(|j| Some((j.job.as_str(), serde_json::from_value(j.self_audit.clone()?).ok()?))).collect();
    if audits.is_empty() {
        return;
    }
    body.push_str(
        "<h2>Self-audits</h2>\n<p>Gradient canaries checked each job's clipping, noise and sampling against what is accounted; \
         a job whose checks fail releases no model. The lower bound is what one run can demonstrate (Steinke, Nasr &amp; Jagielski, 95 %); \
         15-55 % of the certified epsilon is normal, and it proves nothing about the guarantee, which is the certified accountant's.</p>\n",
    );
    body.push_str("<table><tr><th>job</th><th>canaries</th><th>certified &lt;=</th><th>measured &gt;= (95 %)</th><th>implementation checks</th></tr>\n");
    for (job, a) in audits {
        let fdp = a.fdp_p_value.map_or_else(String::new, |p| format!("; f-DP test of the certified curve p = {}", num(p, 3)));
        let warnings = a.warnings.iter().map(|w| format!("<br>warning: {}", escape(w))).collect::<String>();
        let verdict = if a.passed() { format!("passed: {}{}{warnings}", escape(&a.decision.summary()), escape(&fdp)) } else { format!("<strong>FAILED</strong>: {}", escape(&a.failures().join("; "))) };
        body.push_str(&format!(
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{verdict}</td></tr>\n",
            escape(job),
            a.canaries,
            num(a.certified_epsilon, 4),
            a.steinke_epsilon.map_or_else(|| "-".to_string(), |e| num(e, 4))
        ));
    }
    body.push_str("</table>\n");
}

/// `(time, level)` points drawn as steps: each level holds until the next point's time, the
/// last one until `until`.
fn steps(points: impl Iterator<Item = (f64, f64)>, until: f64) -> Vec<(f64, f64)> {
    let mut line: Vec<(f64, f64)> = Vec::new();
    for (t, level) in points {
        if let Some(&(_, held)) = line.last() {
            line.push((t, held));
        }
        line.push((t, level));
    }
    if let Some(&(_, last)) = line.last() {
        line.push((until, last));
    }
    line
}

/// One job's curves, with a marker at its steps done.
fn job_chart(curve: &JobCurve, plan: Option<(f64, f64)>) -> Result<String, String> {
    let pts = |f: &dyn Fn(&crate::store::EpsilonAtStep) -> Option<f64>| -> Vec<(f64, f64)> {
        curve.points.iter().filter_map(|p| f(p).map(|e| (p.step as f64, e))).collect()
    };
    let certified = pts(&|p| Some(p.certified_upper));
    let top = curve.points.iter().flat_map(|p| [p.certified_upper, p.rdp, p.edgeworth_estimate.unwrap_or(0.0)]).filter(|e| e.is_finite()).fold(0.0, f64::max);
    let done = curve.steps_done as f64;
    let title = match plan {
        Some((sigma, q)) => format!("job {} (sigma {:.3}, q {:.5})", curve.job, sigma, q),
        None => format!("job {}", curve.job),
    };
    let last = curve.points.last().map_or(1.0, |p| p.step as f64);
    line_chart(&LineChart {
        title: &title,
        x_desc: "step",
        y_desc: "epsilon",
        x_axis: Axis::Linear,
        y_axis: Axis::Linear,
        x_range: Some((0.0, last.max(1.0))),
        y_range: Some((0.0, (top * 1.08).max(1e-3))),
        x_labels: Some(&|step: &f64| format!("{step:.0}")),
        series: vec![
            Series { label: "certified (guarantee)".into(), color: CERTIFIED, line: Line::Solid, points: certified },
            Series { label: "Edgeworth (estimate)".into(), color: EDGEWORTH, line: Line::Dashed, points: pts(&|p| p.edgeworth_estimate) },
            Series { label: "RDP".into(), color: RDP, line: Line::Dotted, points: pts(&|p| Some(p.rdp)) },
            Series { label: format!("steps done ({})", curve.steps_done), color: MARK, line: Line::Dashed, points: vec![(done, 0.0), (done, top * 1.08)] },
        ],
    })
}
