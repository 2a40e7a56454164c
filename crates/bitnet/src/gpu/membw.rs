//! The device's memory bandwidth, measured as `bench` measures the CPU's
//! ([`crate::kernels::membw`]): a decode step streams every weight once, so tokens per second
//! over bandwidth ÷ bytes per token is the roofline a GPU decode is judged against.

use std::time::Instant;

use super::context::Gpu;
use super::GpuError;

/// Workgroups of 256 invocations: enough to keep any card's memory system busy, few enough
/// that each invocation streams a long run.
const GROUPS: u32 = 4096;

/// Reads of the buffer per timed submission, so that a submission's fixed cost (tens of
/// microseconds) stays small beside the reads even on a card that reads it in 40 µs.
const READS: usize = 16;

/// Best GB/s over `reps` timed submissions of [`READS`] reads each of a `bytes`-long device
/// buffer (capped at the device's largest storage binding), timed from submission to
/// completion. The first submission is a warm-up and is not counted.
pub fn bandwidth(gpu: &Gpu, bytes: u64, reps: usize) -> Result<f64, GpuError> {
    let bytes = bytes.min(gpu.max_binding()) / 16 * 16;
    if bytes == 0 {
        return Err(GpuError::Backend("no room for a bandwidth probe".into()));
    }
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("membw"),
            source: wgpu::ShaderSource::Wgsl(include_str!("shaders/membw.wgsl").into()),
        });
    let pipeline = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("membw"),
            layout: None,
            module: &module,
            entry_point: Some("read_all"),
            compilation_options: Default::default(),
            cache: None,
        });
    let src = gpu.buffer(bytes);
    let out = gpu.buffer(u64::from(GROUPS) * 256 * 4);
    let n = u32::try_from(bytes / 16)
        .map_err(|_| GpuError::Backend("bandwidth probe buffer too large".into()))?;
    let mut best = 0f64;
    for rep in 0..=reps.max(1) {
        let mut enc = gpu.encoder();
        for _ in 0..READS {
            gpu.dispatch(
                &mut enc,
                &pipeline,
                [n, 0, 0, 0, 0, 0, 0, 0],
                &[&src, &out],
                (GROUPS, 1, 1),
            );
        }
        let start = Instant::now();
        gpu.submit(enc)?;
        let secs = start.elapsed().as_secs_f64();
        if rep > 0 && secs > 0.0 {
            best = best.max((bytes * READS as u64) as f64 / secs / 1e9);
        }
    }
    Ok(best)
}
