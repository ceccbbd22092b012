//! Where training runs: the device the config asks for, if libtorch has it.

use tch::Device;

use crate::error::{Error, Result};

/// Pick the device the settings ask for.
pub(super) fn choose_device(choice: crate::config::DeviceChoice) -> Result<Device> {
    use crate::config::DeviceChoice;
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(Error::Config {
            location: "device".into(),
            message: "is \"cuda\" but libtorch sees no CUDA device; use \"auto\" or \"cpu\", or build vigil with \
                      `--features cuda` on a machine with a GPU"
                .into(),
        }),
    }
}
