//! `fiak devices`: every adapter with its backend, type, driver and the limits fiak relies on.

use clap::Args;

use super::GpuArgs;
use crate::error::{Error, Result};
use crate::gpu;

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Print the list as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(gpu_args: &GpuArgs, args: &DevicesArgs) -> Result<()> {
    let backend = gpu_args
        .backend
        .clone()
        .or_else(|| std::env::var("FIAK_BACKEND").ok().filter(|s| !s.is_empty()));
    let adapters = gpu::enumerate_adapters(backend.as_deref())?;
    if adapters.is_empty() {
        return Err(Error::NoAdapter(gpu::install_hint().to_string()));
    }

    let mut rows = Vec::new();
    for (index, adapter) in adapters.iter().enumerate() {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        rows.push(serde_json::json!({
            "index": index,
            "name": info.name,
            "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type),
            "driver": info.driver,
            "driver_info": info.driver_info,
            "max_buffer_size": limits.max_buffer_size,
            "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
            "max_compute_workgroup_storage_size": limits.max_compute_workgroup_storage_size,
            "max_compute_invocations_per_workgroup": limits.max_compute_invocations_per_workgroup,
            "max_compute_workgroups_per_dimension": limits.max_compute_workgroups_per_dimension,
            "timestamp_query": features.contains(wgpu::Features::TIMESTAMP_QUERY),
            "shader_f16": features.contains(wgpu::Features::SHADER_F16),
            "subgroup": features.contains(wgpu::Features::SUBGROUP),
        }));
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON of plain values"));
        return Ok(());
    }
    for row in &rows {
        let mib = |key: &str| row[key].as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
        println!(
            "[{}] {}\n    backend {}, type {}, driver {} {}\n    max buffer {:.0} MiB, max storage binding {:.0} MiB, \
             workgroup storage {} KiB, {} invocations per workgroup, {} workgroups per dimension\n    \
             timestamp queries {}, f16 {}, subgroups {}",
            row["index"],
            row["name"].as_str().unwrap_or(""),
            row["backend"].as_str().unwrap_or(""),
            row["device_type"].as_str().unwrap_or(""),
            row["driver"].as_str().unwrap_or(""),
            row["driver_info"].as_str().unwrap_or(""),
            mib("max_buffer_size"),
            mib("max_storage_buffer_binding_size"),
            row["max_compute_workgroup_storage_size"].as_u64().unwrap_or(0) / 1024,
            row["max_compute_invocations_per_workgroup"],
            row["max_compute_workgroups_per_dimension"],
            yes_no(&row["timestamp_query"]),
            yes_no(&row["shader_f16"]),
            yes_no(&row["subgroup"]),
        );
    }
    Ok(())
}

fn yes_no(value: &serde_json::Value) -> &'static str {
    if value.as_bool() == Some(true) { "yes" } else { "no" }
}
