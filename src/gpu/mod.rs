//! The GPU context: instance and adapter choice, the device with the adapter's own limits,
//! the pipeline cache, the buffer pool, command batching and timestamp profiling.
//!
//! One context lives per process. [`init`] chooses the adapter from explicit options; [`get`]
//! returns the context, creating it from `FIAK_BACKEND` and `FIAK_ADAPTER` on first use.

mod batch;
mod pool;
mod profile;

use std::sync::{Mutex, OnceLock};

pub use batch::Binding;
pub use pool::{GpuBuffer, PoolStats};
pub use profile::KernelTime;

use crate::error::{Error, Result};

/// A WGSL source file from `shaders/`, named for error messages and profiles.
pub struct Shader {
    pub file: &'static str,
    pub source: &'static str,
}

/// Adapter selection. `None` fields fall back to `FIAK_BACKEND` / `FIAK_ADAPTER`, then to
/// the default high-performance adapter of the primary backends (Vulkan, Metal, DX12).
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// `vulkan`, `metal`, `dx12` or `gl`.
    pub backend: Option<String>,
    /// An index into the adapter list of `fiak devices`, or a case-insensitive substring of
    /// the adapter name.
    pub adapter: Option<String>,
    /// Record timestamp queries around every kernel, as `FIAK_PROFILE=1` does.
    pub profile: bool,
}

/// Matmul implementation, chosen per adapter type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulVariant {
    /// Large per-invocation register blocks, no workgroup memory: fastest on CPU adapters
    /// such as lavapipe, where barriers and workgroup memory are slow.
    Registers,
    /// Workgroup-memory tiles: fastest on discrete and integrated GPUs.
    Tiled,
}

pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub matmul_variant: MatmulVariant,
    /// The device exposes subgroups of exactly 8 lanes (lavapipe on 256-bit SIMD), which the
    /// subgroup-shuffle kernels for CPU adapters assume. `FIAK_SUBGROUPS=0` turns them off.
    pub subgroup8: bool,
    pipelines: Mutex<std::collections::HashMap<String, Pipeline>>,
    modules: Mutex<std::collections::HashMap<&'static str, wgpu::ShaderModule>>,
    pool: pool::Pool,
    batch: Mutex<batch::Batch>,
    profiler: Option<profile::Profiler>,
}

#[derive(Clone)]
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    label: String,
}

static GPU: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();

/// Creates the process-wide context with explicit options. Later calls return the context
/// that exists already, whatever their options.
pub fn init(options: &GpuOptions) -> Result<&'static Gpu> {
    let gpu = GPU.get_or_init(|| {
        Gpu::new(options).map_err(|e| match e {
            Error::NoAdapter(message) => message,
            other => other.to_string(),
        })
    });
    gpu.as_ref().map_err(|e| Error::NoAdapter(e.clone()))
}

/// Returns the process-wide context, creating it from the environment on first use.
///
/// # Panics
/// When no adapter exists; the message names how to install one. GPU tests rely on this to
/// fail, never to pass, on a machine without a GPU.
pub fn get() -> &'static Gpu {
    match init(&GpuOptions::default()) {
        Ok(gpu) => gpu,
        Err(e) => panic!("{e}"),
    }
}

/// Returns how to get a GPU adapter on this operating system.
pub fn install_hint() -> &'static str {
    if cfg!(target_os = "linux") {
        "install a Vulkan driver; on a Linux machine without a GPU, Mesa's software driver \
         lavapipe works: `apt-get install mesa-vulkan-drivers`"
    } else if cfg!(target_os = "macos") {
        "fiak needs Metal, which every supported macOS version has; check that the process \
         can reach the GPU"
    } else {
        "install the GPU vendor's Vulkan or DX12 driver"
    }
}

/// Parses a backend name as used by `--backend` and `FIAK_BACKEND`.
pub fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" => Ok(wgpu::Backends::VULKAN),
        "metal" => Ok(wgpu::Backends::METAL),
        "dx12" => Ok(wgpu::Backends::DX12),
        "gl" => Ok(wgpu::Backends::GL),
        _ => Err(Error::invalid(
            "backend",
            name,
            "expected one of vulkan, metal, dx12, gl",
        )),
    }
}

fn resolve_backends(options: &GpuOptions) -> Result<wgpu::Backends> {
    let from_env = std::env::var("FIAK_BACKEND").ok().filter(|s| !s.is_empty());
    match options.backend.clone().or(from_env) {
        Some(name) => parse_backend(&name),
        None => Ok(wgpu::Backends::PRIMARY),
    }
}

fn create_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    wgpu::Instance::new(descriptor)
}

/// Lists every adapter of the given backends (all of them when `None`).
pub fn enumerate_adapters(backend: Option<&str>) -> Result<Vec<wgpu::Adapter>> {
    let backends = match backend {
        Some(name) => parse_backend(name)?,
        None => wgpu::Backends::all(),
    };
    let instance = create_instance(backends);
    Ok(pollster::block_on(instance.enumerate_adapters(backends)))
}

fn choose_adapter(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
    selector: Option<String>,
) -> Result<wgpu::Adapter> {
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    if adapters.is_empty() {
        return Err(Error::NoAdapter(format!(
            "no adapter on backends {backends:?}; {}",
            install_hint()
        )));
    }

    let Some(selector) = selector else {
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        };
        return pollster::block_on(instance.request_adapter(&options))
            .map_err(|e| Error::NoAdapter(format!("{e}; {}", install_hint())));
    };

    let names: Vec<String> = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{i}: {}", a.get_info().name))
        .collect();
    if let Ok(index) = selector.parse::<usize>() {
        return adapters.into_iter().nth(index).ok_or_else(|| {
            Error::invalid(
                "adapter",
                &selector,
                format!("no adapter with that index; available: {}", names.join(", ")),
            )
        });
    }
    let needle = selector.to_ascii_lowercase();
    adapters
        .into_iter()
        .find(|a| a.get_info().name.to_ascii_lowercase().contains(&needle))
        .ok_or_else(|| {
            Error::invalid(
                "adapter",
                &selector,
                format!("no adapter name contains it; available: {}", names.join(", ")),
            )
        })
}

