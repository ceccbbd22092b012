//! Charts drawn into a part of a picture, so that one PNG can hold several (the instrument
//! panel): a histogram, a 2-D histogram as a heat map, and lines against the step.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{blues, drawing, DrawError, FONT};

/// One line of a chart: its label, its (step, value) points and its colour.
pub type Line<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

/// A tick label with three significant digits: `0.25`, `1.5e-3`, `2.4e4`.
fn compact(value: &f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 {
        "0".into()
    } else if !(1e-2..1e4).contains(&magnitude) {
        format!("{value:.1e}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A part of a picture to draw into.
pub type Area<'a, 'b> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A 1-D histogram: `counts` in equal bins over `[low, high]`, the bars on a log scale
/// (`log10(1 + count)`), so that the tails stay visible beside a peak at zero.
pub fn histogram_1d(
    area: &Area<'_, '_>,
    title: &str,
    (low, high): (f64, f64),
    counts: &[f64],
) -> Result<(), DrawError> {
    let bins = counts.len().max(1);
    let width = (high - low) / bins as f64;
    let top = counts
        .iter()
        .map(|c| (1.0 + c).log10())
        .fold(0.0, f64::max)
        .max(1.0);
    let mut chart =
        drawing(chart_builder(area, title, 48).build_cartesian_2d(low..high, 0.0..top * 1.05))?;
    drawing(
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("individual gradient element")
            .y_desc("log₁₀(1 + count)")
            .label_style((FONT, 12))
            .draw(),
    )?;
    drawing(chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = low + width * i as f64;
        Rectangle::new(
            [(x0, 0.0), (x0 + width, (1.0 + c).log10())],
            blues(0.7).filled(),
        )
    })))?;
    Ok(())
}

/// A 2-D histogram as a heat map: `counts[i · value_bins + j]` for gradient bin `i` (x) and
/// value bin `j` (y), shaded by `log(1 + count)`.
pub fn histogram_2d(
    area: &Area<'_, '_>,
    title: &str,
    (low, high): (f64, f64),
    (value_low, value_high): (f64, f64),
    value_bins: usize,
    counts: &[f64],
) -> Result<(), DrawError> {
    let value_bins = value_bins.max(1);
    let bins = counts.len() / value_bins;
    let (dx, dy) = (
        (high - low) / bins.max(1) as f64,
        (value_high - value_low) / value_bins as f64,
    );
    let top = counts
        .iter()
        .map(|c| (1.0 + c).ln())
        .fold(0.0, f64::max)
        .max(1e-12);
    let mut chart = drawing(
        chart_builder(area, title, 48).build_cartesian_2d(low..high, value_low..value_high),
    )?;
    drawing(
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("individual gradient element")
            .y_desc("parameter value")
            .label_style((FONT, 12))
            .draw(),
    )?;
    drawing(chart.draw_series(counts.iter().enumerate().map(|(k, &c)| {
        let (i, j) = (k / value_bins, k % value_bins);
        let (x, y) = (low + dx * i as f64, value_low + dy * j as f64);
        let shade = if c > 0.0 {
            0.15 + 0.85 * (1.0 + c).ln() / top
        } else {
            0.0
        };
        Rectangle::new([(x, y), (x + dx, y + dy)], blues(shade).filled())
    })))?;
    Ok(())
}

/// Lines of (step, value) in one chart; `log_y` for a positive quantity that may span
/// decades (drawn on a log scale when it does).
/// A chart with no points says so instead.
pub fn lines(
    area: &Area<'_, '_>,
    title: &str,
    series: &[Line<'_>],
    log_y: bool,
) -> Result<(), DrawError> {
    let points = || {
        series
            .iter()
            .flat_map(|s| s.1.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
    };
    if points().next().is_none() {
        drawing(area.titled(title, (FONT, 16)))?;
        let (w, h) = area.dim_in_pixel();
        drawing(area.draw(&Text::new(
            "nothing logged yet",
            (w as i32 / 2 - 60, h as i32 / 2),
            (FONT, 14).into_font().color(&BLACK.mix(0.5)),
        )))?;
        return Ok(());
    }
    let (x0, x1, y0, y1) = points().fold(
        (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ),
        |(a, b, c, d), (x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    // A log scale only where the values span more than a decade and a bit: within less, its
    // labels are one or two powers of ten and say little. On a log scale the chart holds
    // log₁₀ of the values and its labels show the values.
    let log_y = log_y && y1 > 20.0 * y0;
    let to_axis = |y: f64| if log_y { y.log10() } else { y };
    let (low, high) = (to_axis(y0), to_axis(y1));
    let pad = ((high - low) * 0.06).max(1e-9);
    let mut chart = drawing(
        chart_builder(area, title, 56).build_cartesian_2d(x0..x1, (low - pad)..(high + pad)),
    )?;
    let label = |v: &f64| compact(&if log_y { 10f64.powf(*v) } else { *v });
    drawing(
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&label)
            .y_labels(7)
            .light_line_style(WHITE)
            .label_style((FONT, 12))
            .draw(),
    )?;
    for (name, points, colour) in series {
        let colour = *colour;
        // A thick line's miter joins shoot past the points where a dense, noisy series turns
        // sharply (a training loss): those are drawn one pixel wide.
        let width = if points.len() > 300 { 1 } else { 2 };
        drawing(
            chart.draw_series(LineSeries::new(
                points
                    .iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
                    .map(|&(x, y)| (x, to_axis(y))),
                colour.stroke_width(width),
            )),
        )?
        .label(*name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    if series.len() > 1 {
        drawing(
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .label_font((FONT, 12))
                .position(SeriesLabelPosition::UpperRight)
                .draw(),
        )?;
    }
    Ok(())
}

/// A chart titled `title` in `area`, with `y_labels` pixels for the y axis's labels.
fn chart_builder<'a, 'b>(
    area: &'a Area<'b, '_>,
    title: &str,
    y_labels: u32,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, (FONT, 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(y_labels);
    builder
}
