//! Adapter choice, the device, its compiled kernels, and the buffer plumbing every kernel uses.

use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::{AdapterSummary, Device, GpuError};

/// The native backends wgpu is built with here (see the workspace's Cargo.toml).
const BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN
    .union(wgpu::Backends::METAL)
    .union(wgpu::Backends::DX12);

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // WGPU_BACKEND may narrow the choice, never widen it past what is built.
    desc.backends &= BACKENDS;
    wgpu::Instance::new(desc)
}

fn summary(info: &wgpu::AdapterInfo) -> AdapterSummary {
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver,
        software: info.device_type == wgpu::DeviceType::Cpu,
    }
}

/// Preference among adapters: discrete, integrated, virtual, other, software.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 1,
        wgpu::DeviceType::Cpu => 0,
    }
}

/// Every adapter this machine has (empty without a Vulkan loader or driver).
pub fn adapters() -> Vec<AdapterSummary> {
    let instance = instance();
    pollster::block_on(instance.enumerate_adapters(BACKENDS))
        .iter()
        .map(|a| summary(&a.get_info()))
        .collect()
}

/// The compute pipelines, built once per device.
pub(crate) struct Pipelines {
    pub quantize: wgpu::ComputePipeline,
    /// The ternary product with `dot4I8Packed` (None when the language lacks it) and with
    /// the plain integer loop.
    pub ternary_dot4: Option<wgpu::ComputePipeline>,
    pub ternary_plain: wgpu::ComputePipeline,
    /// The product with a scale per 256-value block (TQ files whose blocks' scales differ),
    /// on `dot4` as the adapter has it.
    pub ternary_blocks: wgpu::ComputePipeline,
    pub f16_matmul: wgpu::ComputePipeline,
    pub rms_norm: wgpu::ComputePipeline,
    pub q_quantize: wgpu::ComputePipeline,
    pub q_matmul: wgpu::ComputePipeline,
    pub add: wgpu::ComputePipeline,
    pub gate: wgpu::ComputePipeline,
    pub rope: wgpu::ComputePipeline,
    /// Attention and the cache writes, for f32 caches `[0]` and f16 ones `[1]`.
    pub attention: [wgpu::ComputePipeline; 2],
    pub kv_write: [wgpu::ComputePipeline; 2],
    /// The context shift's key rotation, f32 `[0]` and f16 `[1]`.
    pub kv_shift: [wgpu::ComputePipeline; 2],
}

const COMMON: &str = include_str!("shaders/common.wgsl");
const DOT4_PACKED: &str = "fn dot4(a: u32, b: u32) -> i32 { return dot4I8Packed(a, b); }\n";
const DOT4_PLAIN: &str = "fn dot4(a: u32, b: u32) -> i32 {
    var s = 0;
    for (var i = 0u; i < 4u; i++) { s += lane_i8(a, i) * lane_i8(b, i); }
    return s;
}\n";
const CACHE_F32: &str = "alias CACHE_T = f32;
fn kv_k(i: u32) -> f32 { return kc[i]; }
fn kv_v(i: u32) -> f32 { return vc[i]; }\n";
const CACHE_F16: &str = "alias CACHE_T = u32;
fn kv_k(i: u32) -> f32 { let w = unpack2x16float(kc[i / 2u]); return select(w.x, w.y, (i & 1u) == 1u); }
fn kv_v(i: u32) -> f32 { let w = unpack2x16float(vc[i / 2u]); return select(w.x, w.y, (i & 1u) == 1u); }\n";
const STORE_F32: &str = "alias CACHE_T = f32;
fn store(i: u32) {
    if (i < p.n_tokens * p.kv_dim) {
        let at = p.pos0 * p.kv_dim + i;
        let src = p.row0 * p.kv_dim + i;
        kc[at] = k[src];
        vc[at] = v[src];
    }
}\n";
const STORE_F16: &str = "alias CACHE_T = u32;
fn store(i: u32) {
    if (i < p.n_tokens * p.kv_dim / 2u) {
        let at = p.pos0 * p.kv_dim / 2u + i;
        let src = p.row0 * p.kv_dim + 2u * i;
        kc[at] = pack2x16float(vec2<f32>(k[src], k[src + 1u]));
        vc[at] = pack2x16float(vec2<f32>(v[src], v[src + 1u]));
    }
}\n";

