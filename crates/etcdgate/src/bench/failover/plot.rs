//! The PNG: one panel per fault (rows) and target (columns), each with successful reads and
//! writes per second (blue), watch events delivered per second (green, all watchers) and
//! errors per second (red, on the right-hand axis), over the cell's time; the fault window is
//! shaded. Every panel has the same scales, so panels compare at a glance. The left scale
//! ends a little above the [`SCALE_QUANTILE`] of all buckets: the bursts of watch events
//! delivered at once when a stalled watcher catches up would flatten everything else, so they
//! are clipped (their height says nothing the stall does not).
//!
//! Text needs a TrueType font: `ETCDGATE_FONT` if set, else DejaVu Sans or Liberation Sans
//! where Debian puts them (`fonts-dejavu-core`). Without one the panels are drawn without any
//! text and [`draw`] says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::analysis::Timeline;

/// Where a font is looked for, after `ETCDGATE_FONT`.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
/// Quantile of the per-bucket rates (all panels) that sets the left scale.
const SCALE_QUANTILE: f64 = 0.98;
const PANEL_WIDTH: u32 = 620;
const PANEL_HEIGHT: u32 = 300;
const HEADER_HEIGHT: u32 = 70;
const FAULT_SHADE: RGBColor = RGBColor(255, 228, 196);
const OK_COLOR: RGBColor = RGBColor(31, 119, 180);
const EVENTS_COLOR: RGBColor = RGBColor(44, 160, 44);
const ERROR_COLOR: RGBColor = RGBColor(214, 39, 40);

/// One panel's data.
pub struct Panel<'a> {
    pub title: String,
    pub timeline: &'a Timeline,
    pub fault_at: Duration,
    pub recover_at: Duration,
}

/// Draws `panels` (row-major, `columns` per row; `None` for a cell that failed) under
/// `title` into a PNG at `path`. Returns whether text could be drawn.
pub fn draw(path: &Path, title: &[String], columns: usize, panels: &[Option<Panel<'_>>]) -> anyhow::Result<bool> {
    let with_text = font_registered();
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (PANEL_WIDTH * columns as u32, HEADER_HEIGHT + PANEL_HEIGHT * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (header, body) = root.split_vertically(HEADER_HEIGHT);
    if with_text {
        for (i, line) in title.iter().enumerate() {
            header.draw_text(line, &("sans-serif", 17).into_text_style(&header), (10, 8 + 20 * i as i32)).map_err(plot_error)?;
        }
    }
    let scale = Scale::of(panels);
    for (area, panel) in body.split_evenly((rows, columns)).iter().zip(panels) {
        match panel {
            Some(panel) => draw_panel(area, panel, &scale, with_text)?,
            None if with_text => {
                area.draw_text("(cell failed)", &("sans-serif", 16).into_text_style(area), (20, 20)).map_err(plot_error)?;
            }
            None => {}
        }
    }
    root.present().map_err(plot_error).with_context(|| format!("writing {}", path.display()))?;
    Ok(with_text)
}

/// The axes every panel shares.
struct Scale {
    seconds: f64,
    per_second: f64,
    errors_per_second: f64,
}

impl Scale {
    fn of(panels: &[Option<Panel<'_>>]) -> Scale {
        let mut scale = Scale { seconds: 1.0, per_second: 1.0, errors_per_second: 1.0 };
        let mut rates = Vec::new();
        for panel in panels.iter().flatten() {
            let t = panel.timeline;
            scale.seconds = scale.seconds.max(t.ok.len() as f64 * t.bucket.as_secs_f64());
            rates.extend(t.ok.iter().chain(&t.events).map(|&c| t.per_second(c)));
            let highest_errors = t.errors.iter().map(|&c| t.per_second(c)).fold(0.0, f64::max);
            scale.errors_per_second = scale.errors_per_second.max(highest_errors);
        }
        rates.sort_unstable_by(f64::total_cmp);
        if let Some(&high) = rates.get((rates.len() as f64 * SCALE_QUANTILE) as usize) {
            scale.per_second = scale.per_second.max(high * 1.25);
        }
        scale.errors_per_second *= 1.1;
        scale
    }
}

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, panel: &Panel<'_>, scale: &Scale, with_text: bool) -> anyhow::Result<()> {
    let mut builder = ChartBuilder::on(area);
    builder.margin(10);
    if with_text {
        builder
            .caption(&panel.title, ("sans-serif", 17))
            .x_label_area_size(34)
            .y_label_area_size(52)
            .right_y_label_area_size(46);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..scale.seconds, 0.0..scale.per_second)
        .map_err(plot_error)?
        .set_secondary_coord(0.0..scale.seconds, 0.0..scale.errors_per_second);
    let fault = (panel.fault_at.as_secs_f64(), panel.recover_at.as_secs_f64());
    chart
        .draw_series(std::iter::once(Rectangle::new([(fault.0, 0.0), (fault.1, scale.per_second)], FAULT_SHADE.filled())))
        .map_err(plot_error)?;
    if with_text {
        chart
            .configure_mesh()
            .light_line_style(WHITE.mix(0.0))
            .x_desc("seconds")
            .y_desc("per second")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .draw()
            .map_err(plot_error)?;
        chart
            .configure_secondary_axes()
            .y_desc("errors per second")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13).into_font().color(&ERROR_COLOR))
            .axis_desc_style(("sans-serif", 13).into_font().color(&ERROR_COLOR))
            .draw()
            .map_err(plot_error)?;
    } else {
        chart.plotting_area().draw(&Rectangle::new([(0.0, 0.0), (scale.seconds, scale.per_second)], BLACK.stroke_width(1))).map_err(plot_error)?;
    }
    let t = panel.timeline;
    let points = |counts: &[u32]| -> Vec<(f64, f64)> {
        counts.iter().enumerate().map(|(i, &c)| ((i as f64 + 0.5) * t.bucket.as_secs_f64(), t.per_second(c))).collect()
    };
    chart.draw_series(LineSeries::new(points(&t.events), EVENTS_COLOR.stroke_width(2))).map_err(plot_error)?;
    chart.draw_series(LineSeries::new(points(&t.ok), OK_COLOR.stroke_width(2))).map_err(plot_error)?;
    chart.draw_secondary_series(LineSeries::new(points(&t.errors), ERROR_COLOR.stroke_width(2))).map_err(plot_error)?;
    Ok(())
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Registers the first font found as "sans-serif", once per process; whether one was.
fn font_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let candidates = std::env::var_os("ETCDGATE_FONT").map(PathBuf::from).into_iter().chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            // The font table wants 'static bytes: one font, kept for the process's life.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        false
    })
}
