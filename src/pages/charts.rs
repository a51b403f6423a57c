//! The two kinds of chart the report pages draw, as inline SVG through plotters: lines on
//! linear or log axes, and overlaid histograms. Plain data in, an `<svg>` string out; the pages
//! decide what to plot.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// Chart size in pixels (the page scales it to its width).
const SIZE: (u32, u32) = (720, 380);

/// How a series' line is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Line {
    /// Solid.
    Solid,
    /// Long dashes.
    Dashed,
    /// Short dashes.
    Dotted,
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend's label.
    pub label: String,
    /// Its colour.
    pub color: RGBColor,
    /// Its stroke.
    pub line: Line,
    /// Its points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A scale for one axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Axis {
    /// Linear from the data's minimum (or 0) to its maximum.
    Linear,
    /// Logarithmic: non-positive values are left out.
    Log,
}

/// A line chart.
pub struct LineChart<'a> {
    /// The caption.
    pub title: &'a str,
    /// The x axis' description.
    pub x_desc: &'a str,
    /// The y axis' description.
    pub y_desc: &'a str,
    /// The x scale.
    pub x_axis: Axis,
    /// The y scale.
    pub y_axis: Axis,
    /// The x range (`None`: the data's).
    pub x_range: Option<(f64, f64)>,
    /// The y range (`None`: the data's).
    pub y_range: Option<(f64, f64)>,
    /// How x tick labels read (`None`: plotters' numbers).
    pub x_labels: Option<&'a dyn Fn(&f64) -> String>,
    /// The lines.
    pub series: Vec<Series>,
}

/// Plotters' error, as text.
fn err(e: impl std::fmt::Display) -> String {
    format!("drawing a chart: {e}")
}

/// The range covering the points on `axis` (a little room above; 0 included on a linear axis
/// when every value is non-negative).
fn range(values: impl Iterator<Item = f64>, axis: Axis) -> (f64, f64) {
    let values: Vec<f64> = values.filter(|v| v.is_finite() && (axis == Axis::Linear || *v > 0.0)).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match axis {
        _ if !lo.is_finite() => (if axis == Axis::Log { 0.1 } else { 0.0 }, 1.0),
        Axis::Linear => {
            let lo = if lo >= 0.0 { 0.0 } else { lo };
            let hi = if hi > lo { hi + 0.05 * (hi - lo) } else { lo + 1.0 };
            (lo, hi)
        }
        Axis::Log => (lo, if hi > lo { hi } else { lo * 10.0 }),
    }
}

/// Draws `chart` as an `<svg>` element.
pub fn line_chart(chart: &LineChart<'_>) -> Result<String, String> {
    let all = || chart.series.iter().flat_map(|s| s.points.iter().copied());
    let x = chart.x_range.unwrap_or_else(|| range(all().map(|p| p.0), chart.x_axis));
    let y = chart.y_range.unwrap_or_else(|| range(all().map(|p| p.1), chart.y_axis));
    match (chart.x_axis, chart.y_axis) {
        (Axis::Linear, Axis::Linear) => draw(chart, x.0..x.1, y.0..y.1),
        (Axis::Log, Axis::Log) => draw(chart, (x.0..x.1).log_scale(), (y.0..y.1).log_scale()),
        (Axis::Linear, Axis::Log) => draw(chart, x.0..x.1, (y.0..y.1).log_scale()),
        (Axis::Log, Axis::Linear) => draw(chart, (x.0..x.1).log_scale(), y.0..y.1),
    }
}

fn draw<X, Y>(chart: &LineChart<'_>, x: X, y: Y) -> Result<String, String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut c = ChartBuilder::on(&root)
            .caption(chart.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x, y)
            .map_err(err)?;
        let mut mesh = c.configure_mesh();
        mesh.x_desc(chart.x_desc).y_desc(chart.y_desc).x_labels(6).y_labels(8);
        if let Some(f) = chart.x_labels {
            mesh.x_label_formatter(f);
        }
        mesh.draw().map_err(err)?;
        for s in &chart.series {
            let style = ShapeStyle::from(&s.color).stroke_width(2);
            let points = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite());
            let drawn = match s.line {
                Line::Solid => c.draw_series(LineSeries::new(points, style)),
                Line::Dashed => c.draw_series(DashedLineSeries::new(points.collect::<Vec<_>>(), 10, 6, style)),
                Line::Dotted => c.draw_series(DashedLineSeries::new(points.collect::<Vec<_>>(), 3, 4, style)),
            }
            .map_err(err)?;
            let color = s.color;
            drawn.label(&s.label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ShapeStyle::from(&color).stroke_width(2)));
        }
        if chart.series.iter().any(|s| !s.label.is_empty()) {
            c.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.3)).position(SeriesLabelPosition::UpperLeft).draw().map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One group of an overlaid histogram.
pub struct Bars<'a> {
    /// The legend's label.
    pub label: &'a str,
    /// Its colour (drawn half transparent).
    pub color: RGBColor,
    /// Counts per bin.
    pub counts: &'a [u64],
}

/// Draws histograms over the same `edges` (`bins + 1` increasing values), overlaid.
pub fn histogram_chart(title: &str, x_desc: &str, edges: &[f64], groups: &[Bars<'_>]) -> Result<String, String> {
    if edges.len() < 2 || groups.iter().any(|g| g.counts.len() + 1 != edges.len()) {
        return Err(format!("drawing `{title}`: {} edges do not bound the counts", edges.len()));
    }
    let top = groups.iter().flat_map(|g| g.counts.iter().copied()).max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(edges[0]..edges[edges.len() - 1], 0.0..top)
            .map_err(err)?;
        let whole = |v: &f64| format!("{v:.0}");
        c.configure_mesh().x_desc(x_desc).y_desc("canaries").x_labels(8).y_labels(6).y_label_formatter(&whole).draw().map_err(err)?;
        for g in groups {
            let color = g.color;
            let bars = g.counts.iter().enumerate().filter(|(_, &n)| n > 0).map(move |(i, &n)| {
                Rectangle::new([(edges[i], 0.0), (edges[i + 1], n as f64)], color.mix(0.45).filled())
            });
            c.draw_series(bars)
                .map_err(err)?
                .label(g.label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.mix(0.45).filled()));
        }
        c.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.3)).position(SeriesLabelPosition::UpperRight).draw().map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_a_line_per_series_and_a_bar_per_filled_bin() {
        let series = |label: &str, line| Series { label: label.into(), color: BLUE, line, points: vec![(1.0, 0.1), (10.0, 1.0), (100.0, 2.0)] };
        let chart = LineChart {
            title: "epsilon over steps",
            x_desc: "step",
            y_desc: "epsilon",
            x_axis: Axis::Log,
            y_axis: Axis::Linear,
            x_range: None,
            y_range: None,
            x_labels: None,
            series: vec![series("certified", Line::Solid), series("edgeworth", Line::Dashed), series("rdp", Line::Dotted)],
        };
        let svg = line_chart(&chart).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("epsilon over steps") && svg.contains("certified"), "{svg}");
        assert!(svg.matches("<polyline").count() >= 3, "{svg}");
        let h = histogram_chart("scores", "score", &[0.0, 1.0, 2.0, 3.0], &[Bars { label: "inserted", color: RED, counts: &[1, 0, 2] }]).unwrap();
        // Two filled bins, the background and the legend's swatch.
        assert!(h.matches("<rect").count() >= 4, "{h}");
        assert!(histogram_chart("bad", "score", &[0.0, 1.0], &[Bars { label: "x", color: RED, counts: &[1, 2] }]).is_err());
    }
}
