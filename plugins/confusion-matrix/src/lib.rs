//! The `confusion-matrix` monitor: predictions against labels over each validation pass.
//!
//! ```toml
//! [[monitors]]
//! name = "confusion-matrix"
//! [monitors.settings]
//! normalize = "none"   # "none" (counts), "true" (rows sum to 1), "pred" (columns), "all"
//! ```
//!
//! At the end of each validation it writes `epoch_{epoch:03}/confusion_matrix.png` (a Blues
//! heatmap, rows = true class, columns = predicted class, class names on both axes, values in
//! the cells when there are at most 20 classes, a colour bar, and the epoch and accuracy in the
//! title) and `epoch_{epoch:03}/confusion_matrix.csv` beside it. With several validations an
//! epoch, the files show the epoch's latest. Empty rows or columns normalise to 0, never NaN.

use serde::Deserialize;
use vigil_monitor_draw::plotters::prelude::*;
use vigil_monitor_draw::plotters::style::text_anchor::{HPos, Pos, VPos};
use vigil_monitor_draw::{blues, drawing, render_png, DrawError, FONT};
use vigil_plugin_api::{
    export_monitor, parse_settings, ArtifactKind, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, SavedState, StateReader, StateWriter, Subscriptions,
};

/// How counts become the values shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    None,
    True,
    Pred,
    All,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    normalize: Normalize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            normalize: Normalize::None,
        }
    }
}

