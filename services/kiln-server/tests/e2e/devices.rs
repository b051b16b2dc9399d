//! Devices: where models are served is the server's own setting
//! (`serve_device`), checked at start. Placing DEVICE_AUTO jobs on the least
//! busy of several GPUs is tested on the placement logic with a fake device
//! list (`placement.rs`); this machine has no GPU.

use kiln::v1 as pb;
use kiln_testkit::*;

#[tokio::test]
async fn a_serve_device_this_machine_does_not_have_stops_the_start() {
    let dir = temp_dir("serve-device");
    for (value, says) in [
        ("cuda:64", "CUDA devices"),
        ("gpu", "not one of auto, cpu, cuda:N"),
    ] {
        let stderr = Server::fails_to_start(&dir, &[("KILN_SERVE_DEVICE", value)]);
        assert!(
            stderr.contains("serve_device") && stderr.contains(says),
            "{value}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn models_are_served_on_the_serve_device() {
    let server = Server::start_with(&[("KILN_SERVE_DEVICE", "cpu")]);
    let job = submit(
        &server,
        pb::JobSpec {
            model_name: "placed".into(),
            ..inline_regression(32, 4, 2, 8)
        },
    )
    .await
    .unwrap();
    finished(&watch_all(&server, &job.id).await);
    assert_eq!(get_job(&server, &job.id).await.device, "cpu");
    let models = list_models(&server).await;
    let placed = models.iter().find(|m| m.name == "placed").unwrap();
    assert_eq!(placed.device, "cpu", "{placed:?}");
}
