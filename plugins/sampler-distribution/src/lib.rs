//! The `sampler-distribution` monitor: with the weighted sampler (`sampler = "weighted"`), how
//! many samples of each class an epoch drew, against what the sampler's weights lead one to
//! expect.
//!
//! ```toml
//! [[monitors]]
//! name = "sampler-distribution"
//! ```
//!
//! At the start of every epoch (from the first) it logs `sampler/count/<class>` and
//! `sampler/ratio/<class>` (count / expected; `/` in class names becomes `-`), prints a table,
//! and appends the epoch's rows to `sampler_distribution.csv`. Without a tracking sampler it
//! says so once and stays idle.

use vigil_plugin_api::{
    expect_no_settings, export_monitor, ArtifactKind, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, SavedState, StateReader, StateWriter, Subscriptions,
};

/// Per-class draws of one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassDraws {
    pub counts: Vec<u64>,
    pub expected: Vec<f64>,
}

impl ClassDraws {
    /// Count the classes of the drawn `indices` and the expectation `draws · W_c / W` from the
    /// per-sample `weights` (`labels` gives each sample's class).
    pub fn new(indices: &[i64], weights: &[f64], labels: &[i64], classes: usize) -> Self {
        let class_of = |index: usize| {
            labels
                .get(index)
                .and_then(|&l| usize::try_from(l).ok())
                .filter(|&l| l < classes)
        };
        let mut counts = vec![0u64; classes];
        for &index in indices {
            if let Some(class) = usize::try_from(index).ok().and_then(class_of) {
                counts[class] += 1;
            }
        }
        let mut class_weight = vec![0.0; classes];
        for (index, &weight) in weights.iter().enumerate() {
            if let Some(class) = class_of(index) {
                class_weight[class] += weight;
            }
        }
        let total: f64 = class_weight.iter().sum();
        let draws = indices.len() as f64;
        let expected = class_weight
            .iter()
            .map(|w| if total > 0.0 { draws * w / total } else { 0.0 })
            .collect();
        ClassDraws { counts, expected }
    }

    /// count / expected per class (0 where nothing was expected).
    pub fn ratios(&self) -> Vec<f64> {
        self.counts
            .iter()
            .zip(&self.expected)
            .map(|(&count, &expected)| {
                if expected > 0.0 {
                    count as f64 / expected
                } else {
                    0.0
                }
            })
            .collect()
    }
}

pub struct SamplerDistribution {
    names: Vec<String>,
    said_idle: bool,
    wrote_header: bool,
}

#[vigil_plugin_api::monitor]
impl Monitor for SamplerDistribution {
    const INFO: MonitorInfo = MonitorInfo {
        name: "sampler-distribution",
        version: env!("CARGO_PKG_VERSION"),
        description: "classes drawn by the weighted sampler vs expected",
        events: EventSet::of(&[EventKind::TRAIN_EPOCH_START]),
        subscriptions: Subscriptions::SAMPLER,
    };

    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        expect_no_settings(settings)?;
        Ok(SamplerDistribution {
            names: ctx.class_names().iter().map(|s| s.to_string()).collect(),
            said_idle: false,
            wrote_header: false,
        })
    }

    fn on_train_epoch_start(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let Some(draws) = ctx.sampler_draws()? else {
            if !self.said_idle {
                self.said_idle = true;
                ctx.info("the run uses no tracking sampler (set sampler = \"weighted\"); nothing to report");
            }
            return Ok(());
        };
        let stats = ClassDraws::new(
            draws.indices.as_slice(),
            draws.weights.as_slice(),
            draws.labels.as_slice(),
            self.names.len(),
        );
        let ratios = stats.ratios();
        let epoch = ctx.counters().epoch;
        let mut csv = String::new();
        if !self.wrote_header {
            csv.push_str("epoch,class_index,class,count,expected,ratio\n");
            self.wrote_header = true;
        }
        let width = self.names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
        ctx.info(&format!("epoch {epoch}: {} draws", draws.indices.len()));
        ctx.info(&format!(
            "  {:<width$}  {:>8}  {:>10}  {:>6}",
            "class", "count", "expected", "ratio"
        ));
        for (index, name) in self.names.iter().enumerate() {
            let (count, expected, ratio) =
                (stats.counts[index], stats.expected[index], ratios[index]);
            let tag = name.replace('/', "-");
            ctx.log(&format!("sampler/count/{tag}"), count as f64);
            ctx.log(&format!("sampler/ratio/{tag}"), ratio);
            ctx.info(&format!(
                "  {name:<width$}  {count:>8}  {expected:>10.1}  {ratio:>6.3}"
            ));
            csv.push_str(&format!(
                "{epoch},{index},\"{}\",{count},{expected:.3},{ratio:.5}\n",
                name.replace('"', "\"\"")
            ));
        }
        ctx.append_file(
            "sampler_distribution.csv",
            ArtifactKind::TEXT,
            csv.as_bytes(),
        )
    }

    /// Whether the CSV header is written (the host cuts the CSV back to its length at the
    /// checkpoint), and whether the idle note was given.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(
            StateWriter::new()
                .bool(self.wrote_header)
                .bool(self.said_idle)
                .finish(),
        ))
    }

    fn restore_state(
        &mut self,
        saved: SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        let mut reader = StateReader::new(saved.bytes);
        self.wrote_header = reader.bool()?;
        self.said_idle = reader.bool()?;
        reader.finish()
    }
}