impl Gpu {
    fn new(options: &GpuOptions) -> Result<Gpu> {
        let backends = resolve_backends(options)?;
        let selector = options
            .adapter
            .clone()
            .or_else(|| std::env::var("FIAK_ADAPTER").ok().filter(|s| !s.is_empty()));
        // An adapter index counts in the list of `fiak devices`, which shows every backend
        // unless one is chosen.
        let explicit_backend = options.backend.is_some() || std::env::var("FIAK_BACKEND").is_ok_and(|v| !v.is_empty());
        let backends = if selector.is_some() && !explicit_backend {
            wgpu::Backends::all()
        } else {
            backends
        };
        let instance = create_instance(backends);
        let adapter = choose_adapter(&instance, backends, selector)?;
        let info = adapter.get_info();

        // Ask for the adapter's own limits: the defaults cap buffers far below what the
        // hardware allows.
        let limits = adapter.limits();
        let available = adapter.features();
        let profiling = options.profile || std::env::var("FIAK_PROFILE").is_ok_and(|v| v == "1");
        let mut features = wgpu::Features::empty();
        if profiling && available.contains(wgpu::Features::TIMESTAMP_QUERY) {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let subgroup8 = available.contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size == 8
            && info.subgroup_max_size == 8
            && info.device_type == wgpu::DeviceType::Cpu
            && std::env::var("FIAK_SUBGROUPS").map_or(true, |v| v != "0");
        if subgroup8 {
            features |= wgpu::Features::SUBGROUP;
        }
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("fiak"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| Error::Device(format!("request_device on {}: {e}", info.name)))?;

        let matmul_variant = match std::env::var("FIAK_MATMUL").ok().as_deref() {
            Some("registers") => MatmulVariant::Registers,
            Some("tiled") => MatmulVariant::Tiled,
            _ if info.device_type == wgpu::DeviceType::Cpu => MatmulVariant::Registers,
            _ => MatmulVariant::Tiled,
        };

        let profiler = if profiling {
            if features.contains(wgpu::Features::TIMESTAMP_QUERY) {
                Some(profile::Profiler::new(&device, &queue))
            } else {
                log::warn!("FIAK_PROFILE=1 ignored: {} has no TIMESTAMP_QUERY feature", info.name);
                None
            }
        } else {
            None
        };
        log::info!(
            "GPU: {} ({:?}, {:?}, driver {} {}), matmul {:?}{}",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info,
            matmul_variant,
            if subgroup8 { " with 8-lane subgroups" } else { "" }
        );

        Ok(Gpu {
            adapter,
            pool: pool::Pool::new(),
            batch: Mutex::new(batch::Batch::default()),
            device,
            queue,
            info,
            limits,
            matmul_variant,
            subgroup8,
            pipelines: Mutex::default(),
            modules: Mutex::default(),
            profiler,
        })
    }

    /// Returns true when the adapter runs on the CPU (device type Cpu, such as lavapipe), where
    /// kernels without barriers or workgroup memory are fastest.
    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Largest byte range one storage binding may cover on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size
    }

    /// Required alignment in bytes of a storage binding's offset.
    pub fn binding_alignment(&self) -> u64 {
        self.limits.min_storage_buffer_offset_alignment as u64
    }

    /// Returns the compiled pipeline of `entry` in `shader` with the given override constants,
    /// compiling it on first use. Each (file, entry, constants) triple compiles once per process.
    fn pipeline(&self, shader: &'static Shader, entry: &str, constants: &[(&str, f64)]) -> Result<Pipeline> {
        let mut key = format!("{}:{entry}", shader.file);
        for (name, value) in constants {
            key.push_str(&format!(":{name}={value}"));
        }
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }

        let module = self.module(shader)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                file: shader.file,
                entry: entry.to_string(),
                message: e.to_string(),
            });
        }
        let layout = pipeline.get_bind_group_layout(0);
        let label = format!("{}:{entry}", shader.file.trim_end_matches(".wgsl"));
        let p = Pipeline {
            pipeline,
            layout,
            label,
        };
        self.pipelines.lock().unwrap().insert(key, p.clone());
        Ok(p)
    }

    fn module(&self, shader: &'static Shader) -> Result<wgpu::ShaderModule> {
        if let Some(m) = self.modules.lock().unwrap().get(shader.file) {
            return Ok(m.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let descriptor = wgpu::ShaderModuleDescriptor {
            label: Some(shader.file),
            source: wgpu::ShaderSource::Wgsl(shader.source.into()),
        };
        let module = self.device.create_shader_module(descriptor);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                file: shader.file,
                entry: String::from("(module)"),
                message: e.to_string(),
            });
        }
        self.modules.lock().unwrap().insert(shader.file, module.clone());
        Ok(module)
    }
}

/// Returns the context if it was created successfully, without creating it.
pub(crate) fn try_get_existing() -> Option<&'static Gpu> {
    GPU.get().and_then(|g| g.as_ref().ok())
}

impl Gpu {
    /// Counts of the buffer pool, for memory accounting and leak tests.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Restarts peak-memory tracking at the current live bytes.
    pub fn reset_peak_memory(&self) {
        self.pool.reset_peak();
    }

    /// Destroys the pool's free buffers.
    pub fn trim_pool(&self) {
        self.pool.trim();
    }
}
