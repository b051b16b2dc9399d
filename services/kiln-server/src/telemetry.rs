//! Telemetry: the `tracing` subscriber (the `log` filter on stderr and, when
//! `otlp_endpoint` is set, OpenTelemetry traces exported over OTLP/gRPC), and
//! [`GrpcLayer`], the tower layer that gives every RPC a span and counts it
//! for Prometheus (`kiln_grpc_requests_total`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::field::Empty;
use tracing::Instrument as _;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::config::Config;

/// The service name traces carry.
pub const SERVICE_NAME: &str = "kiln-server";

/// What must be flushed when the server exits.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber. The `log` filter applies to what is
/// printed; spans exported over OTLP are kiln-server's own at INFO and above
/// (one per RPC, one per job), whatever `log` says.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_filter(filter);
    let (provider, otel) = if config.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&config.otlp_endpoint)
            .build()
            .with_context(|| format!("OTLP exporter for {}", config.otlp_endpoint))?;
        // The batch processor runs on its own thread; OTEL_BSP_* environment
        // variables (e.g. OTEL_BSP_SCHEDULE_DELAY) tune it.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE_NAME))
            .with_filter(Targets::new().with_target("kiln_server", tracing::Level::INFO));
        (Some(provider), Some(layer))
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // Shutdown blocks until the exporter thread has sent what it holds;
        // that export runs on this runtime, so block elsewhere.
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("kiln-server: flushing traces failed: {e}"),
            Err(e) => eprintln!("kiln-server: flushing traces failed: {e}"),
        }
    }
}

/// A tower layer for the tonic server: one INFO span per RPC (`rpc.service`,
/// `rpc.method`, `rpc.grpc.status_code`, `duration_ms`; named
/// "package.Service/Method" in OpenTelemetry) lasting until the response's
/// trailers are sent, so streams are timed whole, and a count per method and
/// status code.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcLayer;

impl<S> tower_layer::Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_string();
        let (service, rpc) = method.split_once('/').unwrap_or((method.as_str(), ""));
        let span = tracing::info_span!(
            "grpc",
            otel.name = %method,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %rpc,
            rpc.grpc.status_code = Empty,
            duration_ms = Empty,
        );
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let call = Call {
            span: span.clone(),
            method,
            start: Instant::now(),
        };
        Box::pin(
            async move {
                match future.await {
                    Ok(response) => {
                        // Errors usually come trailers-only: the status is in the headers.
                        let call = match grpc_status(response.headers()) {
                            Some(code) => {
                                call.finish(code);
                                None
                            }
                            None => Some(call),
                        };
                        Ok(response.map(|inner| TracedBody { inner, call }))
                    }
                    Err(e) => {
                        call.finish(UNKNOWN);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;

/// One RPC in flight.
struct Call {
    span: tracing::Span,
    method: String,
    start: Instant,
}

impl Call {
    fn finish(self, code: i32) {
        let elapsed = self.start.elapsed();
        let name = code_name(code);
        self.span.record("rpc.grpc.status_code", code);
        self.span.record("duration_ms", elapsed.as_secs_f64() * 1e3);
        // OpenTelemetry's gRPC conventions: these codes are server errors.
        if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
            self.span.record("otel.status_code", "ERROR");
        }
        crate::metrics::grpc_request(&self.method, name);
    }
}

/// A response body that finishes its call's span when the trailers (which
/// carry `grpc-status`) go out, or when it is dropped before (the client
/// cancelled).
pub struct TracedBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B: Body + Unpin> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| grpc_status(trailers).unwrap_or(UNKNOWN)),
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => Some(UNKNOWN),
            Poll::Pending => None,
        };
        if let Some(code) = code {
            if let Some(call) = this.call.take() {
                call.finish(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for TracedBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(CANCELLED);
        }
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The canonical name of a gRPC status code, as the `code` label shows it.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