const SHIFT_F32: &str = "alias CACHE_T = f32;
fn ld(i: u32) -> f32 { return src[i]; }
fn shift_store(i: u32) {
    if (i < p.n_rows * p.kv_dim) {
        dst[p.dst0 * p.kv_dim + i] = rotated(i);
    }
}\n";
const SHIFT_F16: &str = "alias CACHE_T = u32;
fn ld(i: u32) -> f32 { let w = unpack2x16float(src[i / 2u]); return select(w.x, w.y, (i & 1u) == 1u); }
fn shift_store(i: u32) {
    if (i < p.n_rows * p.kv_dim / 2u) {
        dst[p.dst0 * p.kv_dim / 2u + i] = pack2x16float(vec2<f32>(rotated(2u * i), rotated(2u * i + 1u)));
    }
}\n";

/// An open GPU device with its kernels.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) pipelines: Pipelines,
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    /// Bound where a kernel's optional input (a gain, a bias) is absent.
    pub(crate) dummy: wgpu::Buffer,
    /// The first error the device reported since the last check (wgpu reports them through
    /// a callback, and would otherwise panic).
    error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.adapter)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens the adapter `device` asks for: `Ok(None)` for [`Device::Cpu`], and for
    /// [`Device::Auto`] when there is no hardware GPU.
    pub fn open(device: Device) -> Result<Option<Arc<Gpu>>, GpuError> {
        if device == Device::Cpu {
            return Ok(None);
        }
        let instance = instance();
        let mut all = pollster::block_on(instance.enumerate_adapters(BACKENDS));
        // Stable sort: the backend's own order among equals.
        all.sort_by_key(|a| std::cmp::Reverse(rank(a.get_info().device_type)));
        let skipped: Vec<String> = all
            .iter()
            .map(|a| a.get_info())
            .filter(|i| device == Device::Auto && i.device_type == wgpu::DeviceType::Cpu)
            .map(|i| summary(&i).to_string())
            .collect();
        let chosen = all
            .into_iter()
            .find(|a| device == Device::Gpu || a.get_info().device_type != wgpu::DeviceType::Cpu);
        let Some(adapter) = chosen else {
            return match device {
                Device::Auto => Ok(None),
                _ => Err(GpuError::NoAdapter { skipped }),
            };
        };
        let language = instance.wgsl_language_features();
        Gpu::with_adapter(&adapter, language).map(|g| Some(Arc::new(g)))
    }

    fn with_adapter(
        adapter: &wgpu::Adapter,
        language: wgpu::WgslLanguageFeatures,
    ) -> Result<Gpu, GpuError> {
        let info = summary(&adapter.get_info());
        // The adapter's own limits: a vocabulary's output matrix is larger than WebGPU's
        // default 128 MiB binding.
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("bitnet"),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| GpuError::Device {
                adapter: info.to_string(),
                message: e.to_string(),
            })?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        let dot4 = language.contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct);
        let pipelines = Pipelines::new(&device, dot4);
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let gpu = Gpu {
            device,
            queue,
            pipelines,
            adapter: info,
            limits,
            dummy,
            error,
        };
        gpu.check()?;
        Ok(gpu)
    }

    /// The adapter this device runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// Whether the ternary kernels use WGSL's `dot4I8Packed`.
    pub fn has_dot4(&self) -> bool {
        self.pipelines.ternary_dot4.is_some()
    }

    /// The largest storage buffer binding the device takes, in bytes.
    pub(crate) fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size
    }

    /// The error the device reported since the last check, if any.
    pub(crate) fn check(&self) -> Result<(), GpuError> {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(e) => Err(GpuError::Backend(e)),
            None => Ok(()),
        }
    }

    /// A storage buffer holding `data` (at least 4 bytes: empty bindings are invalid).
    pub(crate) fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mut padded;
        let contents = if !bytes.len().is_multiple_of(4) || bytes.is_empty() {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            &padded[..]
        } else {
            bytes
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A zeroed storage buffer of `bytes` (at least 4).
    pub(crate) fn buffer(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.max(4).div_ceil(4) * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A uniform buffer of 32-bit words (the kernels' parameters; eight, or a multiple of four
    /// for a kernel that needs more).
    pub(crate) fn params<const N: usize>(&self, words: [u32; N]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Records one dispatch of `pipeline` over `groups`, binding the parameters at 0 and
    /// `buffers` at 1.. in order.
    pub(crate) fn dispatch<const N: usize>(
        &self,
        enc: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        params: [u32; N],
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) {
        let params = self.params(params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params.as_entire_binding(),
        }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                }),
        );
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
    }

    /// A new command encoder.
    pub(crate) fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default())
    }

    /// Submits `enc` and waits for it; the device's errors come back here.
    pub(crate) fn submit(&self, enc: wgpu::CommandEncoder) -> Result<(), GpuError> {
        self.queue.submit([enc.finish()]);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Backend(e.to_string()))?;
        self.check()
    }

    /// Submits `enc`, then copies `len` elements of `src` back to the host.
    pub(crate) fn read<T: bytemuck::Pod>(
        &self,
        mut enc: wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<T>, GpuError> {
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        let size = bytes.max(4).div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.submit(enc)?;
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Backend(e.to_string()))?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(GpuError::Backend(e.to_string())),
            Err(_) => return Err(GpuError::Backend("buffer mapping was dropped".into())),
        }
        let data = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Backend(e.to_string()))?;
        let out = bytemuck::cast_slice::<u8, T>(&data[..bytes as usize]).to_vec();
        drop(data);
        staging.unmap();
        self.check()?;
        Ok(out)
    }
}

