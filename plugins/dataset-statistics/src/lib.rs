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

/// Labels from the host's `vigil.labels.*` answer (little-endian i64s).
pub fn decode_labels(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|chunk| i64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])))
        .collect()
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
        for (split, query) in [("train", "vigil.labels.train"), ("val", "vigil.labels.val")] {
            let labels = decode_labels(&ctx.query(query, &[])?);
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
    fn labels_decode_from_little_endian_bytes() {
        let bytes: Vec<u8> = [3i64, -1, 9].iter().flat_map(|l| l.to_le_bytes()).collect();
        assert_eq!(decode_labels(&bytes), vec![3, -1, 9]);
    }
}
