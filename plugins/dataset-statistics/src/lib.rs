//! The `dataset-statistics` monitor: how the classes are distributed in the training and
//! validation splits, once at the start of training.
//!
//! ```toml
//! [[monitors]]
//! name = "dataset-statistics"
//! ```
//!
//! Prints a table (split, class index, name, count, %) and writes `dataset_statistics.csv`.

use vigil_plugin_api::{
    expect_no_settings, export_monitor, ArtifactKind, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, Subscriptions,
};

/// Count of each class among `labels`; labels outside the classes are returned apart.
pub fn class_counts(labels: &[i64], classes: usize) -> (Vec<u64>, u64) {
    let mut counts = vec![0u64; classes];
    let mut outside = 0;
    for &label in labels {
        match usize::try_from(label).ok().filter(|&l| l < classes) {
            Some(l) => counts[l] += 1,
            None => outside += 1,
        }
    }
    (counts, outside)
}

/// CSV rows `split,index,class,count,percent` for one split.
pub fn csv_rows(split: &str, names: &[&str], counts: &[u64]) -> String {
    let total: u64 = counts.iter().sum();
    let mut out = String::new();
    for (index, (name, &count)) in names.iter().zip(counts).enumerate() {
        let percent = if total == 0 {
            0.0
        } else {
            100.0 * count as f64 / total as f64
        };
        out.push_str(&format!(
            "{split},{index},\"{}\",{count},{percent:.4}\n",
            name.replace('"', "\"\"")
        ));
    }
    out
}

pub struct DatasetStatistics;

#[vigil_plugin_api::monitor]
impl Monitor for DatasetStatistics {
    const INFO: MonitorInfo = MonitorInfo {
        name: "dataset-statistics",
        version: env!("CARGO_PKG_VERSION"),
        description: "class distribution of the training and validation splits",
        events: EventSet::of(&[EventKind::FIT_START]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        expect_no_settings(settings)?;
        Ok(DatasetStatistics)
    }

    fn on_fit_start(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let names: Vec<String> = ctx.class_names().iter().map(|s| s.to_string()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut csv = String::from("split,index,class,count,percent\n");
        let width = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
        for split in ["train", "val"] {
            let labels = if split == "train" {
                ctx.train_labels()?
            } else {
                ctx.val_labels()?
            };
            let (counts, outside) = class_counts(&labels, names.len());
            if outside > 0 {
                ctx.warn(&format!(
                    "{outside} {split} labels are outside the {} classes",
                    names.len()
                ));
            }
            ctx.info(&format!("{split} split: {} samples", labels.len()));
            ctx.info(&format!(
                "  {:>5}  {:<width$}  {:>8}  {:>7}",
                "index", "class", "count", "%"
            ));
            let total = labels.len().max(1) as f64;
            for (index, (name, count)) in names.iter().zip(&counts).enumerate() {
                ctx.info(&format!(
                    "  {index:>5}  {name:<width$}  {count:>8}  {:>6.2}%",
                    100.0 * *count as f64 / total
                ));
            }
            csv.push_str(&csv_rows(split, &names, &counts));
        }
        ctx.write_file("dataset_statistics.csv", ArtifactKind::TEXT, csv.as_bytes())
    }

    /// Its work is done at `fit_start`: on resume it is restored (with nothing), so that the
    /// tables and files are not written a second time.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(Vec::new()))
    }
}

export_monitor!(DatasetStatistics);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentages() {
        let labels = [0, 2, 2, 1, 2, 7];
        let (counts, outside) = class_counts(&labels, 3);
        assert_eq!(counts, vec![1, 1, 3]);
        assert_eq!(outside, 1);
        let rows = csv_rows("train", &["a", "b", "c"], &counts);
        assert_eq!(
            rows,
            "train,0,\"a\",1,20.0000\ntrain,1,\"b\",1,20.0000\ntrain,2,\"c\",3,60.0000\n"
        );
    }

    #[test]
    fn through_the_fake_host_counts_both_splits_from_the_hosts_labels() {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let mut host = FakeHost::new();
        host.class_names(&["a", "b"])
            .labels(&[0, 1, 1, 1], &[1, 0, 5]);
        let mut harness = Harness::<DatasetStatistics>::new("", host).unwrap();
        harness.fire(EventKind::FIT_START).unwrap();
        let host = harness.host();
        assert_eq!(
            String::from_utf8(host.file("dataset_statistics.csv").unwrap().bytes.clone()).unwrap(),
            "split,index,class,count,percent\n\
             train,0,\"a\",1,25.0000\ntrain,1,\"b\",3,75.0000\n\
             val,0,\"a\",1,50.0000\nval,1,\"b\",1,50.0000\n"
        );
        assert_eq!(host.warnings(), ["1 val labels are outside the 2 classes"]);
        assert_eq!(host.queries(), ["vigil.labels.train", "vigil.labels.val"]);
    }
}
