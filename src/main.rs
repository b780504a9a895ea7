use clap::Parser;

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,wgpu_hal=off,wgpu_core=warn,naga=warn"),
    )
    .init();
    let cli = fiak::cli::Cli::parse();
    if let Err(e) = fiak::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
