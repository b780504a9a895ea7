//! Timestamp profiling behind `FIAK_PROFILE=1`: every compute pass writes a timestamp at its
//! start and end, and the GPU time is summed per kernel. [`Gpu::profile_report`] formats the
//! table; the `fiak` binary prints it at exit.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Gpu;

pub(crate) struct Profiler {
    pub(crate) query_set: wgpu::QuerySet,
    /// Number of timestamps the query set holds.
    pub(crate) capacity: u32,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
    totals: Mutex<HashMap<String, (u64, f64)>>,
}

impl Profiler {
    pub(crate) fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Profiler {
        // wgpu caps a query set at 4096 queries, which profiles 2048 passes per submit.
        let capacity = 4096;
        let query_set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("fiak.profile"),
            ty: wgpu::QueryType::Timestamp,
            count: capacity,
        });
        let bytes = capacity as u64 * 8;
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fiak.profile.resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fiak.profile.readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Profiler {
            query_set,
            capacity,
            resolve,
            readback,
            period_ns: queue.get_timestamp_period() as f64,
            totals: Mutex::default(),
        }
    }

    pub(crate) fn resolve(&self, encoder: &mut wgpu::CommandEncoder, count: u32) {
        if count == 0 {
            return;
        }
        encoder.resolve_query_set(&self.query_set, 0..count, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, Some(count as u64 * 8));
    }

    /// Waits for the submit that resolved `labels.len()` passes and adds their times.
    pub(crate) fn collect(&self, gpu: &Gpu, labels: &[String]) {
        if labels.is_empty() {
            return;
        }
        let bytes = labels.len() as u64 * 16;
        let (sender, receiver) = std::sync::mpsc::channel();
        self.readback.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = sender.send(r);
        });
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("device poll failed");
        if receiver.recv().ok().and_then(Result::ok).is_none() {
            log::warn!("profiling: mapping timestamps failed");
            return;
        }
        let ticks: Vec<u64> = {
            let view = self.readback.get_mapped_range(..bytes).expect("mapped range");
            bytemuck::cast_slice(&view).to_vec()
        };
        self.readback.unmap();

        let mut totals = self.totals.lock().unwrap();
        for (i, label) in labels.iter().enumerate() {
            let elapsed = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * self.period_ns;
            let entry = totals.entry(label.clone()).or_insert((0, 0.0));
            entry.0 += 1;
            entry.1 += elapsed;
        }
    }

    pub(crate) fn totals(&self) -> Vec<(String, u64, f64)> {
        let mut rows: Vec<_> = self
            .totals
            .lock()
            .unwrap()
            .iter()
            .map(|(k, (n, ns))| (k.clone(), *n, *ns))
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }

    pub(crate) fn reset(&self) {
        self.totals.lock().unwrap().clear();
    }
}

/// One kernel's row of the profile.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelTime {
    pub kernel: String,
    pub calls: u64,
    pub total_ms: f64,
}

impl Gpu {
    /// Per-kernel GPU time gathered since start or the last [`Gpu::reset_profile`], longest
    /// first; empty unless `FIAK_PROFILE=1`.
    pub fn kernel_times(&self) -> Vec<KernelTime> {
        self.synchronize();
        let Some(profiler) = &self.profiler else {
            return Vec::new();
        };
        profiler
            .totals()
            .into_iter()
            .map(|(kernel, calls, ns)| KernelTime {
                kernel,
                calls,
                total_ms: ns / 1e6,
            })
            .collect()
    }

    pub fn reset_profile(&self) {
        if let Some(p) = &self.profiler {
            p.reset();
        }
    }

    pub fn profiling(&self) -> bool {
        self.profiler.is_some()
    }

    /// Formats [`Gpu::kernel_times`] as a table; `None` when profiling is off.
    pub fn profile_report(&self) -> Option<String> {
        self.profiler.as_ref()?;
        let rows = self.kernel_times();
        let total: f64 = rows.iter().map(|r| r.total_ms).sum();
        let mut out = format!(
            "{:<40} {:>8} {:>12} {:>10} {:>7}\n",
            "kernel", "calls", "total ms", "mean us", "share"
        );
        for r in &rows {
            out.push_str(&format!(
                "{:<40} {:>8} {:>12.3} {:>10.1} {:>6.1}%\n",
                r.kernel,
                r.calls,
                r.total_ms,
                r.total_ms * 1e3 / r.calls as f64,
                100.0 * r.total_ms / total.max(1e-12)
            ));
        }
        out.push_str(&format!(
            "{:<40} {:>8} {:>12.3}\n",
            "all kernels",
            rows.iter().map(|r| r.calls).sum::<u64>(),
            total
        ));
        Some(out)
    }
}
