//! Charts of a run, and of several runs overlaid, as PNG and SVG.
//!
//! Text is drawn with DejaVu Sans compiled into the binary (plotters' ab_glyph
//! backend), so no system font or GUI library is needed at run time.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::history::History;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known good; a failure would only lose text.
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            tracing::warn!("could not load the plot font; charts will have no text");
        }
    });
}

/// One line on a chart.
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (round, value) points.
    pub points: Vec<(f64, f64)>,
}

/// Which metric a chart shows.
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    /// Accuracy, in percent.
    Accuracy,
    /// Loss.
    Loss,
}

impl Metric {
    fn label(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy (%)",
            Metric::Loss => "loss",
        }
    }

    /// The lines of one run: distributed, and centralised when present.
    fn series(self, history: &History, prefix: &str) -> Vec<Series> {
        let pick = |central: bool| -> Vec<(f64, f64)> {
            history
                .rounds
                .iter()
                .filter_map(|r| {
                    let v = match (self, central) {
                        (Metric::Accuracy, false) => r.accuracy_distributed.map(|a| 100.0 * a),
                        (Metric::Accuracy, true) => r.accuracy_centralized.map(|a| 100.0 * a),
                        (Metric::Loss, false) => r.loss_distributed,
                        (Metric::Loss, true) => r.loss_centralized,
                    };
                    v.map(|v| (f64::from(r.round), f64::from(v)))
                })
                .collect()
        };
        let mut out = vec![Series {
            label: format!("{prefix}distributed"),
            points: pick(false),
        }];
        let central = pick(true);
        if !central.is_empty() {
            out.push(Series {
                label: format!("{prefix}centralised"),
                points: central,
            });
        }
        out
    }
}

/// Writes accuracy.png/.svg and loss.png/.svg for one run into `out`.
pub fn plot_run(history: &History, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (metric, stem) in [(Metric::Accuracy, "accuracy"), (Metric::Loss, "loss")] {
        let series = metric.series(history, "");
        for ext in ["png", "svg"] {
            let path = out.join(format!("{stem}.{ext}"));
            chart(
                &path,
                &format!("{} per round", metric.label()),
                metric,
                &series,
            )?;
            files.push(path);
        }
    }
    Ok(files)
}

/// Overlays the accuracy of several runs, one line each, labelled by file name.
pub fn compare(histories: &[(String, History)], out: &Path) -> anyhow::Result<()> {
    let series: Vec<Series> = histories
        .iter()
        .flat_map(|(name, h)| {
            let mut s = Metric::Accuracy.series(h, "");
            s.truncate(1);
            s.into_iter().map(move |mut s| {
                s.label = name.clone();
                s
            })
        })
        .collect();
    chart(
        out,
        "accuracy per round, compared",
        Metric::Accuracy,
        &series,
    )
}

/// Draws `series` to `path`, PNG or SVG by its extension.
pub fn chart(path: &Path, title: &str, metric: Metric, series: &[Series]) -> anyhow::Result<()> {
    register_font();
    let size = (960, 600);
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => draw(
            SVGBackend::new(path, size).into_drawing_area(),
            title,
            metric,
            series,
        ),
        Some("png") => draw(
            BitMapBackend::new(path, size).into_drawing_area(),
            title,
            metric,
            series,
        ),
        _ => Err(anyhow!(
            "{}: the chart's file name must end in .png or .svg",
            path.display()
        )),
    }
    .with_context(|| format!("cannot draw {}", path.display()))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    metric: Metric,
    series: &[Series],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let points = series.iter().flat_map(|s| s.points.iter());
    let max_round = points.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = points.fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let y = match metric {
        Metric::Accuracy => (lo - pad).max(0.0)..(hi + pad).min(100.0),
        Metric::Loss => (lo - pad).max(0.0)..hi + pad,
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max_round + 0.5, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .x_labels((max_round as usize + 1).min(21))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(metric.label())
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 18))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(match metric {
            Metric::Accuracy => SeriesLabelPosition::LowerRight,
            Metric::Loss => SeriesLabelPosition::UpperRight,
        })
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
