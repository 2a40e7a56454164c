//! The GPU backend: WGSL compute kernels on wgpu (Vulkan on Linux, Windows and Android, Metal
//! on macOS, DX12 on Windows), behind the cargo feature `gpu`.
//!
//! [`Device`] (which device a model runs on) and [`GpuError`] exist in every build, so options
//! and command lines name them whatever the features; without the feature, asking for a GPU is
//! the error [`GpuError::NotBuilt`]. With it, wgpu loads the Vulkan (or Metal, DX12) library at
//! run time: a binary built with the feature still runs on the CPU where there is none.
//!
//! Adapter choice: [`Device::Gpu`] takes the best adapter there is, a software one (Mesa's
//! lavapipe, which CI tests on) included; [`Device::Auto`] takes only a hardware GPU and
//! otherwise the CPU. The kernels' integer results (activation quantization, ternary products)
//! are bit-identical to the CPU's; float reductions differ by summation order.

#[cfg(feature = "gpu")]
mod context;
#[cfg(feature = "gpu")]
pub(crate) mod membw;
#[cfg(feature = "gpu")]
mod model;
#[cfg(feature = "gpu")]
mod ops;
#[cfg(all(test, feature = "gpu"))]
mod tests;

#[cfg(feature = "gpu")]
pub use context::{adapters, Gpu};
#[cfg(feature = "gpu")]
pub(crate) use model::{GpuKv, GpuModel, LayerSource, LinearSource, SeqIn, Want};

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    /// The CPU kernels (the default).
    #[default]
    Cpu,
    /// The best GPU adapter there is, software ones (lavapipe, WARP) included; an error when
    /// there is none.
    Gpu,
    /// A hardware GPU when there is one (never a software adapter), else the CPU.
    Auto,
}

impl Device {
    /// Every device, in the order `--device` lists them.
    pub const ALL: [Device; 3] = [Device::Cpu, Device::Gpu, Device::Auto];

    /// The name `--device` takes.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
            Device::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Device, String> {
        Device::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown device `{s}` (cpu, gpu, auto)"))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One GPU adapter as wgpu reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// The adapter's name (`NVIDIA H100 80GB HBM3`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// The graphics API it runs on (`Vulkan`, `Metal`, `Dx12`).
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// The driver's name and version, where it reports them.
    pub driver: String,
    /// A software rasterizer on the CPU (lavapipe, WARP, SwiftShader): never picked by
    /// [`Device::Auto`].
    pub software: bool,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        f.write_str(")")
    }
}

/// Why the GPU backend could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// This build was compiled without the `gpu` cargo feature.
    #[error("this build has no GPU support (the bitnet crate's `gpu` feature is off)")]
    NotBuilt,
    /// No adapter of the kind asked for (none at all, or for `auto` no hardware one).
    #[error("no GPU adapter found{}", no_adapter_detail(.skipped))]
    NoAdapter {
        /// Adapters that exist but were not eligible (software ones, for `auto`).
        skipped: Vec<String>,
    },
    /// The adapter refused to open a device.
    #[error("opening the GPU device on {adapter}: {message}")]
    Device {
        /// The adapter.
        adapter: String,
        /// wgpu's message.
        message: String,
    },
    /// The device reported an error (validation, out of memory, a lost device).
    #[error("GPU error: {0}")]
    Backend(String),
    /// A model the GPU backend does not run yet; the message names what.
    #[error("the GPU backend does not support {0} (run it with --device cpu)")]
    Unsupported(String),
}

fn no_adapter_detail(skipped: &[String]) -> String {
    if skipped.is_empty() {
        " (no Vulkan, Metal or DX12 device; on Linux install a Vulkan driver and the Vulkan \
         loader, libvulkan1)"
            .to_string()
    } else {
        format!(
            " (only software adapters, which `auto` skips: {}; use --device gpu to run on one)",
            skipped.join(", ")
        )
    }
}

#[cfg(not(feature = "gpu"))]
impl crate::model::BitnetModel {
    /// Runs the model on `device`: in a build without the `gpu` feature, [`Device::Gpu`] is
    /// the error [`GpuError::NotBuilt`] and [`Device::Auto`] keeps the CPU.
    pub fn set_device(&mut self, device: Device) -> Result<(), crate::model::ModelError> {
        match device {
            Device::Gpu => Err(GpuError::NotBuilt.into()),
            Device::Cpu | Device::Auto => Ok(()),
        }
    }

    /// The GPU adapter the model runs on: never one without the `gpu` feature.
    pub fn gpu_adapter(&self) -> Option<AdapterSummary> {
        None
    }

    /// The GPU's memory read bandwidth: never one without the `gpu` feature.
    pub fn gpu_bandwidth(&self, _bytes: u64, _reps: usize) -> Option<Result<f64, GpuError>> {
        None
    }
}

/// Every GPU adapter this machine has: none in a build without the `gpu` feature.
#[cfg(not(feature = "gpu"))]
pub fn adapters() -> Vec<AdapterSummary> {
    Vec::new()
}
