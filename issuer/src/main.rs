//! `weauth-issuer`: reads the configuration, sets up logging, then either serves (bind, then
//! `server::run` until SIGTERM/Ctrl-C) or runs a `keys` subcommand. No logic lives here.
//!
//! Order when serving: the whole configuration is validated (every bad variable reported at
//! once, exit status 2), the listener is bound and the key material checked before anything
//! is written, so a failed start leaves the directory as it was.

use std::process::ExitCode;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;
use weauth_issuer::app::{self, App, StartError};
use weauth_issuer::cli::{self, Command};
use weauth_issuer::config::{self, Config, Mode};
use weauth_issuer::server;
use weauth_issuer::store::StoreError;
use weauth_issuer::telemetry::otel;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(command) => command,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::help());
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("weauth-issuer {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mode = match command {
        Command::KeysRotate | Command::KeysList | Command::DataKeyReseal => Mode::Keys,
        _ => Mode::Serve,
    };
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    let unknown = config::unknown_variables(names.iter().map(String::as_str));
    let config = match Config::from_env_for(mode) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("weauth-issuer: invalid configuration:");
            for err in &errors.0 {
                eprintln!("  {err}");
            }
            for unknown in &unknown {
                eprintln!("  note: {}", describe(unknown));
            }
            eprintln!("(`weauth-issuer --help` lists every variable with its default)");
            return ExitCode::from(2);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("weauth-issuer: invalid configuration: WEAUTH_LOG: {err}");
            return ExitCode::from(2);
        }
    };
    // Logs: filtered by WEAUTH_LOG. Traces (only when an OTLP endpoint is set): the exported
    // spans, whatever WEAUTH_LOG says.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = if config.log_json {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let otlp = match otel::OtlpConfig::from_env(|name| std::env::var(name).ok()) {
        Ok(otlp) => otlp,
        Err(err) => {
            eprintln!("weauth-issuer: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let (traces, spans) = match &otlp {
        Some(otlp) => {
            let (layer, spans) = otel::layer(otlp.sampler);
            let exported = tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span()
                    && meta.target().starts_with("weauth_issuer")
                    && otel::EXPORTED.contains(&meta.name())
            });
            (Some(layer.with_filter(exported)), Some(spans))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    for unknown in &unknown {
        tracing::warn!("{}", describe(unknown));
    }
    match command {
        Command::KeysRotate | Command::KeysList | Command::DataKeyReseal => {
            let config = std::sync::Arc::new(config);
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())
                .and_then(|runtime| {
                    runtime.block_on(async {
                        match command {
                            Command::KeysRotate => cli::rotate(&config).await,
                            Command::DataKeyReseal => cli::reseal(&config).await,
                            _ => cli::list(&config).await,
                        }
                    })
                });
            match result {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("weauth-issuer: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => match serve(config, otlp.zip(spans)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!("{err}");
                eprintln!("weauth-issuer: {err}");
                // A store that cannot be opened is a configuration problem (WEAUTH_STORE names
                // an unreachable server, a wrong password or database): exit 2, like a bad
                // variable.
                let store_open = matches!(
                    err.downcast_ref::<StartError>(),
                    Some(StartError::Store(StoreError::Open { .. }))
                );
                if store_open {
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                }
            }
        },
    }
}

fn describe(unknown: &config::UnknownVar) -> String {
    match unknown.closest {
        Some(closest) => format!(
            "{} is not a variable weauth-issuer reads (ignored); did you mean {closest}?",
            unknown.name
        ),
        None => format!(
            "{} is not a variable weauth-issuer reads (ignored); see --help",
            unknown.name
        ),
    }
}

fn serve(
    config: Config,
    traces: Option<(otel::OtlpConfig, otel::SpanReceiver)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (flush_tx, flush_rx) = tokio::sync::oneshot::channel();
        let span_counts = traces.as_ref().map(|(_, spans)| spans.counts());
        let exporter = traces.map(|(otlp, spans)| {
            tracing::info!(url = %otlp.endpoint_for_log(), "exporting traces over OTLP");
            tokio::spawn(otel::export(otlp, spans, flush_rx))
        });
        let listen = config.listen;
        // Bind and check the key material first: nothing (database, data key, signing key)
        // is created by a start that cannot serve.
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|err| format!("WEAUTH_LISTEN {listen}: cannot bind: {err}"))?;
        app::preflight(&config)?;
        let app = App::build(config, None).await?;
        if let Some(counts) = span_counts {
            app.metrics.watch_spans(counts);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tasks = app.spawn_background(stop_rx);
        tracing::info!("listening on {}", listener.local_addr()?);
        server::run(listener, app, server::shutdown_signal()).await;
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        // The spans of the last second and of the drain: posted before the process ends.
        if let Some(exporter) = exporter {
            let _ = flush_tx.send(());
            let _ = tokio::time::timeout(otel::FLUSH_TIMEOUT, exporter).await;
        }
        Ok(())
    })
}
