//! The convergence chart: Running clusters over time, a line per setup, and the API-server
//! bound as a vertical line.
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The setups' curves, `(label, [(seconds, running)])`.
pub struct Curves<'a> {
    pub title: String,
    pub bound_seconds: f64,
    pub clusters: usize,
    pub lines: Vec<(&'a str, &'a [(f64, usize)])>,
}

pub fn draw(path: &Path, curves: &Curves) -> Result<()> {
    let font =
        std::fs::read(FONT).with_context(|| format!("reading {FONT} (fonts-dejavu-core)"))?;
    // plotters keeps the font for the process's lifetime.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    let longest = curves
        .lines
        .iter()
        .filter_map(|(_, points)| points.last().map(|p| p.0))
        .fold(curves.bound_seconds, f64::max);
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&curves.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..longest * 1.05, 0.0..curves.clusters as f64 * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the manifests were created")
        .y_desc("clusters Running")
        .label_style(("sans-serif", 14))
        .draw()?;
    let bound = curves.bound_seconds;
    chart
        .draw_series(LineSeries::new(
            [(bound, 0.0), (bound, curves.clusters as f64)],
            BLACK.stroke_width(1),
        ))?
        .label(format!("API-server bound ({bound:.1} s)"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    for (i, (label, points)) in curves.lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(t, n)| (*t, *n as f64)),
                color.stroke_width(2),
            ))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
