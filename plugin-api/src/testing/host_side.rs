//! The host side of the ABI, answered from what a test scripted into a [`FakeHost`].

use abi_stable::std_types::{RErr, ROk, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec};

use super::fake_host::{Averages, FakeHost, ProductCall, WrittenFile};
use crate::abi::{Artifact, HostFfi};
use crate::query::{self, GradientEma, ParameterCount};
use crate::{
    EventKind, ImageBatch, LogLevel, ParameterInfo, ProbeSpec, SamplerDraws, StepCounters,
    ValidationBatch, WriteMode,
};

impl FakeHost {
    pub(super) fn numel(&self) -> usize {
        self.parameters.iter().map(|p| p.numel as usize).sum()
    }

    pub(super) fn refresh_norms(&mut self) {
        let norms = |values: &[f32]| -> Vec<f64> {
            let mut offset = 0;
            self.parameters
                .iter()
                .map(|p| {
                    let piece = &values[offset..offset + p.numel as usize];
                    offset += p.numel as usize;
                    piece
                        .iter()
                        .map(|&v| f64::from(v).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect()
        };
        self.grad_norms = norms(&self.gradient);
        self.weight_norms = norms(&self.weights);
    }

    pub(super) fn at(&self, kind: EventKind) -> bool {
        self.event == Some(kind)
    }

    pub(super) fn own_answer(&mut self, name: &str, input: &[u8]) -> Result<Vec<u8>, String> {
        let event = self.event.map_or("Monitor::new", EventKind::name);
        match name {
            query::VERSION => Ok(b"fake".to_vec()),
            crate::per_sample::SCHEDULE => {
                let schedule = crate::per_sample::Schedule::decode(input).map_err(|e| e.to_string())?;
                self.schedule = Some(schedule);
                Ok(Vec::new())
            }
            crate::per_sample::LOG_HISTOGRAM => {
                let record = crate::per_sample::HistogramRecord::decode(input).map_err(|e| e.to_string())?;
                self.histograms.push((self.counters.global_step, record));
                Ok(Vec::new())
            }
            query::TRAIN_LABELS => Ok(query::encode_labels(&self.train_labels)),
            query::VAL_LABELS => Ok(query::encode_labels(&self.val_labels)),
            query::PARAMETER_COUNT => {
                let trainable = self.numel() as u64;
                let total = self.total_parameters.unwrap_or(trainable).max(trainable);
                Ok(ParameterCount { total, trainable }.encode())
            }
            query::GRADIENT_EMA_UPDATE => {
                let beta = query::decode_decay(input).map_err(|e| e.to_string())?;
                if !self.at(EventKind::TRAIN_BATCH_END) {
                    return Err(format!("{name} works at train_batch_end, not at {event}"));
                }
                self.update_averages(beta)
            }
            query::GRADIENT_EMA => self
                .averages
                .as_ref()
                .map(|a| {
                    let n = a.mean.len().max(1) as f64;
                    GradientEma {
                        updates: a.updates,
                        numel: a.mean.len() as u64,
                        beta: a.beta,
                        mean_square: a.mean_square,
                        squared_mean: a.mean.iter().map(|m| m * m).sum::<f64>() / n,
                    }
                    .encode()
                })
                .ok_or_else(|| {
                    "no gradient averages yet: call vigil.gradient_ema.update at train_batch_end first".into()
                }),
            query::SAVE_STATE if self.at(EventKind::SAVE_STATE) => {
                self.saved_state = Some(input.to_vec());
                Ok(Vec::new())
            }
            query::SAVED_STATE if self.at(EventKind::RESTORE_STATE) => match &self.restoring {
                Some((version, bytes)) => Ok(crate::SavedState {
                    plugin_version: version,
                    bytes,
                }
                .encode()),
                None => Err("nothing saved to restore".into()),
            },
            query::SAVE_STATE | query::SAVED_STATE => {
                Err(format!("{name} works in the state events, not at {event}"))
            }
            other => Err(format!(
                "unknown capability `{other}`; the fake host knows: {} (and canned answers)",
                query::ALL
                    .iter()
                    .chain(&crate::per_sample::ALL)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    pub(super) fn update_averages(&mut self, beta: f64) -> Result<Vec<u8>, String> {
        if !(0.0..1.0).contains(&beta) {
            return Err(format!("the decay must be in [0, 1), got {beta}"));
        }
        let step = self.counters.global_step;
        let numel = self.gradient.len();
        let fresh = self
            .averages
            .as_ref()
            .is_none_or(|a| a.beta != beta || a.mean.len() != numel);
        if fresh {
            self.averages = Some(Averages {
                beta,
                mean: vec![0.0; numel],
                mean_square: 0.0,
                updates: 0,
                last_step: None,
            });
        }
        let averages = self.averages.as_mut().expect("set above");
        if averages.last_step != Some(step) {
            let weight = 1.0 - beta;
            for (mean, &g) in averages.mean.iter_mut().zip(&self.gradient) {
                *mean += weight * (f64::from(g) - *mean);
            }
            let square = self
                .gradient
                .iter()
                .map(|&g| f64::from(g).powi(2))
                .sum::<f64>()
                / numel.max(1) as f64;
            averages.mean_square = beta * averages.mean_square + weight * square;
            averages.updates += 1;
            averages.last_step = Some(step);
        }
        Ok(Vec::new())
    }
}

impl HostFfi for FakeHost {
    fn counters(&self) -> StepCounters {
        self.counters
    }

    fn metric(&self, name: RStr<'_>) -> ROption<f64> {
        self.metrics
            .iter()
            .find(|(key, _)| key == name.as_str())
            .map(|&(_, value)| value)
            .into()
    }

    fn parameters(&self) -> RSlice<'_, ParameterInfo> {
        self.parameters.as_rslice()
    }

    fn grad_norms(&self) -> RSlice<'_, f64> {
        let norms: &[f64] = if self.at(EventKind::TRAIN_BATCH_END) {
            &self.grad_norms
        } else {
            &[]
        };
        RSlice::from_slice(norms)
    }

    fn weight_norms(&self) -> RSlice<'_, f64> {
        RSlice::from_slice(&self.weight_norms)
    }

    fn gradient(&self) -> RSlice<'_, f32> {
        let gradient: &[f32] = if self.at(EventKind::TRAIN_BATCH_END) {
            &self.gradient
        } else {
            &[]
        };
        RSlice::from_slice(gradient)
    }

    fn hessian_vector_product(
        &mut self,
        probe: ProbeSpec,
        vector: RSlice<'_, f32>,
        mut out: RSliceMut<'_, f32>,
    ) -> RResult<f64, RString> {
        let n = self.numel();
        if vector.len() != n || out.len() != n {
            return RErr(format!(
                "vector and output must have {n} elements (one per trainable scalar); got {} and {}",
                vector.len(),
                out.len()
            )
            .into());
        }
        self.products.push(ProductCall {
            probe,
            vector: vector.to_vec(),
        });
        let Some(hessian) = &self.hessian else {
            return RErr("the test gave the fake host no Hessian (FakeHost::hessian)".into());
        };
        for (row, slot) in hessian.chunks(n).zip(out.as_mut_slice()) {
            *slot = row
                .iter()
                .zip(vector.iter())
                .map(|(h, &v)| h * f64::from(v))
                .sum::<f64>() as f32;
        }
        ROk(self.quadratic_loss())
    }

    fn probe_loss(&mut self, _probe: ProbeSpec) -> RResult<f64, RString> {
        ROk(self.quadratic_loss())
    }

    fn validation_batch(&self) -> ValidationBatch<'_> {
        let here = self.at(EventKind::VALIDATION_BATCH_END);
        ValidationBatch {
            logits: when(here, &self.logits),
            predictions: when(here, &self.predictions),
            labels: when(here, &self.labels),
            num_classes: if here { self.num_classes } else { 0 },
        }
    }

    fn sample_images(&self) -> ImageBatch<'_> {
        let here = self.at(EventKind::VALIDATION_END);
        let [count, channels, height, width] = if here { self.image_shape } else { [0; 4] };
        ImageBatch {
            pixels: when(here, &self.pixels),
            count,
            channels,
            height,
            width,
            labels: when(here, &self.image_labels),
            predictions: when(here, &self.image_predictions),
        }
    }

    fn class_names(&self) -> RSlice<'_, RString> {
        self.class_names.as_rslice()
    }

