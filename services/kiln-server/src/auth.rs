//! The guard in front of every kiln service: bearer-token authentication
//! (`auth_token` / `auth_token_file`), and the status of a request message
//! that is over `max_message_bytes`.
//!
//! main.rs wraps each service it wants protected in [`Guard`] (a tower
//! service, so the check runs before tonic decodes anything). Health stays
//! unwrapped so Kubernetes probes and load balancers need no token;
//! reflection is wrapped, so the API's shape is not open to anyone who can
//! reach the port (grpcurl's `-H` sends the header on reflection calls too).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use subtle::ConstantTimeEq as _;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Code, Status};

/// The token a request must carry, if any.
#[derive(Clone, Default)]
pub struct Auth {
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Auth")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl Auth {
    /// From the two configuration keys: `token` itself, or a file holding it
    /// (read now; surrounding whitespace such as a trailing newline is
    /// dropped). Both empty: authentication is off. Both set, or a file that
    /// is missing or empty, is an error.
    pub fn from_config(token: &str, file: Option<&Path>) -> anyhow::Result<Auth> {
        let file = file.filter(|f| !f.as_os_str().is_empty());
        let token = match (token.is_empty(), file) {
            (true, None) => return Ok(Auth::default()),
            (false, None) => token.to_string(),
            (false, Some(_)) => {
                anyhow::bail!("set auth_token or auth_token_file, not both")
            }
            (true, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading auth_token_file {}", path.display()))?;
                let token = text.trim();
                anyhow::ensure!(
                    !token.is_empty(),
                    "auth_token_file {} is empty",
                    path.display()
                );
                token.to_string()
            }
        };
        Auth::new(&token)
    }

    /// Requests must carry `authorization: Bearer <token>`.
    pub fn new(token: &str) -> anyhow::Result<Auth> {
        // The token has to fit in an HTTP header value as the client sends it.
        anyhow::ensure!(
            token
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b',' && b != b'"'),
            "the auth token must be printable ASCII without spaces, commas or quotes"
        );
        Ok(Auth {
            token: Some(token.as_bytes().into()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Ok when authentication is off or the request carries the token.
    pub fn check(&self, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "this server requires a bearer token: send the metadata \"authorization: Bearer <token>\"",
            ));
        };
        let value = value.as_bytes();
        let scheme = b"bearer ";
        let given = match value.get(..scheme.len()) {
            Some(prefix) if prefix.eq_ignore_ascii_case(scheme) => &value[scheme.len()..],
            _ => {
                return Err(Status::unauthenticated(
                    "authorization: expected \"Bearer <token>\"",
                ))
            }
        };
        // Constant time in the token's bytes (a length mismatch returns early,
        // which tells nothing about the token's content).
        if bool::from(given.trim_ascii().ct_eq(expected)) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "authorization: the bearer token is not valid",
            ))
        }
    }
}

/// Wraps services in [`Guard`]s that share one [`Auth`] and message limit.
#[derive(Clone, Debug)]
pub struct Guards {
    pub auth: Auth,
    pub max_message_bytes: usize,
    /// True once a shutdown began: new calls get UNAVAILABLE.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// What this process does: a call for a role it lacks gets
    /// FAILED_PRECONDITION naming the role.
    pub roles: crate::roles::Roles,
}

impl Guards {
    pub fn wrap<S>(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            auth: self.auth.clone(),
            max_message_bytes: self.max_message_bytes,
            stopping: self.stopping.clone(),
            roles: self.roles,
        }
    }
}

/// The server's TLS settings from the PEM files of `tls_cert_file` and
/// `tls_key_file` (rustls; the files are checked when the server is built).
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<ServerTlsConfig> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
    };
    let identity = Identity::from_pem(read("tls_cert_file", cert)?, read("tls_key_file", key)?);
    Ok(ServerTlsConfig::new().identity(identity))
}

