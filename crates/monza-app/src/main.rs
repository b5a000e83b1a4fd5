//! The `monza` binary.

use std::process::ExitCode;

use clap::Parser;
use monza_app::settings::{Cli, Commands, ServeArgs, TemplatesCommand};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Commands::Templates(TemplatesCommand::Check {
            dir,
            allow_unsafe_templates,
        })) => monza_app::check_templates(&dir, allow_unsafe_templates),
        Some(Commands::Serve(args)) => serve(*args).await,
        Some(Commands::Token(args)) => monza_app::tokens::run(args).await,
        None => serve(ServeArgs::defaults()).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    monza_app::telemetry::init(args.log_format);
    let result = async {
        let app = monza_app::Application::build(args).await?;
        app.run_until_stopped().await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("monza stopped: {e:#}");
            eprintln!("monza: {e:#}");
            ExitCode::FAILURE
        }
    }
}
