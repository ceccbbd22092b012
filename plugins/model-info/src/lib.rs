//! The `model-info` monitor: what the model is, written once at the start of training.
//!
//! ```toml
//! [[monitors]]
//! name = "model-info"
//! ```
//!
//! Prints the total and trainable parameter counts, the size in MB (32-bit floats) and a
//! per-layer table, and writes `model_info.json` and `labels_mapping.json` (class index →
//! class name).

use serde::Serialize;
use vigil_plugin_api::{
    expect_no_settings, export_monitor, ArtifactKind, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, Subscriptions,
};

#[derive(Debug, Serialize, PartialEq)]
pub struct Layer {
    pub name: String,
    pub shape: Vec<u64>,
    pub parameters: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ModelInfo {
    pub total_parameters: u64,
    pub trainable_parameters: u64,
    /// Size of all parameters and buffers as 32-bit floats, in MiB.
    pub size_mb: f64,
    pub layers: Vec<Layer>,
}

impl ModelInfo {
    pub fn new(layers: Vec<Layer>, total: u64) -> Self {
        let trainable = layers.iter().map(|l| l.parameters).sum();
        let total = total.max(trainable);
        ModelInfo {
            total_parameters: total,
            trainable_parameters: trainable,
            size_mb: total as f64 * 4.0 / (1024.0 * 1024.0),
            layers,
        }
    }

    /// The per-layer table as aligned text.
    pub fn table(&self) -> String {
        let width = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!(
            "{:<width$}  {:>20}  {:>12}\n",
            "layer", "shape", "parameters"
        );
        for layer in &self.layers {
            let shape = format!("{:?}", layer.shape);
            out.push_str(&format!(
                "{:<width$}  {shape:>20}  {:>12}\n",
                layer.name, layer.parameters
            ));
        }
        out.push_str(&format!(
            "total {} parameters ({} trainable), {:.2} MB",
            self.total_parameters, self.trainable_parameters, self.size_mb
        ));
        out
    }
}

pub struct ModelInfoMonitor;

#[vigil_plugin_api::monitor]
impl Monitor for ModelInfoMonitor {
    const INFO: MonitorInfo = MonitorInfo {
        name: "model-info",
        version: env!("CARGO_PKG_VERSION"),
        description: "parameter counts, size and per-layer table; labels mapping",
        events: EventSet::of(&[EventKind::FIT_START]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        expect_no_settings(settings)?;
        Ok(ModelInfoMonitor)
    }

    fn on_fit_start(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let layers: Vec<Layer> = ctx
            .parameters()
            .iter()
            .map(|p| Layer {
                name: p.name.to_string(),
                shape: p.shape.to_vec(),
                parameters: p.numel,
            })
            .collect();
        let total = ctx.parameter_count()?.total;
        let info = ModelInfo::new(layers, total);
        for line in info.table().lines() {
            ctx.info(line);
        }
        let json =
            serde_json::to_string_pretty(&info).map_err(|e| Error::Monitor(e.to_string()))?;
        ctx.write_file("model_info.json", ArtifactKind::TEXT, json.as_bytes())?;
        let labels: serde_json::Map<String, serde_json::Value> = ctx
            .class_names()
            .iter()
            .enumerate()
            .map(|(index, name)| (index.to_string(), serde_json::Value::from(*name)))
            .collect();
        let labels =
            serde_json::to_string_pretty(&labels).map_err(|e| Error::Monitor(e.to_string()))?;
        ctx.write_file("labels_mapping.json", ArtifactKind::TEXT, labels.as_bytes())
    }

    /// Its work is done at `fit_start`: on resume it is restored (with nothing), so that the
    /// tables and files are not written a second time.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(Vec::new()))
    }
}

export_monitor!(ModelInfoMonitor);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_size_and_table() {
        let layers = vec![
            Layer {
                name: "fc.weight".into(),
                shape: vec![10, 784],
                parameters: 7840,
            },
            Layer {
                name: "fc.bias".into(),
                shape: vec![10],
                parameters: 10,
            },
        ];
        let info = ModelInfo::new(layers, 7850 + 20);
        assert_eq!(info.trainable_parameters, 7850);
        assert_eq!(info.total_parameters, 7870);
        assert!((info.size_mb - 7870.0 * 4.0 / 1048576.0).abs() < 1e-12);
        let table = info.table();
        assert!(
            table.contains("fc.weight") && table.contains("[10, 784]") && table.contains("7840")
        );
        assert!(
            table.ends_with("total 7870 parameters (7850 trainable), 0.03 MB"),
            "{table}"
        );
    }

    #[test]
    fn through_the_fake_host_writes_the_models_counts_and_the_class_names() {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let mut host = FakeHost::new();
        host.parameters(&[("conv.weight", &[4, 1, 3, 3]), ("conv.bias", &[4])])
            .total_parameters(48)
            .class_names(&["t-shirt", "trouser"]);
        let mut harness = Harness::<ModelInfoMonitor>::new("", host).unwrap();
        harness.fire(EventKind::FIT_START).unwrap();
        let host = harness.host();
        let json = |path: &str| -> serde_json::Value {
            serde_json::from_slice(&host.file(path).unwrap().bytes).unwrap()
        };
        let info = json("model_info.json");
        assert_eq!(info["trainable_parameters"], 40);
        assert_eq!(info["total_parameters"], 48);
        assert_eq!(info["layers"][0]["name"], "conv.weight");
        assert_eq!(info["layers"][0]["shape"], serde_json::json!([4, 1, 3, 3]));
        assert_eq!(
            json("labels_mapping.json"),
            serde_json::json!({"0": "t-shirt", "1": "trouser"})
        );
        assert!(host.queries().iter().any(|q| q == "vigil.parameter_count"));
        let refused = Harness::<ModelInfoMonitor>::new("verbose = true", FakeHost::new());
        assert!(refused.err().unwrap().contains("unknown field `verbose`"));
    }
}
