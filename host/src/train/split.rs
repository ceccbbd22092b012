//! A dataset split as tensors on the training device: held whole (normalised once at start),
//! or, for an image folder too large for memory, decoded batch by batch from its files by a
//! thread that works ahead of the step.

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use crate::data::{FileImages, ImageSet};
use crate::error::{Error, Result};

/// A split on the training device: images (or a way to decode them) and labels.
pub(crate) struct TensorSplit {
    source: Source,
    pub(super) labels: Tensor,
    /// Per-channel mean and standard deviation used to normalise, to undo it for display;
    /// empty for float inputs, which are used as they are.
    pub(super) mean: Vec<f32>,
    pub(super) std: Vec<f32>,
    /// Shape of one input: channels, height, width.
    shape: [i64; 3],
    device: Device,
}

enum Source {
    /// Every input, normalised, on the device.
    Held(Tensor),
    /// Decoded from files when asked; `ahead` decodes the batches of an epoch in advance.
    Files {
        files: Arc<FileImages>,
        ahead: Arc<Mutex<Option<Prefetch>>>,
        depth: usize,
    },
}

impl TensorSplit {
    /// `prefetch` is how many batches a streamed split decodes ahead.
    pub(super) fn new(
        set: &ImageSet,
        mean: &[f32],
        std: &[f32],
        device: Device,
        prefetch: usize,
    ) -> Result<Self> {
        let shape = [set.channels as i64, set.height as i64, set.width as i64];
        let labels = Tensor::f_from_slice(&set.labels)?.f_to_device(device)?;
        let (source, mean, std) = match (&set.files, &set.floats) {
            (Some(files), _) => (
                Source::Files {
                    files: files.clone(),
                    ahead: Arc::new(Mutex::new(None)),
                    depth: prefetch.max(1),
                },
                mean.to_vec(),
                std.to_vec(),
            ),
            (None, Some(floats)) => (
                Source::Held(
                    Tensor::f_from_slice(floats)?
                        .f_view([set.len() as i64, shape[0], shape[1], shape[2]])?
                        .f_to_device(device)?,
                ),
                Vec::new(),
                Vec::new(),
            ),
            (None, None) => (
                Source::Held(normalise(&set.images, set.len(), shape, mean, std, device)?),
                mean.to_vec(),
                std.to_vec(),
            ),
        };
        Ok(TensorSplit {
            source,
            labels,
            mean,
            std,
            shape,
            device,
        })
    }

    pub(super) fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    /// Shape of the inputs: count, channels, height, width.
    pub(super) fn size(&self) -> [i64; 4] {
        [self.len(), self.shape[0], self.shape[1], self.shape[2]]
    }

    /// The same split, sharing its storage.
    pub(super) fn shallow_clone(&self) -> Self {
        let source = match &self.source {
            Source::Held(images) => Source::Held(images.shallow_clone()),
            Source::Files { files, depth, .. } => Source::Files {
                files: files.clone(),
                ahead: Arc::new(Mutex::new(None)),
                depth: *depth,
            },
        };
        TensorSplit {
            source,
            labels: self.labels.shallow_clone(),
            mean: self.mean.clone(),
            std: self.std.clone(),
            shape: self.shape,
            device: self.device,
        }
    }

    /// The inputs at `indices` (on the CPU as `order`, on the device as `on_device`).
    pub(super) fn gather(&self, order: &[i64], on_device: &Tensor) -> Result<Tensor> {
        match &self.source {
            Source::Held(images) => Ok(images.f_index_select(0, on_device)?),
            Source::Files { files, .. } => self.decode(files, order),
        }
    }

    /// The inputs `start .. start + size`.
    pub(super) fn range(&self, start: i64, size: i64) -> Result<Tensor> {
        match &self.source {
            Source::Held(images) => Ok(images.f_narrow(0, start, size)?),
            Source::Files { files, .. } => {
                let indices: Vec<i64> = (start..start + size).collect();
                self.decode(files, &indices)
            }
        }
    }

