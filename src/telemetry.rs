//! Logs and spans: `tracing` to stderr (filtered by `RUST_LOG`, default `info`) and, when
//! `ferry serve --otlp-endpoint` is set, Ferry's spans (`ferry.ingest`, `ferry.deliver`,
//! `ferry.retry`, `ferry.dead_letter`) exported over OTLP/HTTP (protobuf) to that collector.
//! Without an endpoint no exporter exists and spans stay in-process (they prefix log lines).

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// What must be flushed at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// The collector's traces URL: `endpoint` is its base (`http://host:4318`), as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is, unless it already names `/v1/traces`.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Installs the global subscriber. Call before the async runtime starts (the exporter's HTTP
/// client is a blocking one, made and dropped outside it).
pub fn init(otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let provider = match otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces_url(endpoint))
                .build()
                .with_context(|| format!("setting up the OTLP exporter to {endpoint}"))?;
            let mut resource = Resource::builder();
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name("ferry");
            }
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build(),
            )
        }
    };
    // Ferry's own spans go to the collector whatever `RUST_LOG` lets through to stderr.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("ferry"))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.name().starts_with("ferry.")
            }))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Sends the spans still buffered.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: exporting the last spans failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_traces_path_is_added_once() {
        for (given, url) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ] {
            assert_eq!(super::traces_url(given), url);
        }
    }
}