export_monitor!(SamplerDistribution);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_to_the_draws_and_ratios_are_near_one() {
        // 300 samples, classes 0/1/2 weighted 1:2:7 per sample; 1000 weighted draws.
        let labels: Vec<i64> = (0..300).map(|i| i % 3).collect();
        let weights: Vec<f64> = labels
            .iter()
            .map(|&l| [1.0, 2.0, 7.0][l as usize])
            .collect();
        let total: f64 = weights.iter().sum();
        let mut state = 12345u64;
        let indices: Vec<i64> = (0..1000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let target = (state >> 11) as f64 / (1u64 << 53) as f64 * total;
                let mut acc = 0.0;
                weights
                    .iter()
                    .position(|w| {
                        acc += w;
                        acc > target
                    })
                    .unwrap_or(299) as i64
            })
            .collect();
        let stats = ClassDraws::new(&indices, &weights, &labels, 3);
        assert_eq!(stats.counts.iter().sum::<u64>(), 1000);
        for (class, &p) in [0.1, 0.2, 0.7].iter().enumerate() {
            assert!((stats.expected[class] - 1000.0 * p).abs() < 1e-9);
            let sigma = (1000.0 * p * (1.0 - p)).sqrt() / (1000.0 * p);
            let ratio = stats.ratios()[class];
            assert!(
                (ratio - 1.0).abs() < 5.0 * sigma,
                "class {class}: ratio {ratio}"
            );
        }
    }

    #[test]
    fn nothing_expected_gives_a_zero_ratio() {
        let stats = ClassDraws::new(&[0, 0], &[1.0, 0.0], &[0, 1], 2);
        assert_eq!(stats.counts, vec![2, 0]);
        assert_eq!(stats.ratios(), vec![1.0, 0.0]);
    }

    #[test]
    fn through_the_fake_host_counts_draws_per_class_against_the_weights() {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let mut host = FakeHost::new();
        host.class_names(&["cat", "a/b"]);
        let mut harness = Harness::<SamplerDistribution>::new("", host).unwrap();
        // Epoch 1 of a run without a tracking sampler: a note, nothing logged.
        harness.fire(EventKind::TRAIN_EPOCH_START).unwrap();
        assert!(harness.host().all_logged().is_empty());
        // Weights 1, 1, 2, 2 for labels 0, 0, 1, 1: class 1 is expected in 4 of 6 draws.
        for epoch in [2, 3] {
            let host = harness.host_mut();
            host.counters_mut().epoch = epoch;
            host.sampler_draws(&[2, 2, 3, 3, 2, 0], &[1.0, 1.0, 2.0, 2.0], &[0, 0, 1, 1]);
            harness.fire(EventKind::TRAIN_EPOCH_START).unwrap();
        }
        let host = harness.host();
        assert_eq!(host.logged("sampler/count/cat"), [(0, 1.0), (0, 1.0)]);
        assert_eq!(host.logged("sampler/ratio/cat"), [(0, 0.5), (0, 0.5)]);
        assert_eq!(host.logged("sampler/count/a-b"), [(0, 5.0), (0, 5.0)]);
        assert_eq!(host.logged("sampler/ratio/a-b"), [(0, 1.25), (0, 1.25)]);
        let csv = String::from_utf8(host.file("sampler_distribution.csv").unwrap().bytes.clone());
        assert_eq!(
            csv.unwrap(),
            "epoch,class_index,class,count,expected,ratio\n\
             2,0,\"cat\",1,2.000,0.50000\n2,1,\"a/b\",5,4.000,1.25000\n\
             3,0,\"cat\",1,2.000,0.50000\n3,1,\"a/b\",5,4.000,1.25000\n"
        );
        let notes = host.messages_at(vigil_plugin_api::LogLevel::INFO);
        assert_eq!(
            notes
                .iter()
                .filter(|n| n.contains("no tracking sampler"))
                .count(),
            1
        );
    }
}
