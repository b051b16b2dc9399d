//! A real kiln-server process for one test: a free port, its own data
//! directory, one torch thread, no Prometheus listener; killed and its data
//! removed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln::v1 as pb;
use pb::dataset_service_client::DatasetServiceClient;
use pb::inference_service_client::InferenceServiceClient;
use pb::job_service_client::JobServiceClient;
use tonic::transport::Channel;

/// A running kiln-server.
pub struct Server {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// Its data directory (removed on drop unless taken).
    pub data_dir: PathBuf,
}

/// The kiln-server executable: `$KILN_SERVER_BIN` if set; else
/// `$CARGO_BIN_EXE_kiln-server`, which cargo sets when it runs the
/// kiln-server package's own tests (the `e2e` binary); else, for other
/// packages' tests (the CLI's), the kiln-server that `cargo test --workspace`
/// built next to them in `target/<profile>`.
pub fn server_binary() -> PathBuf {
    for var in ["KILN_SERVER_BIN", "CARGO_BIN_EXE_kiln-server"] {
        if let Some(path) = std::env::var_os(var) {
            return path.into();
        }
    }
    built_binary("kiln-server", "kiln-server")
}

/// `name` as `cargo test --workspace` built it in `target/<profile>`, next
/// to this test's directory (integration tests run from `target/<profile>/deps`).
fn built_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p {package}`, or run `cargo test --workspace` (make test does)",
        path.display()
    );
    path
}

/// The `kiln` CLI executable: `$KILN_CLI_BIN` if set; else the one
/// `cargo test --workspace` built in `target/<profile>`, next to the test.
pub fn cli_binary() -> PathBuf {
    match std::env::var_os("KILN_CLI_BIN") {
        Some(path) => path.into(),
        None => built_binary("kiln", "kiln-cli"),
    }
}

/// A fresh, empty directory under the system's temporary directory, unique
/// to this test process; `tag` says what it is for.
pub fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kiln-test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// kiln-server on `data_dir` with the test defaults, then `env`.
fn command(data_dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(server_binary());
    command
        .env("KILN_LISTEN", "127.0.0.1:0")
        .env("KILN_DATA_DIR", data_dir)
        .env("KILN_TORCH_THREADS", "1")
        .env("KILN_LOG", "warn")
        // Many test servers run at once: no Prometheus listener unless a test asks.
        .env("KILN_METRICS_LISTEN", "")
        .envs(env.iter().copied());
    command
}

impl Server {
    /// Starts a server with the test defaults.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts a server with extra `KILN_*` environment settings.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        Self::start_in(temp_dir("data"), env)
    }

    /// Starts a server on `data_dir` (e.g. one a killed server left behind).
    pub fn start_in(data_dir: PathBuf, env: &[(&str, &str)]) -> Server {
        let mut child = command(&data_dir, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kiln-server");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        // Log lines written before the banner (e.g. a model that a restart
        // could not load) are passed on to stderr.
        let addr = loop {
            let mut line = String::new();
            let read = reader.read_line(&mut line).expect("read server banner");
            if read == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kiln-server exited before its banner");
            }
            match line.trim().strip_prefix("kiln-server listening on ") {
                Some(addr) => break addr.to_string(),
                None => eprint!("{line}"),
            }
        };
        Server {
            child,
            addr,
            data_dir,
        }
    }

    /// Starts a server on `data_dir` that must refuse to start: waits (at
    /// most 30 s) for it to exit, checks it never listened and failed, and
    /// returns what it wrote on stderr.
    pub fn fails_to_start(data_dir: &Path, env: &[(&str, &str)]) -> String {
        let mut child = command(data_dir, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln-server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !output.status.success() && !stdout.contains("listening on"),
            "kiln-server started on {}: {stdout}{stderr}",
            data_dir.display()
        );
        stderr
    }

    /// Its address as a URL (`http://host:port`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new connection to it.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to kiln-server")
    }

    /// A JobService client on a new connection.
    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel().await)
    }

    /// A DatasetService client on a new connection.
    pub async fn datasets(&self) -> DatasetServiceClient<Channel> {
        DatasetServiceClient::new(self.channel().await)
    }

    /// An InferenceService client on a new connection.
    pub async fn inference(&self) -> InferenceServiceClient<Channel> {
        InferenceServiceClient::new(self.channel().await)
    }

    /// SIGKILLs the server (no shutdown of any kind) and returns its data
    /// directory, left in place for [`Server::start_in`].
    pub fn kill_keeping_data(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.data_dir)
    }

    /// Sends the server SIGTERM (a graceful shutdown).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the server signal `name` (`KILL`, `STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Leaves its data directory in place when dropped: for servers that
    /// share one (the shared mode), which the test removes itself.
    pub fn sharing_data_dir(mut self) -> Server {
        self.data_dir = PathBuf::new();
        self
    }

    /// Waits, at most `limit`, for the server to exit by itself, and returns
    /// its data directory, left in place for [`Server::start_in`].
    pub fn wait_exit_keeping_data(mut self, limit: Duration) -> PathBuf {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for kiln-server") {
                assert!(status.success(), "kiln-server exited with {status}");
                return std::mem::take(&mut self.data_dir);
            }
            assert!(
                started.elapsed() < limit,
                "kiln-server still running {limit:?} after it was asked to stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}