    /// Batch `start .. start + size` of an epoch whose sample order is `order` (`on_device` is
    /// the same slice on the device). A streamed split hands over the batch its decoding thread
    /// prepared, and starts that thread again when the epoch or the position changed.
    pub(super) fn epoch_batch(
        &self,
        epoch: usize,
        order: &Arc<Vec<i64>>,
        start: i64,
        size: i64,
        on_device: &Tensor,
    ) -> Result<Tensor> {
        let Source::Files {
            files,
            ahead,
            depth,
            ..
        } = &self.source
        else {
            return self.gather(&order[start as usize..(start + size) as usize], on_device);
        };
        let mut ahead = ahead.lock().unwrap_or_else(|p| p.into_inner());
        let reusable = ahead
            .as_ref()
            .is_some_and(|p| p.epoch == epoch && p.next == start && Arc::ptr_eq(&p.order, order));
        if !reusable {
            *ahead = Some(Prefetch::start(
                files.clone(),
                epoch,
                order.clone(),
                start,
                size,
                *depth,
            ));
        }
        let prefetch = ahead.as_mut().expect("set above");
        let (at, pixels) = prefetch.batches.recv().map_err(|_| Error::StoppedEarly {
            what: "the image decoding thread".into(),
            reason: "it ended before the epoch's last batch".into(),
        })?;
        let pixels = pixels?;
        debug_assert_eq!(at, start);
        prefetch.next = start + size;
        let count = pixels.len() / files.image_len();
        normalise(
            &pixels,
            count,
            self.shape,
            &self.mean,
            &self.std,
            self.device,
        )
    }

    fn decode(&self, files: &FileImages, indices: &[i64]) -> Result<Tensor> {
        let mut pixels = vec![0u8; indices.len() * files.image_len()];
        files.decode_batch(indices, &mut pixels)?;
        normalise(
            &pixels,
            indices.len(),
            self.shape,
            &self.mean,
            &self.std,
            self.device,
        )
    }

    /// The inputs at `indices`, de-normalised to [0, 1], as CPU floats.
    pub(super) fn display_images(&self, indices: &[i64]) -> Result<Vec<f32>> {
        let channels = self.mean.len() as i64;
        let shape = [1, channels, 1, 1];
        let mean = Tensor::f_from_slice(&self.mean)?.f_view(shape)?;
        let std = Tensor::f_from_slice(&self.std)?.f_view(shape)?;
        let on_device = Tensor::f_from_slice(indices)?.f_to_device(self.device)?;
        let images = self
            .gather(indices, &on_device)?
            .f_to_device(Device::Cpu)?
            .f_mul(&std)?
            .f_add(&mean)?
            .f_clamp(0.0, 1.0)?
            .f_contiguous()?;
        Ok(Vec::<f32>::try_from(&images.f_reshape([-1])?)?)
    }
}

/// `count` images of bytes → floats in [0, 1], normalised per channel, on `device`.
fn normalise(
    pixels: &[u8],
    count: usize,
    shape: [i64; 3],
    mean: &[f32],
    std: &[f32],
    device: Device,
) -> Result<Tensor> {
    let channel_shape = [1, shape[0], 1, 1];
    let mean = Tensor::f_from_slice(mean)?.f_view(channel_shape)?;
    let std = Tensor::f_from_slice(std)?.f_view(channel_shape)?;
    Ok(Tensor::f_from_slice(pixels)?
        .f_view([count as i64, shape[0], shape[1], shape[2]])?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)?
        .f_sub(&mean)?
        .f_div(&std)?
        .f_to_device(device)?)
}

/// A thread decoding the batches of one epoch, in order, at most `depth` ahead of the step.
struct Prefetch {
    epoch: usize,
    order: Arc<Vec<i64>>,
    /// The start of the batch the step will ask for next.
    next: i64,
    batches: Receiver<(i64, Result<Vec<u8>>)>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetch {
    fn start(
        files: Arc<FileImages>,
        epoch: usize,
        order: Arc<Vec<i64>>,
        from: i64,
        batch: i64,
        depth: usize,
    ) -> Self {
        let (sender, batches) = mpsc::sync_channel(depth);
        let thread_order = order.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-decode".into())
            .spawn(move || {
                let total = thread_order.len() as i64;
                let mut start = from;
                while start < total {
                    let size = batch.min(total - start);
                    let indices = &thread_order[start as usize..(start + size) as usize];
                    let mut pixels = vec![0u8; indices.len() * files.image_len()];
                    let decoded = files.decode_batch(indices, &mut pixels).map(|()| pixels);
                    let failed = decoded.is_err();
                    // The receiver is gone when the epoch ended early or the step moved on.
                    if sender.send((start, decoded)).is_err() || failed {
                        return;
                    }
                    start += size;
                }
            })
            .ok();
        Prefetch {
            epoch,
            order,
            next: from,
            batches,
            thread,
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Unblock the thread (a full channel) by taking what it sent, then wait for it.
        while self.batches.try_recv().is_ok() {}
        let (_, replaced) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.batches, replaced));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