/// A tonic service behind [`Auth`]; it also turns tonic's OUT_OF_RANGE for
/// a request message over the decoding limit into RESOURCE_EXHAUSTED (what
/// gRPC specifies for a message that is too large), naming the setting.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    auth: Auth,
    max_message_bytes: usize,
    stopping: tokio::sync::watch::Receiver<bool>,
    roles: crate::roles::Roles,
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Guard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Err(status) = self.auth.check(request.headers()) {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        if *self.stopping.borrow() {
            let status = crate::status::shutting_down();
            return Box::pin(async move { Ok(status.into_http()) });
        }
        if let Some(role) = self.roles.missing_for(request.uri().path()) {
            let status = Status::failed_precondition(format!(
                "{}: this process runs roles = {}; send it to a replica with the {role} role",
                kiln_core::brief(request.uri().path()),
                self.roles
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        if crate::deadline::already_due(request.headers()) {
            let status = Status::deadline_exceeded(
                "the call's deadline (grpc-timeout) passed before it could start",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        }
        // The service that poll_ready readied answers; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.max_message_bytes;
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            message_too_large(&mut response, limit);
            bound_message(&mut response);
            Ok(response)
        })
    }
}

/// [`Auth`] in front of the router, so that a call to a service or method
/// the server does not have answers UNAUTHENTICATED without the token rather
/// than UNIMPLEMENTED (which would tell a stranger what exists). Health
/// stays open; the services' own [`Guard`]s check again.
#[derive(Clone)]
pub struct AuthLayer(pub Auth);

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authed<S>;

    fn layer(&self, inner: S) -> Authed<S> {
        Authed {
            inner,
            auth: self.0.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct Authed<S> {
    inner: S,
    auth: Auth,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Authed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if !request.uri().path().starts_with("/grpc.health.v1.Health/") {
            if let Err(status) = self.auth.check(request.headers()) {
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// tonic's decoder answers OUT_OF_RANGE "Error, decoded message length too
/// large: ..." in a trailers-only response; rewrite it as RESOURCE_EXHAUSTED.
fn message_too_large(response: &mut http::Response<Body>, limit: usize) {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return;
    };
    if status.code() != Code::OutOfRange
        || !status
            .message()
            .contains("decoded message length too large")
    {
        return;
    }
    let found = status
        .message()
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("more");
    let replacement = Status::resource_exhausted(format!(
        "request message too large: {found} bytes, the server's limit is {limit} bytes (max_message_bytes)"
    ));
    let headers = response.headers_mut();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if replacement.add_header(headers).is_err() {
        tracing::warn!("could not rewrite an oversized-message status");
    }
}

/// The longest status message a guarded service answers, in characters.
/// Messages quote client input through `kiln_core::brief` (100 characters);
/// this is the net under every other message.
const MAX_STATUS_MESSAGE_CHARS: usize = 1024;

/// Cuts the message of a trailers-only error response to
/// [`MAX_STATUS_MESSAGE_CHARS`] characters, ending it with "…".
fn bound_message(response: &mut http::Response<Body>) {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return;
    };
    let Some((end, _)) = status
        .message()
        .char_indices()
        .nth(MAX_STATUS_MESSAGE_CHARS)
    else {
        return;
    };
    let cut = Status::new(status.code(), format!("{}…", &status.message()[..end]));
    let headers = response.headers_mut();
    for name in ["grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if cut.add_header(headers).is_err() {
        tracing::warn!("could not bound a status message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        if let Some(v) = value {
            map.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn long_status_messages_are_cut() {
        let long = Status::not_found("x".repeat(20_000));
        let mut response = long.into_http::<Body>();
        bound_message(&mut response);
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message().chars().count(),
            MAX_STATUS_MESSAGE_CHARS + 1
        );
        assert!(status.message().ends_with('…'));
    }

    #[test]
    fn off_lets_everything_through() {
        let auth = Auth::from_config("", None).unwrap();
        assert!(!auth.enabled());
        assert!(auth.check(&headers(None)).is_ok());
        assert!(auth.check(&headers(Some("Bearer x"))).is_ok());
    }

    #[test]
    fn checks_the_bearer_token() {
        let auth = Auth::new("s3cret-token").unwrap();
        assert!(auth.check(&headers(Some("Bearer s3cret-token"))).is_ok());
        assert!(auth.check(&headers(Some("bearer s3cret-token"))).is_ok());
        for (value, message) in [
            (None, "requires a bearer token"),
            (Some("Bearer s3cret-tokeN"), "not valid"),
            (Some("Bearer s3cret"), "not valid"),
            (Some("Bearer "), "not valid"),
            (Some("Basic s3cret-token"), "expected \"Bearer <token>\""),
            (Some("s3cret-token"), "expected \"Bearer <token>\""),
        ] {
            let status = auth.check(&headers(value)).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{value:?}");
            assert!(status.message().contains(message), "{status:?}");
        }
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("kiln-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let auth = Auth::from_config("", Some(&file)).unwrap();
        assert!(auth.check(&headers(Some("Bearer from-a-file"))).is_ok());
        let both = Auth::from_config("x", Some(&file)).unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        std::fs::write(&file, " \n").unwrap();
        let empty = Auth::from_config("", Some(&file)).unwrap_err();
        assert!(empty.to_string().contains("is empty"), "{empty}");
        let missing = Auth::from_config("", Some(&dir.join("missing"))).unwrap_err();
        assert!(missing.to_string().contains("reading auth_token_file"));
        assert!(Auth::new("has space").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