    fn sampler_draws(&self) -> SamplerDraws<'_> {
        let here = self.at(EventKind::TRAIN_EPOCH_START);
        SamplerDraws {
            indices: when(here, &self.draw_indices),
            weights: when(here, &self.draw_weights),
            labels: when(here, &self.draw_labels),
        }
    }

    fn log_scalar(&mut self, name: RStr<'_>, value: f64) {
        if value.is_finite() {
            self.logged
                .push((self.counters.global_step, name.to_string(), value));
        } else {
            self.dropped.push((name.to_string(), value));
        }
    }

    fn write_artifact(&mut self, artifact: Artifact<'_>) -> RResult<(), RString> {
        let path = artifact.path.as_str();
        if let Err(reason) = crate::check_artifact_path(path) {
            return RErr(reason.into());
        }
        let bytes = artifact.bytes.as_slice();
        match artifact.mode {
            WriteMode::REPLACE | WriteMode::APPEND => {
                let file = self
                    .files
                    .entry(path.to_string())
                    .or_insert_with(|| WrittenFile {
                        kind: artifact.kind,
                        bytes: Vec::new(),
                        writes: 0,
                    });
                if artifact.mode == WriteMode::REPLACE {
                    file.bytes.clear();
                }
                file.bytes.extend_from_slice(bytes);
                file.kind = artifact.kind;
                file.writes += 1;
                ROk(())
            }
            WriteMode(other) => RErr(format!("unknown write mode {other}").into()),
        }
    }

    fn log_message(&mut self, level: LogLevel, message: RStr<'_>) {
        self.messages.push((level, message.to_string()));
    }

    fn request_stop(&mut self, reason: RStr<'_>) {
        self.stops.push(reason.to_string());
    }

    fn query(&mut self, name: RStr<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, RString> {
        self.queries.push(name.to_string());
        let answer = match self.canned.get(name.as_str()) {
            Some(canned) => canned.clone(),
            None => self.own_answer(name.as_str(), input.as_slice()),
        };
        match answer {
            Ok(bytes) => ROk(bytes.into()),
            Err(reason) => RErr(reason.into()),
        }
    }
}

impl FakeHost {
    /// `½ wᵀHw` at the weights (0 without a Hessian).
    fn quadratic_loss(&self) -> f64 {
        let Some(hessian) = &self.hessian else {
            return 0.0;
        };
        let n = self.weights.len();
        let w: Vec<f64> = self.weights.iter().map(|&v| f64::from(v)).collect();
        hessian
            .chunks(n.max(1))
            .zip(&w)
            .map(|(row, wi)| wi * row.iter().zip(&w).map(|(h, wj)| h * wj).sum::<f64>())
            .sum::<f64>()
            / 2.0
    }
}

/// `values` where the data exists now, empty elsewhere (as the real host answers).
fn when<T>(here: bool, values: &[T]) -> RSlice<'_, T> {
    RSlice::from_slice(if here { values } else { &[] })
}
