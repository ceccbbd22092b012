//! The `training-history` monitor: the loss and accuracy curves so far, redrawn every epoch.
//!
//! ```toml
//! [[monitors]]
//! name = "training-history"
//! ```
//!
//! Writes `training_history/loss.png` (train and validation loss per epoch) and
//! `training_history/accuracy.png` (train and validation accuracy) at the end of every epoch,
//! replacing the previous versions.

use vigil_monitor_draw::plotters::style::{BLUE, RED};
use vigil_monitor_draw::{line_chart, Series};
use vigil_plugin_api::{
    expect_no_settings, export_monitor, ArtifactKind, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, SavedState, StateReader, StateWriter, Subscriptions,
};

/// Per-epoch metrics: (epoch, value).
#[derive(Debug, Default, Clone)]
pub struct History {
    pub train_loss: Vec<(f64, f64)>,
    pub val_loss: Vec<(f64, f64)>,
    pub train_acc: Vec<(f64, f64)>,
    pub val_acc: Vec<(f64, f64)>,
}

impl History {
    fn series(&self) -> [&Vec<(f64, f64)>; 4] {
        [
            &self.train_loss,
            &self.val_loss,
            &self.train_acc,
            &self.val_acc,
        ]
    }

    fn series_mut(&mut self) -> [&mut Vec<(f64, f64)>; 4] {
        [
            &mut self.train_loss,
            &mut self.val_loss,
            &mut self.train_acc,
            &mut self.val_acc,
        ]
    }

    /// The loss chart and the accuracy chart as PNG bytes.
    pub fn charts(&self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let draw = |e: vigil_monitor_draw::DrawError| Error::Monitor(e.to_string());
        let loss = line_chart(
            "Loss",
            "epoch",
            "cross-entropy (nats)",
            &[
                Series {
                    label: "train",
                    points: &self.train_loss,
                    color: BLUE,
                },
                Series {
                    label: "validation",
                    points: &self.val_loss,
                    color: RED,
                },
            ],
        )
        .map_err(draw)?;
        let accuracy = line_chart(
            "Accuracy",
            "epoch",
            "accuracy",
            &[
                Series {
                    label: "train",
                    points: &self.train_acc,
                    color: BLUE,
                },
                Series {
                    label: "validation",
                    points: &self.val_acc,
                    color: RED,
                },
            ],
        )
        .map_err(draw)?;
        Ok((loss, accuracy))
    }
}

pub struct TrainingHistory {
    history: History,
}

impl Monitor for TrainingHistory {
    const INFO: MonitorInfo = MonitorInfo {
        name: "training-history",
        version: env!("CARGO_PKG_VERSION"),
        description: "loss and accuracy curves per epoch (training_history/*.png)",
        events: EventSet::of(&[EventKind::TRAIN_EPOCH_END]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        expect_no_settings(settings)?;
        Ok(TrainingHistory {
            history: History::default(),
        })
    }

    fn on_train_epoch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let epoch = f64::from(ctx.counters().epoch);
        let history = &mut self.history;
        for (name, series) in [
            ("train_loss", &mut history.train_loss),
            ("val_loss", &mut history.val_loss),
            ("train_acc", &mut history.train_acc),
            ("val_acc", &mut history.val_acc),
        ] {
            if let Some(value) = ctx.metric(name) {
                series.retain(|&(e, _)| e != epoch);
                series.push((epoch, value));
            }
        }
        let (loss, accuracy) = self.history.charts()?;
        ctx.write_file("training_history/loss.png", ArtifactKind::PNG, &loss)?;
        ctx.write_file(
            "training_history/accuracy.png",
            ArtifactKind::PNG,
            &accuracy,
        )
    }

    /// Every point so far, so that the charts after a resume show the whole run.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        let mut writer = StateWriter::new();
        for series in self.history.series() {
            let flat: Vec<f64> = series.iter().flat_map(|&(e, v)| [e, v]).collect();
            writer.f64s(&flat);
        }
        Ok(Some(writer.finish()))
    }

    fn restore_state(
        &mut self,
        saved: SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        let mut reader = StateReader::new(saved.bytes);
        let mut history = History::default();
        for series in history.series_mut() {
            let flat = reader.f64s()?;
            *series = flat.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        }
        reader.finish()?;
        self.history = history;
        Ok(())
    }
}

export_monitor!(TrainingHistory);

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_monitor_draw::decode_png;

    #[test]
    fn both_charts_are_pngs_with_both_lines() {
        let history = History {
            train_loss: vec![(1.0, 1.0), (2.0, 0.6), (3.0, 0.4)],
            val_loss: vec![(1.0, 0.9), (2.0, 0.7), (3.0, 0.65)],
            train_acc: vec![(1.0, 0.6), (2.0, 0.8), (3.0, 0.9)],
            val_acc: vec![(1.0, 0.62), (2.0, 0.75), (3.0, 0.8)],
        };
        let (loss, accuracy) = history.charts().unwrap();
        for png in [loss, accuracy] {
            let (width, height, rgb) = decode_png(&png).unwrap();
            assert_eq!((width, height), (800, 500));
            let blue = rgb
                .chunks_exact(3)
                .filter(|p| p[2] > 200 && p[0] < 60 && p[1] < 60)
                .count();
            let red = rgb
                .chunks_exact(3)
                .filter(|p| p[0] > 200 && p[1] < 60 && p[2] < 60)
                .count();
            assert!(blue > 100 && red > 100, "blue {blue}, red {red}");
        }
    }
}
