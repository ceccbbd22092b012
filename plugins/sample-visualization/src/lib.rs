//! The `sample-visualization` monitor: validation images with their true and predicted
//! classes. It draws the first `num_samples` of the images the host offers: the same samples
//! every epoch, the classes taking turns (see the README), so any prefix spans the classes.
//!
//! ```toml
//! [[monitors]]
//! name = "sample-visualization"
//! [monitors.settings]
//! num_samples = 16   # at most 64 (what the host offers)
//! ```
//!
//! At each validation end it writes `epoch_{epoch:03}/sample_predictions.png`: a grid of tiles,
//! each the image (de-normalised by the host, scaled up) under a title "true: X / pred: Y",
//! with a green border and title when the prediction is right and red when it is wrong.

use serde::Deserialize;
use vigil_monitor_draw::plotters::prelude::*;
use vigil_monitor_draw::plotters::style::text_anchor::{HPos, Pos, VPos};
use vigil_monitor_draw::{drawing, render_png, DrawError, FONT};
use vigil_plugin_api::{
    export_monitor, parse_settings, ArtifactKind, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, Subscriptions,
};

pub const RIGHT: RGBColor = RGBColor(0, 150, 0);
pub const WRONG: RGBColor = RGBColor(210, 0, 0);
/// Tile geometry: the image area, the border around it, the title band above it.
pub const IMAGE: i32 = 112;
pub const BORDER: i32 = 4;
pub const TITLE: i32 = 24;
pub const TILE_WIDTH: i32 = 210;
pub const TILE_HEIGHT: i32 = TITLE + IMAGE + 2 * BORDER + 10;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    num_samples: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { num_samples: 16 }
    }
}

/// Images to draw: `count × channels × height × width` floats in [0, 1].
pub struct Samples<'a> {
    pub pixels: &'a [f32],
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub labels: &'a [i64],
    pub predictions: &'a [i64],
}

/// Columns of the grid for `count` tiles: as square as possible.
pub fn columns(count: usize) -> usize {
    ((count as f64).sqrt().ceil() as usize).max(1)
}

/// Draw the grid as PNG bytes.
pub fn grid(samples: &Samples<'_>, names: &[String], count: usize) -> Result<Vec<u8>, DrawError> {
    let columns = columns(count);
    let rows = count.div_ceil(columns);
    let width = (columns as i32 * TILE_WIDTH) as u32;
    let height = (rows as i32 * TILE_HEIGHT) as u32;
    let plane = samples.height * samples.width;
    let image_len = samples.channels * plane;
    let name = |class: i64| {
        usize::try_from(class)
            .ok()
            .and_then(|c| names.get(c))
            .cloned()
            .unwrap_or_else(|| format!("#{class}"))
    };
    render_png(width, height, |root| {
        for index in 0..count {
            let (column, row) = ((index % columns) as i32, (index / columns) as i32);
            let (x0, y0) = (column * TILE_WIDTH, row * TILE_HEIGHT);
            let (label, prediction) = (samples.labels[index], samples.predictions[index]);
            let color = if label == prediction { RIGHT } else { WRONG };
            let title = format!("true: {} / pred: {}", name(label), name(prediction));
            let style = TextStyle::from((FONT, 12).into_font())
                .color(&color)
                .pos(Pos::new(HPos::Center, VPos::Center));
            drawing(root.draw(&Text::new(
                title,
                (x0 + TILE_WIDTH / 2, y0 + TITLE / 2),
                style,
            )))?;
            let image_left = x0 + (TILE_WIDTH - IMAGE) / 2;
            let image_top = y0 + TITLE + BORDER;
            drawing(root.draw(&Rectangle::new(
                [
                    (image_left - BORDER, image_top - BORDER),
                    (image_left + IMAGE + BORDER, image_top + IMAGE + BORDER),
                ],
                color.filled(),
            )))?;
            let image = &samples.pixels[index * image_len..(index + 1) * image_len];
            let scale_x = IMAGE as f64 / samples.width as f64;
            let scale_y = IMAGE as f64 / samples.height as f64;
            for y in 0..samples.height {
                for x in 0..samples.width {
                    let value = |channel: usize| {
                        (image[channel * plane + y * samples.width + x].clamp(0.0, 1.0) * 255.0)
                            .round() as u8
                    };
                    let pixel = if samples.channels >= 3 {
                        RGBColor(value(0), value(1), value(2))
                    } else {
                        let v = value(0);
                        RGBColor(v, v, v)
                    };
                    let left = image_left + (x as f64 * scale_x) as i32;
                    let top = image_top + (y as f64 * scale_y) as i32;
                    let right = image_left + ((x + 1) as f64 * scale_x) as i32;
                    let bottom = image_top + ((y + 1) as f64 * scale_y) as i32;
                    drawing(root.draw(&Rectangle::new(
                        [(left, top), (right, bottom)],
                        pixel.filled(),
                    )))?;
                }
            }
        }
        Ok(())
    })
}

pub struct SampleVisualization {
    num_samples: usize,
    names: Vec<String>,
}

