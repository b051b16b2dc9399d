//! kiln's state in a real PostgreSQL server (`database_url`), started for
//! the test ([`PgServer`]; skipped, saying so, where PostgreSQL is not
//! installed): what a server wrote there, the next one on the same
//! database serves, and a second server on it shares it.

use kiln::v1 as pb;
use kiln_testkit::*;

#[tokio::test]
async fn a_server_keeps_its_state_in_postgres_across_a_kill() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.database("kiln");
    let env = [("KILN_DATABASE_URL", url.as_str())];
    let server = Server::start_with(&env);
    let job = submit(
        &server,
        pb::JobSpec {
            model_name: "in-postgres".into(),
            ..inline_regression(32, 4, 3, 8)
        },
    )
    .await
    .unwrap();
    let events = watch_all(&server, &job.id).await;
    finished(&events);
    assert!(
        !server.data_dir.join("kiln.db").exists(),
        "no SQLite file with database_url"
    );

    // A second server on the same database (the shared mode) sees the job.
    let second = Server::start_in(server.data_dir.clone(), &env).sharing_data_dir();
    assert_eq!(
        get_job(&second, &job.id).await.state(),
        pb::JobState::Succeeded
    );
    drop(second);

    // kill -9, then a new server on the same database and files.
    let data_dir = server.kill_keeping_data();
    let server = Server::start_in(data_dir, &env);
    let again = get_job(&server, &job.id).await;
    assert_eq!(again.state(), pb::JobState::Succeeded);
    assert_eq!(watch_all(&server, &job.id).await, events, "the same events");
    let models = list_models(&server).await;
    assert!(
        models.iter().any(|m| m.name == "in-postgres" && m.loaded),
        "{models:?}"
    );
    server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: "in-postgres".into(),
            rows: vec![pb::Row { values: vec![1.0] }],
            ..Default::default()
        })
        .await
        .expect("the model trained before the kill is served");
}