/// Groups for one workgroup per row over x and y (at most 65535 per dimension), times `z`.
pub(crate) fn row_groups(rows: usize, z: usize) -> (u32, u32, u32) {
    let x = rows.clamp(1, 65535);
    (x as u32, rows.div_ceil(65535).max(1) as u32, z as u32)
}

/// Groups for one thread per element, 64 to a workgroup, over x and y.
pub(crate) fn elem_groups(n: usize) -> (u32, u32, u32) {
    let groups = n.div_ceil(64).max(1);
    let x = groups.min(65535);
    (x as u32, groups.div_ceil(65535) as u32, 1)
}

impl Pipelines {
    fn new(device: &wgpu::Device, dot4: bool) -> Pipelines {
        let make = |name: &str, src: String, entry: &str| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let with = |parts: &[&str]| {
            let mut s = String::from(COMMON);
            parts.iter().for_each(|p| s.push_str(p));
            s
        };
        let ternary = include_str!("shaders/ternary.wgsl");
        let dense = include_str!("shaders/dense.wgsl");
        let layer = include_str!("shaders/layer.wgsl");
        let qblocks = include_str!("shaders/qblocks.wgsl");
        let qmatmul = include_str!("shaders/qmatmul.wgsl");
        let attention = include_str!("shaders/attention.wgsl");
        let kv_write = include_str!("shaders/kv_write.wgsl");
        let kv_shift = include_str!("shaders/kv_shift.wgsl");
        let ternary_blocks = include_str!("shaders/ternary_blocks.wgsl");
        let q_dot4 = if dot4 { DOT4_PACKED } else { DOT4_PLAIN };
        Pipelines {
            quantize: make(
                "quantize",
                with(&[include_str!("shaders/quantize.wgsl")]),
                "main",
            ),
            ternary_dot4: dot4.then(|| make("ternary_dot4", with(&[DOT4_PACKED, ternary]), "main")),
            ternary_plain: make("ternary_plain", with(&[DOT4_PLAIN, ternary]), "main"),
            ternary_blocks: make("ternary_blocks", with(&[q_dot4, ternary_blocks]), "main"),
            f16_matmul: make("f16_matmul", with(&[dense]), "f16_matmul"),
            rms_norm: make("rms_norm", with(&[dense]), "rms_norm"),
            q_quantize: make("q_quantize", with(&[qblocks]), "quantize"),
            q_matmul: make("q_matmul", with(&[q_dot4, qmatmul]), "main"),
            add: make("add", with(&[layer]), "add"),
            gate: make("gate", with(&[layer]), "gate"),
            rope: make("rope", with(&[layer]), "rope"),
            attention: [
                make("attention_f32", with(&[CACHE_F32, attention]), "main"),
                make("attention_f16", with(&[CACHE_F16, attention]), "main"),
            ],
            kv_write: [
                make("kv_write_f32", with(&[STORE_F32, kv_write]), "main"),
                make("kv_write_f16", with(&[STORE_F16, kv_write]), "main"),
            ],
            kv_shift: [
                make("kv_shift_f32", with(&[SHIFT_F32, kv_shift]), "main"),
                make("kv_shift_f16", with(&[SHIFT_F16, kv_shift]), "main"),
            ],
        }
    }
}
