//! What a hostile user tried (issue 20): two servers on one data directory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_testkit::*;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

async fn serving(server: &Server) {
    let status = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn one_server_per_data_directory() {
    let first = Server::start();
    let dir = first.data_dir.clone();
    let pid = std::fs::read_to_string(dir.join("LOCK")).unwrap();
    let pid = pid.trim();
    assert!(pid.parse::<u32>().is_ok(), "{pid:?}");

    let mut second = Command::new(server_binary())
        .env("KILN_LISTEN", "127.0.0.1:0")
        .env("KILN_DATA_DIR", &dir)
        .env("KILN_LOG", "warn")
        .env("KILN_METRICS_LISTEN", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = second.kill();
    let output = second.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && !stdout.contains("listening on"),
        "a second server started on {}: {stdout}{stderr}",
        dir.display()
    );
    assert!(
        stderr.contains("in use by another kiln-server") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    // The first one goes on; once it is killed, a new one takes the directory.
    serving(&first).await;
    let dir = first.kill_keeping_data();
    let again = Server::start_in(dir, &[]);
    serving(&again).await;
}
