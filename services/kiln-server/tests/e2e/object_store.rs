//! The shared mode without a shared volume: every process has a data
//! directory of its own (a cache) and the files go through a real
//! S3-compatible store (SeaweedFS's `weed mini`, started by the test with
//! PostgreSQL; skipped, saying so, where either is not installed). A
//! dataset uploaded on one api replica is trained on by a trainer that
//! never saw it; after a kill -9, the other trainer continues from the
//! checkpoint the first one pushed; the model is served by replicas that
//! pull its files, one of them started afterwards on an empty directory.

use std::time::Duration;

use kiln::v1 as pb;
use kiln_testkit::*;
use pb::job_event::Kind;

struct Shared {
    url: String,
    store_url: String,
    aws: Vec<(&'static str, String)>,
    // Last: the servers go before the stores.
    _s3: S3Server,
    _pg: PgServer,
}

impl Shared {
    fn start() -> Option<Shared> {
        let pg = PgServer::start()?;
        let s3 = S3Server::start()?;
        Some(Shared {
            url: pg.database("objects"),
            store_url: s3.url("objects"),
            aws: s3.env(),
            _s3: s3,
            _pg: pg,
        })
    }

    /// A process with a data directory of its own.
    fn process(&self, roles: &str) -> Server {
        let mut env: Vec<(&str, &str)> = vec![
            ("KILN_DATABASE_URL", &self.url),
            ("KILN_OBJECT_STORE_URL", &self.store_url),
            ("KILN_ROLES", roles),
            ("KILN_LEASE_SECONDS", "2"),
            ("KILN_CHECKPOINT_EVERY_EPOCHS", "1"),
        ];
        env.extend(self.aws.iter().map(|(k, v)| (*k, v.as_str())));
        Server::start_in(temp_dir("own-cache"), &env)
    }
}

fn csv(rows: usize) -> Vec<u8> {
    let mut text = String::from("x,z,y\n");
    for i in 0..rows {
        let x = i as f64 / rows as f64 * 6.0 - 3.0;
        let z = ((i * 7) % 11) as f64 / 11.0;
        text.push_str(&format!("{x},{z},{}\n", x.sin() + 0.5 * z));
    }
    text.into_bytes()
}

fn spec(dataset: &str) -> pb::JobSpec {
    let mut spec = inline_regression(1, 16, 30, 8);
    spec.model_name = "from-objects".into();
    spec.data = Some(dataset_source(dataset, &["y"]));
    spec.training.as_mut().unwrap().seed = 5;
    spec
}

fn curve(events: &[pb::JobEvent]) -> Vec<(f64, f64)> {
    epochs(events)
        .iter()
        .map(|m| (m.train_loss, m.val_loss))
        .collect()
}

async fn predict(server: &Server, version: u32) -> Option<Vec<f64>> {
    let answer = server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: "from-objects".into(),
            version: version.to_string(),
            rows: vec![pb::Row {
                values: vec![0.5, 0.25],
            }],
            ..Default::default()
        })
        .await
        .ok()?;
    Some(answer.into_inner().predictions[0].values.clone())
}

async fn served(server: &Server, version: u32) -> Vec<f64> {
    let started = std::time::Instant::now();
    loop {
        if let Some(values) = predict(server, version).await {
            return values;
        }
        assert!(
            started.elapsed() < JOB_WAIT,
            "version {version} never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_a_shared_volume_files_go_through_the_object_store() {
    let Some(shared) = Shared::start() else {
        return;
    };
    let (a, b) = (shared.process("api,serve"), shared.process("api,serve"));
    let trainers = [shared.process("trainer"), shared.process("trainer")];
    let dataset = upload(&a, "objects", &csv(1500), 64 << 10).await.unwrap();
    let s3 = &shared._s3;
    let file = format!("objects/datasets/{}.csv", dataset.id);
    assert!(s3.keys("objects/datasets/").contains(&file), "{file}");

    // Trained by a trainer that never saw the dataset; killed mid-run.
    let job = submit(&a, spec(&dataset.id)).await.unwrap();
    let mut stream = b
        .jobs()
        .await
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            from_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        let third = matches!(&event.kind, Some(Kind::Epoch(m)) if m.epoch == 3);
        events.push(event);
        if third {
            break;
        }
    }
    let checkpoint = format!("objects/checkpoints/{}.ckpt", job.id);
    assert!(s3.keys("objects/checkpoints/").contains(&checkpoint));
    // Which trainer has it: the one whose cache has the dataset.
    let holder = trainers
        .iter()
        .position(|t| {
            t.data_dir
                .join("datasets")
                .join(format!("{}.csv", dataset.id))
                .exists()
        })
        .expect("a trainer pulled the dataset");
    trainers[holder].signal("KILL");
    while let Some(event) = stream.message().await.unwrap() {
        events.push(event);
    }
    let requeued: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StateChanged(s)) if s.state() == pb::JobState::Queued && e.sequence > 0 => {
                Some(s.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(requeued.len(), 1, "{requeued:?}");
    assert!(
        requeued[0].resume_after_epoch >= 2,
        "continued from the pushed checkpoint: {:?}",
        requeued[0]
    );
    let numbers: Vec<u32> = epochs(&events).iter().map(|m| m.epoch).collect();
    assert_eq!(numbers, (1..=30).collect::<Vec<_>>());
    finished(&events);

    // The model: its files in the store, served by both api replicas and
    // by one started now on an empty directory; the checkpoint is gone.
    let model_keys = s3.keys("objects/models/");
    assert!(
        model_keys
            .iter()
            .any(|k| k.starts_with(&format!("objects/models/{}.", job.id))),
        "{model_keys:?}"
    );
    let answer = served(&a, 1).await;
    assert_eq!(served(&b, 1).await, answer);
    let late = shared.process("serve");
    assert_eq!(
        predict(&late, 1).await,
        Some(answer),
        "ready with the model"
    );
    assert!(!s3.keys("objects/checkpoints/").contains(&checkpoint));
    let logs = s3.keys(&format!("objects/tensorboard/from-objects/{}/", job.id));
    assert!(
        logs.iter().any(|k| k.contains("tfevents")),
        "the TensorBoard run in the store: {logs:?}"
    );

    // The same job, never interrupted, on the same data: the same curve.
    let fresh = submit(&b, spec(&dataset.id)).await.unwrap();
    assert_eq!(curve(&watch_all(&a, &fresh.id).await), curve(&events));
}
