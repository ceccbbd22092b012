//! A dataset split as tensors on the training device.

use tch::{Device, Kind, Tensor};

use crate::data::ImageSet;
use crate::error::Result;

/// A split as tensors on the training device: normalised images and labels.
pub(crate) struct TensorSplit {
    pub(super) images: Tensor,
    pub(super) labels: Tensor,
    /// Per-channel mean and standard deviation used to normalise, to undo it for display.
    pub(super) mean: Vec<f32>,
    pub(super) std: Vec<f32>,
}

impl TensorSplit {
    pub(super) fn new(set: &ImageSet, mean: &[f32], std: &[f32], device: Device) -> Result<Self> {
        let shape = [
            set.len() as i64,
            set.channels as i64,
            set.height as i64,
            set.width as i64,
        ];
        let channel_shape = [1, set.channels as i64, 1, 1];
        let mean_t = Tensor::f_from_slice(mean)?.f_view(channel_shape)?;
        let std_t = Tensor::f_from_slice(std)?.f_view(channel_shape)?;
        let images = Tensor::f_from_slice(&set.images)?
            .f_view(shape)?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?
            .f_sub(&mean_t)?
            .f_div(&std_t)?
            .f_to_device(device)?;
        let labels = Tensor::f_from_slice(&set.labels)?.f_to_device(device)?;
        Ok(TensorSplit {
            images,
            labels,
            mean: mean.to_vec(),
            std: std.to_vec(),
        })
    }

    pub(super) fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    /// The same split, sharing its storage.
    pub(super) fn shallow_clone(&self) -> Self {
        TensorSplit {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }

    /// The first `count` images, de-normalised to [0, 1], as CPU floats.
    pub(super) fn display_images(&self, count: i64) -> Result<Vec<f32>> {
        let channels = self.mean.len() as i64;
        let shape = [1, channels, 1, 1];
        let mean = Tensor::f_from_slice(&self.mean)?.f_view(shape)?;
        let std = Tensor::f_from_slice(&self.std)?.f_view(shape)?;
        let images = self
            .images
            .f_narrow(0, 0, count)?
            .f_to_device(Device::Cpu)?
            .f_mul(&std)?
            .f_add(&mean)?
            .f_clamp(0.0, 1.0)?
            .f_contiguous()?;
        Ok(Vec::<f32>::try_from(&images.f_reshape([-1])?)?)
    }
}