#[vigil_plugin_api::monitor]
impl Monitor for SampleVisualization {
    const INFO: MonitorInfo = MonitorInfo {
        name: "sample-visualization",
        version: env!("CARGO_PKG_VERSION"),
        description: "grid of validation images, true vs predicted (green right, red wrong)",
        events: EventSet::of(&[EventKind::VALIDATION_END]),
        subscriptions: Subscriptions::SAMPLE_IMAGES,
    };

    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        if !(1..=64).contains(&settings.num_samples) {
            return Err(Error::Settings(format!(
                "num_samples must be between 1 and 64, got {}",
                settings.num_samples
            )));
        }
        Ok(SampleVisualization {
            num_samples: settings.num_samples as usize,
            names: ctx.class_names().iter().map(|s| s.to_string()).collect(),
        })
    }

    /// No state: every grid is drawn from the validation pass it shows. Saving an empty state
    /// still says "restore me instead of starting fresh".
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(Vec::new()))
    }

    fn on_validation_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        // None: the run's inputs are not images (the host says so once).
        let Some(batch) = ctx.sample_images()? else {
            return Ok(());
        };
        let count = self
            .num_samples
            .min(batch.count as usize)
            .min(batch.predictions.len());
        if count == 0 {
            return Ok(());
        }
        let samples = Samples {
            pixels: batch.pixels.as_slice(),
            channels: batch.channels as usize,
            height: batch.height as usize,
            width: batch.width as usize,
            labels: batch.labels.as_slice(),
            predictions: batch.predictions.as_slice(),
        };
        let png = grid(&samples, &self.names, count).map_err(|e| Error::Monitor(e.to_string()))?;
        let epoch = ctx.counters().epoch;
        ctx.write_file(
            &format!("epoch_{epoch:03}/sample_predictions.png"),
            ArtifactKind::PNG,
            &png,
        )
    }
}

export_monitor!(SampleVisualization);

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_monitor_draw::decode_png;

    #[test]
    fn tiles_are_green_when_right_and_red_when_wrong() {
        // Four 2×2 grey images; the second and fourth are mispredicted.
        let pixels: Vec<f32> = (0..16).map(|i| (i % 4) as f32 / 3.0).collect();
        let samples = Samples {
            pixels: &pixels,
            channels: 1,
            height: 2,
            width: 2,
            labels: &[0, 1, 2, 0],
            predictions: &[0, 2, 2, 1],
        };
        let names: Vec<String> = ["zero", "one", "two"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let png = grid(&samples, &names, 4).unwrap();
        let (width, height, rgb) = decode_png(&png).unwrap();
        assert_eq!(
            (width, height),
            (2 * TILE_WIDTH as u32, 2 * TILE_HEIGHT as u32)
        );
        let at = |x: i32, y: i32| {
            let i = ((y as u32 * width + x as u32) * 3) as usize;
            RGBColor(rgb[i], rgb[i + 1], rgb[i + 2])
        };
        // A point inside the left border of each tile's image.
        let border = |tile: i32| {
            let (column, row) = (tile % 2, tile / 2);
            at(
                column * TILE_WIDTH + (TILE_WIDTH - IMAGE) / 2 - BORDER / 2,
                row * TILE_HEIGHT + TITLE + BORDER + IMAGE / 2,
            )
        };
        assert_eq!(border(0), RIGHT);
        assert_eq!(border(1), WRONG);
        assert_eq!(border(2), RIGHT);
        assert_eq!(border(3), WRONG);
        // The image itself is drawn: its last pixel (value 1) is white, its first black.
        let image_left = (TILE_WIDTH - IMAGE) / 2;
        assert_eq!(at(image_left + 2, TITLE + BORDER + 2), RGBColor(0, 0, 0));
        assert_eq!(
            at(image_left + IMAGE - 3, TITLE + BORDER + IMAGE - 3),
            RGBColor(255, 255, 255)
        );
        // Titles carry the colours too (anti-aliased: clearly green or clearly red ink).
        let inked = |x0: i32, hue: fn(RGBColor) -> bool| {
            (x0..x0 + TILE_WIDTH)
                .flat_map(|x| (0..TITLE).map(move |y| (x, y)))
                .filter(|&(x, y)| hue(at(x, y)))
                .count()
        };
        let green = |c: RGBColor| {
            i32::from(c.1) > i32::from(c.0) + 60 && i32::from(c.1) > i32::from(c.2) + 60
        };
        let red = |c: RGBColor| {
            i32::from(c.0) > i32::from(c.1) + 60 && i32::from(c.0) > i32::from(c.2) + 60
        };
        assert!(
            inked(0, green) > 20 && inked(0, red) == 0,
            "the right tile's title is green"
        );
        assert!(
            inked(TILE_WIDTH, red) > 20 && inked(TILE_WIDTH, green) == 0,
            "the wrong tile's title is red"
        );
    }

    #[test]
    fn the_grid_is_as_square_as_possible() {
        assert_eq!(columns(16), 4);
        assert_eq!(columns(10), 4);
        assert_eq!(columns(1), 1);
    }

    #[test]
    fn through_the_fake_host_draws_the_offered_images_and_skips_runs_without_images() {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let mut host = FakeHost::new();
        host.class_names(&["zero", "one"]);
        host.counters_mut().epoch = 3;
        let mut harness = Harness::<SampleVisualization>::new("num_samples = 2", host).unwrap();
        // A run whose inputs are not images: nothing to draw, no error.
        harness.fire(EventKind::VALIDATION_END).unwrap();
        assert!(harness.host().files().is_empty());

        // Three 2×2 RGB images offered; two are drawn, one grid of 2 × 1 tiles.
        let pixels = vec![0.5f32; 3 * 3 * 2 * 2];
        harness
            .host_mut()
            .sample_images(&pixels, [3, 3, 2, 2], &[0, 1, 1], &[0, 0, 1]);
        harness.fire(EventKind::VALIDATION_END).unwrap();
        let file = harness
            .host()
            .file("epoch_003/sample_predictions.png")
            .unwrap();
        assert_eq!(file.kind, ArtifactKind::PNG);
        let (width, height, _) = decode_png(&file.bytes).unwrap();
        assert_eq!((width, height), (2 * TILE_WIDTH as u32, TILE_HEIGHT as u32));
        let refused = Harness::<SampleVisualization>::new("num_samples = 65", FakeHost::new());
        assert!(refused.err().unwrap().contains("between 1 and 64"));
    }
}