/// A confusion matrix: `counts[true][pred]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        ConfusionMatrix {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Count each (label, prediction) pair; pairs outside the classes are skipped and counted.
    pub fn add(&mut self, labels: &[i64], predictions: &[i64]) -> usize {
        let mut skipped = 0;
        for (&label, &prediction) in labels.iter().zip(predictions) {
            let valid = |v: i64| usize::try_from(v).ok().filter(|&v| v < self.classes);
            match (valid(label), valid(prediction)) {
                (Some(row), Some(column)) => self.counts[row * self.classes + column] += 1,
                _ => skipped += 1,
            }
        }
        skipped
    }

    pub fn count(&self, row: usize, column: usize) -> u64 {
        self.counts[row * self.classes + column]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|i| self.count(i, i)).sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// The values to show: counts, or counts divided by their row, column or grand total
    /// (0 where that total is 0).
    pub fn values(&self, normalize: Normalize) -> Vec<f64> {
        let n = self.classes;
        let row_sum = |r: usize| (0..n).map(|c| self.count(r, c)).sum::<u64>();
        let column_sum = |c: usize| (0..n).map(|r| self.count(r, c)).sum::<u64>();
        let total = self.total();
        (0..n * n)
            .map(|k| {
                let (r, c) = (k / n, k % n);
                let count = self.count(r, c) as f64;
                let divisor = match normalize {
                    Normalize::None => return count,
                    Normalize::True => row_sum(r),
                    Normalize::Pred => column_sum(c),
                    Normalize::All => total,
                };
                if divisor == 0 {
                    0.0
                } else {
                    count / divisor as f64
                }
            })
            .collect()
    }

    /// CSV with a header row of predicted classes and a first column of true classes.
    pub fn csv(&self, names: &[String], normalize: Normalize) -> String {
        let values = self.values(normalize);
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = String::from("\"true \\ predicted\"");
        for name in names {
            out.push(',');
            out.push_str(&quote(name));
        }
        out.push('\n');
        for (row, name) in names.iter().enumerate() {
            out.push_str(&quote(name));
            for column in 0..self.classes {
                let value = values[row * self.classes + column];
                out.push(',');
                out.push_str(&if normalize == Normalize::None {
                    format!("{value}")
                } else {
                    format!("{value:.6}")
                });
            }
            out.push('\n');
        }
        out
    }

    /// The heatmap as PNG bytes.
    pub fn heatmap(
        &self,
        names: &[String],
        normalize: Normalize,
        title: &str,
    ) -> Result<Vec<u8>, DrawError> {
        let n = self.classes;
        let values = self.values(normalize);
        let max = values
            .iter()
            .copied()
            .fold(0.0f64, f64::max)
            .max(f64::MIN_POSITIVE);
        let cell = (560 / n.max(1)).clamp(12, 70) as i32;
        let grid = cell * n as i32;
        let (left, top, bar_gap, bar_width) = (150, 60, 30, 24);
        // Wide enough for the title too (about 11 px a character at size 20), which starts at
        // the left edge: with few classes the grid alone would cut it off.
        let title_width = 20 + 11 * title.chars().count() as i32;
        let width = (left + grid + bar_gap + bar_width + 90).max(title_width) as u32;
        let height = (top + grid + 140) as u32;
        let names: Vec<String> = names.iter().map(|s| truncate(s, 16)).collect();
        render_png(width, height, |root| {
            let text = |size: i32| TextStyle::from((FONT, size).into_font()).color(&BLACK);
            drawing(root.draw(&Text::new(title.to_string(), (10, 20), text(20))))?;
            for row in 0..n {
                for column in 0..n {
                    let value = values[row * n + column];
                    let (x, y) = (left + column as i32 * cell, top + row as i32 * cell);
                    let t = value / max;
                    drawing(root.draw(&Rectangle::new(
                        [(x, y), (x + cell, y + cell)],
                        blues(t).filled(),
                    )))?;
                    if n <= 20 {
                        let label = if normalize == Normalize::None {
                            format!("{value:.0}")
                        } else {
                            format!("{value:.2}")
                        };
                        let color = if t > 0.5 { WHITE } else { BLACK };
                        let size = (cell / 3).clamp(8, 16);
                        let style = TextStyle::from((FONT, size).into_font())
                            .color(&color)
                            .pos(Pos::new(HPos::Center, VPos::Center));
                        drawing(root.draw(&Text::new(label, (x + cell / 2, y + cell / 2), style)))?;
                    }
                }
            }
            drawing(root.draw(&Rectangle::new(
                [(left, top), (left + grid, top + grid)],
                BLACK.stroke_width(1),
            )))?;
            let size = (cell / 2).clamp(9, 13);
            for (index, name) in names.iter().enumerate() {
                let middle = index as i32 * cell + cell / 2;
                let right = TextStyle::from((FONT, size).into_font())
                    .pos(Pos::new(HPos::Right, VPos::Center));
                drawing(root.draw(&Text::new(name.clone(), (left - 6, top + middle), right)))?;
                let rotated =
                    TextStyle::from((FONT, size).into_font().transform(FontTransform::Rotate270))
                        .pos(Pos::new(HPos::Right, VPos::Center));
                drawing(root.draw(&Text::new(
                    name.clone(),
                    (left + middle, top + grid + 6),
                    rotated,
                )))?;
            }
            drawing(root.draw(&Text::new(
                "predicted class",
                (left + grid / 2 - 50, height as i32 - 22),
                text(15),
            )))?;
            let axis = TextStyle::from((FONT, 15).into_font().transform(FontTransform::Rotate270))
                .pos(Pos::new(HPos::Center, VPos::Center));
            drawing(root.draw(&Text::new("true class", (16, top + grid / 2), axis)))?;
            // Colour bar.
            let bar_left = left + grid + bar_gap;
            for step in 0..grid {
                let t = 1.0 - f64::from(step) / f64::from(grid.max(1));
                drawing(root.draw(&Rectangle::new(
                    [
                        (bar_left, top + step),
                        (bar_left + bar_width, top + step + 1),
                    ],
                    blues(t).filled(),
                )))?;
            }
            drawing(root.draw(&Rectangle::new(
                [(bar_left, top), (bar_left + bar_width, top + grid)],
                BLACK.stroke_width(1),
            )))?;
            let format = |v: f64| {
                // Counts are whole numbers; half of an odd maximum is not.
                if normalize == Normalize::None && v.fract() == 0.0 {
                    format!("{v:.0}")
                } else if normalize == Normalize::None {
                    format!("{v:.1}")
                } else {
                    format!("{v:.2}")
                }
            };
            drawing(root.draw(&Text::new(
                format(max),
                (bar_left + bar_width + 5, top - 2),
                text(12),
            )))?;
            drawing(root.draw(&Text::new(
                format(max / 2.0),
                (bar_left + bar_width + 5, top + grid / 2 - 6),
                text(12),
            )))?;
            drawing(root.draw(&Text::new(
                format(0.0),
                (bar_left + bar_width + 5, top + grid - 12),
                text(12),
            )))?;
            Ok(())
        })
    }
}

fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(limit - 1).collect::<String>())
    }
}

pub struct ConfusionMatrixMonitor {
    normalize: Normalize,
    names: Vec<String>,
    matrix: ConfusionMatrix,
    skipped: usize,
}

