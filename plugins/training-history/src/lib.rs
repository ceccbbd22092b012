//! The `training-history` monitor: the loss and accuracy curves so far, redrawn every epoch.
//!
//! ```toml
//! [[monitors]]
//! name = "training-history"
//! ```
//!
//! Writes `training_history/loss.png` (train and validation loss per epoch) and
//! `training_history/accuracy.png` (train and validation accuracy, and the validation top-k
//! accuracy when the host logs one) at the end of every epoch, replacing the previous versions.

use vigil_monitor_draw::plotters::style::{BLUE, GREEN, RED};
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
    /// Validation top-k accuracy, with its k (the host's `val_top_k`).
    pub val_top: Vec<(f64, f64)>,
    pub top_k: Option<u64>,
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
        let top_label = format!("validation top-{}", self.top_k.unwrap_or(0));
        let mut accuracy_series = vec![
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
        ];
        if !self.val_top.is_empty() {
            accuracy_series.push(Series {
                label: &top_label,
                points: &self.val_top,
                color: GREEN,
            });
        }
        let accuracy =
            line_chart("Accuracy", "epoch", "accuracy", &accuracy_series).map_err(draw)?;
        Ok((loss, accuracy))
    }
}

pub struct TrainingHistory {
    history: History,
}

#[vigil_plugin_api::monitor]
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
        if let Some(k) = ctx.metric("val_top_k") {
            let k = k as u64;
            if let Some(value) = ctx.metric(&format!("val_acc_top{k}")) {
                history.top_k = Some(k);
                history.val_top.retain(|&(e, _)| e != epoch);
                history.val_top.push((epoch, value));
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
        let flatten = |series: &Vec<(f64, f64)>| -> Vec<f64> {
            series.iter().flat_map(|&(e, v)| [e, v]).collect()
        };
        for series in self.history.series() {
            writer.f64s(&flatten(series));
        }
        // After the four series of version 1.0 state: the top-k series and its k.
        writer.option(self.history.top_k, |w, k| {
            w.u64(k);
        });
        writer.f64s(&flatten(&self.history.val_top));
        Ok(Some(writer.finish()))
    }

    fn restore_state(
        &mut self,
        saved: SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        // State of this version; else that of 1.0, which had no top-k series.
        self.history =
            read_history(saved.bytes, true).or_else(|_| read_history(saved.bytes, false))?;
        Ok(())
    }
}

fn read_history(bytes: &[u8], with_top_k: bool) -> Result<History, Error> {
    let mut reader = StateReader::new(bytes);
    let mut history = History::default();
    let pairs = |flat: Vec<f64>| -> Vec<(f64, f64)> {
        flat.chunks_exact(2).map(|p| (p[0], p[1])).collect()
    };
    for series in history.series_mut() {
        *series = pairs(reader.f64s()?);
    }
    if with_top_k {
        history.top_k = reader.option(|r| r.u64())?;
        history.val_top = pairs(reader.f64s()?);
    }
    reader.finish()?;
    Ok(history)
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
            ..History::default()
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

    fn green_pixels(png: &[u8]) -> usize {
        let (_, _, rgb) = decode_png(png).unwrap();
        rgb.chunks_exact(3)
            .filter(|p| p[1] > 100 && p[0] < 60 && p[2] < 60)
            .count()
    }

    #[test]
    fn the_top_k_line_is_drawn_when_there_is_one() {
        let mut history = History {
            train_acc: vec![(1.0, 0.6), (2.0, 0.8)],
            val_acc: vec![(1.0, 0.62), (2.0, 0.75)],
            ..History::default()
        };
        let (_, without) = history.charts().unwrap();
        history.top_k = Some(5);
        history.val_top = vec![(1.0, 0.9), (2.0, 0.97)];
        let (_, with) = history.charts().unwrap();
        assert!(green_pixels(&with) > 100 + green_pixels(&without));
    }

    #[test]
    fn state_of_this_version_and_of_version_1_0_both_restore() {
        let history = History {
            train_loss: vec![(1.0, 1.0)],
            val_loss: vec![(1.0, 0.9)],
            train_acc: vec![(1.0, 0.6)],
            val_acc: vec![(1.0, 0.62)],
            val_top: vec![(1.0, 0.95)],
            top_k: Some(3),
        };
        let mut writer = StateWriter::new();
        for series in history.series() {
            let flat: Vec<f64> = series.iter().flat_map(|&(e, v)| [e, v]).collect();
            writer.f64s(&flat);
        }
        let old = writer.finish();
        let read = read_history(&old, true)
            .or_else(|_| read_history(&old, false))
            .unwrap();
        assert_eq!(
            (read.val_acc.clone(), read.top_k),
            (history.val_acc.clone(), None)
        );
        writer = StateWriter::new();
        for series in history.series() {
            let flat: Vec<f64> = series.iter().flat_map(|&(e, v)| [e, v]).collect();
            writer.f64s(&flat);
        }
        writer.option(Some(3u64), |w, k| {
            w.u64(k);
        });
        writer.f64s(&[1.0, 0.95]);
        let new = read_history(&writer.finish(), true).unwrap();
        assert_eq!((new.top_k, new.val_top), (Some(3), vec![(1.0, 0.95)]));
    }

    /// End epochs `epochs` through `harness`, with metrics that depend on the epoch.
    fn end_epochs(
        harness: &mut vigil_plugin_api::testing::Harness<TrainingHistory>,
        epochs: std::ops::RangeInclusive<u32>,
    ) {
        for epoch in epochs {
            let e = f64::from(epoch);
            let host = harness.host_mut();
            host.counters_mut().epoch = epoch;
            host.metric("train_loss", 2.0 / e)
                .metric("val_loss", 2.2 / e)
                .metric("train_acc", 1.0 - 0.5 / e)
                .metric("val_acc", 1.0 - 0.6 / e)
                .metric("val_top_k", 5.0)
                .metric("val_acc_top5", 1.0 - 0.1 / e);
            harness.fire(EventKind::TRAIN_EPOCH_END).unwrap();
        }
    }

    #[test]
    fn through_the_fake_host_a_restored_history_draws_what_the_straight_one_does() {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let mut straight = Harness::<TrainingHistory>::new("", FakeHost::new()).unwrap();
        end_epochs(&mut straight, 1..=3);
        let mut first = Harness::<TrainingHistory>::new("", FakeHost::new()).unwrap();
        end_epochs(&mut first, 1..=2);
        let saved = first.save_state().unwrap().unwrap();
        let mut resumed =
            Harness::<TrainingHistory>::restored("", FakeHost::new(), "1.0.0", saved).unwrap();
        end_epochs(&mut resumed, 3..=3);
        let mut fresh = Harness::<TrainingHistory>::new("", FakeHost::new()).unwrap();
        end_epochs(&mut fresh, 3..=3);
        for chart in ["training_history/loss.png", "training_history/accuracy.png"] {
            let bytes = |h: &Harness<TrainingHistory>| h.host().file(chart).unwrap().bytes.clone();
            assert_eq!(straight.host().file(chart).unwrap().writes, 3);
            assert_eq!(straight.host().file(chart).unwrap().kind, ArtifactKind::PNG);
            assert!(
                bytes(&straight) == bytes(&resumed),
                "{chart}: resumed differs"
            );
            assert!(
                bytes(&straight) != bytes(&fresh),
                "{chart}: the history shows"
            );
        }
    }
}
