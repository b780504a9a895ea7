//! The `fiak` command line.

mod bench;
mod common;
mod devices;
mod eval;
mod generate;
mod prune;
mod run;
mod train;

use clap::{Args, Parser, Subcommand};

use crate::error::Result;
use crate::gpu::{self, GpuOptions};

#[derive(Parser, Debug)]
#[command(
    name = "fiak",
    version,
    about = "Train, prune and benchmark transformers with FiAK on any GPU"
)]
pub struct Cli {
    #[command(flatten)]
    pub gpu: GpuArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct GpuArgs {
    /// Graphics backend: vulkan, metal, dx12 or gl [env: FIAK_BACKEND]
    #[arg(long, global = true)]
    pub backend: Option<String>,

    /// Adapter index from `fiak devices`, or part of its name [env: FIAK_ADAPTER]
    #[arg(long, global = true)]
    pub adapter: Option<String>,
}

impl GpuArgs {
    pub fn options(&self) -> GpuOptions {
        GpuOptions {
            backend: self.backend.clone(),
            adapter: self.adapter.clone(),
            profile: false,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List adapters with backend, device type, driver and key limits
    Devices(devices::DevicesArgs),
    /// Train a dense or FiAK model; --init DIR continues from a model
    Train(train::TrainCmd),
    /// Build pruning patterns from learned priors
    Prune(prune::PruneCmd),
    /// Accuracy or perplexity, throughput, attention FLOPs and memory
    Eval(eval::EvalCmd),
    /// The whole pipeline: dense baseline, FiAK priors, prune, fine-tune, evaluate, report
    Run(run::RunCmd),
    /// Sample text from a GPT model
    Generate(generate::GenerateCmd),
    /// Dense against pruned: kernel times, model throughput, peak memory
    Bench(bench::BenchCmd),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if !matches!(cli.command, Command::Devices(_)) {
        let mut options = cli.gpu.options();
        options.profile = matches!(cli.command, Command::Bench(_));
        gpu::init(&options)?;
    }
    let result = match &cli.command {
        Command::Devices(args) => devices::run(&cli.gpu, args),
        Command::Train(cmd) => train::run(cmd),
        Command::Prune(cmd) => prune::run(cmd),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Run(cmd) => run::run(cmd),
        Command::Generate(cmd) => generate::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
    };
    let profile_requested = std::env::var("FIAK_PROFILE").is_ok_and(|v| v == "1");
    if let Some(gpu) = gpu::try_get_existing()
        && profile_requested
        && let Some(report) = gpu.profile_report()
    {
        eprintln!("GPU time per kernel (FIAK_PROFILE=1):\n{report}");
    }
    result
}
