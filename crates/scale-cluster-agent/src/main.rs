use clap::Parser;

fn main() -> std::process::ExitCode {
    scale_cluster_agent::cli::main(scale_cluster_agent::cli::Cli::parse())
}