#[vigil_plugin_api::monitor]
impl Monitor for ConfusionMatrixMonitor {
    const INFO: MonitorInfo = MonitorInfo {
        name: "confusion-matrix",
        version: env!("CARGO_PKG_VERSION"),
        description: "confusion matrix of every validation pass (heatmap PNG + CSV)",
        events: EventSet::of(&[EventKind::VALIDATION_BATCH_END, EventKind::VALIDATION_END]),
        subscriptions: Subscriptions::VALIDATION_OUTPUTS,
    };

    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        let names: Vec<String> = ctx.class_names().iter().map(|s| s.to_string()).collect();
        Ok(ConfusionMatrixMonitor {
            normalize: settings.normalize,
            matrix: ConfusionMatrix::new(names.len()),
            names,
            skipped: 0,
        })
    }

    /// The count of out-of-range predictions so far (the matrix itself starts afresh at every
    /// validation pass, and checkpoints fall between passes).
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(StateWriter::new().u64(self.skipped as u64).finish()))
    }

    fn restore_state(
        &mut self,
        saved: SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        let mut reader = StateReader::new(saved.bytes);
        self.skipped = reader.u64()? as usize;
        reader.finish()
    }

    fn on_validation_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        if ctx.counters().batch_index == 0 {
            self.matrix = ConfusionMatrix::new(self.names.len());
        }
        let batch = ctx.validation_batch()?;
        self.skipped += self
            .matrix
            .add(batch.labels.as_slice(), batch.predictions.as_slice());
        Ok(())
    }

    fn on_validation_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        if self.matrix.total() == 0 {
            return Ok(());
        }
        let epoch = ctx.counters().epoch;
        let title = format!(
            "Confusion matrix, epoch {epoch} (accuracy {:.2}%){}",
            100.0 * self.matrix.accuracy(),
            match self.normalize {
                Normalize::None => "",
                Normalize::True => ", normalised over true classes",
                Normalize::Pred => ", normalised over predictions",
                Normalize::All => ", normalised over all",
            }
        );
        let png = self
            .matrix
            .heatmap(&self.names, self.normalize, &title)
            .map_err(|e| Error::Monitor(e.to_string()))?;
        ctx.write_file(
            &format!("epoch_{epoch:03}/confusion_matrix.png"),
            ArtifactKind::PNG,
            &png,
        )?;
        let csv = self.matrix.csv(&self.names, self.normalize);
        ctx.write_file(
            &format!("epoch_{epoch:03}/confusion_matrix.csv"),
            ArtifactKind::TEXT,
            csv.as_bytes(),
        )?;
        if self.skipped > 0 {
            ctx.warn(&format!(
                "{} predictions or labels were outside the {} classes and were not counted",
                self.skipped,
                self.names.len()
            ));
            self.skipped = 0;
        }
        Ok(())
    }
}

export_monitor!(ConfusionMatrixMonitor);

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_monitor_draw::decode_png;

    /// Labels and predictions with a hand-computed matrix (rows true, columns predicted):
    ///   [[2, 1, 0],
    ///    [0, 3, 1],
    ///    [0, 0, 0]]   ← class 2 never occurs: its row is empty.
    fn sample() -> ConfusionMatrix {
        let mut matrix = ConfusionMatrix::new(3);
        let labels = [0, 0, 0, 1, 1, 1, 1];
        let predictions = [0, 0, 1, 1, 1, 1, 2];
        assert_eq!(matrix.add(&labels, &predictions), 0);
        matrix
    }

    #[test]
    fn counts_match_the_hand_computed_matrix() {
        let matrix = sample();
        assert_eq!(
            matrix.values(Normalize::None),
            vec![2.0, 1.0, 0.0, 0.0, 3.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert!((matrix.accuracy() - 5.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn each_normalisation_matches_the_hand_computed_matrix() {
        let matrix = sample();
        let close = |a: Vec<f64>, b: [f64; 9]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(
            matrix.values(Normalize::True),
            [2.0 / 3.0, 1.0 / 3.0, 0.0, 0.0, 0.75, 0.25, 0.0, 0.0, 0.0]
        ));
        assert!(close(
            matrix.values(Normalize::Pred),
            [1.0, 0.25, 0.0, 0.0, 0.75, 1.0, 0.0, 0.0, 0.0]
        ));
        assert!(close(
            matrix.values(Normalize::All),
            [
                2.0 / 7.0,
                1.0 / 7.0,
                0.0,
                0.0,
                3.0 / 7.0,
                1.0 / 7.0,
                0.0,
                0.0,
                0.0
            ]
        ));
        for normalize in [Normalize::True, Normalize::Pred, Normalize::All] {
            assert!(
                matrix.values(normalize).iter().all(|v| v.is_finite()),
                "no NaN for empty rows"
            );
        }
    }

    #[test]
    fn out_of_range_pairs_are_skipped() {
        let mut matrix = ConfusionMatrix::new(2);
        assert_eq!(matrix.add(&[0, 5, -1], &[1, 0, 0]), 2);
        assert_eq!(matrix.total(), 1);
    }

    #[test]
    fn csv_has_labelled_rows_and_columns() {
        let names = vec!["cat".to_string(), "dog".to_string(), "a \"b\"".to_string()];
        let csv = sample().csv(&names, Normalize::None);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "\"true \\ predicted\",\"cat\",\"dog\",\"a \"\"b\"\"\""
        );
        assert_eq!(lines[2], "\"dog\",0,3,1");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn the_heatmap_is_a_png_of_the_expected_size_in_blues() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let png = sample().heatmap(&names, Normalize::None, "test").unwrap();
        let (width, height, pixels) = decode_png(&png).unwrap();
        // cell = 70 for 3 classes: grid 210; width = 150 + 210 + 30 + 24 + 90, height = 60 + 210 + 140.
        assert_eq!((width, height), (504, 410));
        // The darkest cell (count 3, row 1, column 1) is the darkest blue.
        let at = |x: u32, y: u32| {
            let i = ((y * width + x) * 3) as usize;
            (pixels[i], pixels[i + 1], pixels[i + 2])
        };
        assert_eq!(at(150 + 70 + 5, 60 + 70 + 5), (0x08, 0x30, 0x6b));
        assert_eq!(
            at(150 + 140 + 5, 60 + 140 + 5),
            (0xf7, 0xfb, 0xff),
            "an empty cell is the lightest"
        );
    }

    #[test]
    fn through_the_fake_host_each_pass_counts_its_batches_from_the_logits() {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let mut host = FakeHost::new();
        host.class_names(&["a", "b", "c"]);
        host.counters_mut().epoch = 2;
        let mut harness = Harness::<ConfusionMatrixMonitor>::new("", host).unwrap();
        // Pass 1, two batches: (true a → a), (true b → c), then (true c → c), (true a → b).
        let batches: [(&[f32], &[i64]); 2] = [
            (&[5.0, 1.0, 0.0, 0.0, 1.0, 2.0], &[0, 1]),
            (&[0.0, 0.0, 9.0, 1.0, 3.0, 2.0], &[2, 0]),
        ];
        for pass in 0..2 {
            for (index, (logits, labels)) in batches.iter().enumerate() {
                harness.host_mut().counters_mut().batch_index = index as u32;
                harness.host_mut().validation_batch(logits, labels);
                harness.fire(EventKind::VALIDATION_BATCH_END).unwrap();
            }
            harness.fire(EventKind::VALIDATION_END).unwrap();
            // The second pass repeats the first: the matrix restarts at batch 0.
            let csv = &harness
                .host()
                .file("epoch_002/confusion_matrix.csv")
                .unwrap();
            assert_eq!(csv.writes, pass + 1);
            assert_eq!(
                String::from_utf8(csv.bytes.clone()).unwrap(),
                "\"true \\ predicted\",\"a\",\"b\",\"c\"\n\"a\",1,1,0\n\"b\",0,0,1\n\"c\",0,0,1\n"
            );
        }
        let png = harness
            .host()
            .file("epoch_002/confusion_matrix.png")
            .unwrap();
        assert_eq!(png.kind, ArtifactKind::PNG);
        // The whole title fits: with 3 classes the grid alone made the image too narrow for it.
        let (width, _, rgb) = decode_png(&png.bytes).unwrap();
        let inked = (0..45).any(|y| {
            (width - 12..width).any(|x| {
                let i = ((y * width + x) * 3) as usize;
                rgb[i..i + 3].iter().any(|&c| c < 200)
            })
        });
        assert!(!inked, "the title reaches the right edge");
        assert!(harness.host().warnings().is_empty());
    }
}
