//! PostgreSQL as kiln's storage, against a real server started for the
//! test ([`PgServer`]; skipped, saying so, where PostgreSQL is not
//! installed). The same contract runs on the SQLite file, so the two
//! backends are held to one behaviour.

use std::sync::Arc;
use std::time::Duration;

use kiln::v1 as pb;
use kiln_store::{Db, JobError, JobStore, ModelRow, PgStorage, Storage};
use kiln_testkit::{temp_dir, PgServer};
use pb::job_event::Kind;

fn job(id: &str, state: pb::JobState) -> pb::Job {
    pb::Job {
        id: id.into(),
        model_name: format!("m-{id}"),
        state: state as i32,
        ..Default::default()
    }
}

fn event(id: &str, sequence: u64, state: pb::JobState) -> pb::JobEvent {
    pb::JobEvent {
        job_id: id.into(),
        sequence,
        time: None,
        kind: Some(Kind::StateChanged(pb::StateChanged {
            state: state as i32,
            ..Default::default()
        })),
    }
}

/// What every backend must do, on an empty store.
fn contract(s: &dyn Storage) {
    let spec = pb::JobSpec {
        model_name: "m-b".into(),
        ..Default::default()
    };
    s.append_event(
        &job("b", pb::JobState::Queued),
        Some(&spec),
        &event("b", 0, pb::JobState::Queued),
    )
    .unwrap();
    s.append_event(
        &job("a", pb::JobState::Queued),
        None,
        &event("a", 0, pb::JobState::Queued),
    )
    .unwrap();
    s.append_event(
        &job("b", pb::JobState::Running),
        Some(&spec),
        &event("b", 1, pb::JobState::Running),
    )
    .unwrap();
    // A sequence number is stored once; the failed write changes nothing.
    assert!(s
        .append_event(
            &job("b", pb::JobState::Failed),
            None,
            &event("b", 1, pb::JobState::Failed),
        )
        .is_err());
    let jobs = s.jobs().unwrap();
    let ids: Vec<_> = jobs.iter().map(|j| j.job.id.as_str()).collect();
    assert_eq!(ids, ["b", "a"], "submission order");
    assert_eq!(jobs[0].job.state(), pb::JobState::Running);
    assert_eq!(jobs[0].job.spec.as_ref().unwrap().model_name, "m-b");
    let sequences: Vec<u64> = jobs[0].events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [0, 1]);
    assert!(jobs[1].job.spec.is_none());
    let b = s.job_from("b", 1).unwrap().expect("job b");
    assert_eq!(b.job.state(), pb::JobState::Running);
    assert_eq!(b.events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1]);
    assert!(s.job_from("b", 2).unwrap().unwrap().events.is_empty());
    assert!(s
        .job_from("b", u64::MAX)
        .unwrap()
        .unwrap()
        .events
        .is_empty());
    assert_eq!(b.job.spec.unwrap().model_name, "m-b");
    assert!(s.job_from("zz", 0).unwrap().is_none());

    s.put_dataset("ds-2", "second", 20, "{\"id\":\"ds-2\"}")
        .unwrap();
    s.put_dataset("ds-1", "first", 10, "{\"id\":\"ds-1\"}")
        .unwrap();
    s.put_dataset("ds-1", "first", 10, "{\"id\":\"ds-1\",\"v\":2}")
        .unwrap();
    assert_eq!(
        s.datasets().unwrap(),
        ["{\"id\":\"ds-1\",\"v\":2}", "{\"id\":\"ds-2\"}"]
    );

    let row = |name: &str, version| ModelRow {
        name: name.into(),
        version,
        job_id: format!("job-{version}"),
        artifact: format!("job-{version}"),
        meta: "{}".into(),
    };
    for (name, version) in [("z", 1), ("m", 2), ("m", 1)] {
        s.put_model(&row(name, version)).unwrap();
    }
    s.set_alias("m", "prod", 1).unwrap();
    s.set_alias("m", "prod", 2).unwrap();
    s.set_alias("m", "old", 1).unwrap();
    let listed: Vec<_> = s
        .models()
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.version))
        .collect();
    assert_eq!(listed, [("m".into(), 1), ("m".into(), 2), ("z".into(), 1)]);
    assert_eq!(
        s.aliases().unwrap(),
        [
            ("m".into(), "old".into(), 1),
            ("m".into(), "prod".into(), 2)
        ]
    );
    s.delete_model("m", 1).unwrap();
    assert_eq!(s.aliases().unwrap(), [("m".into(), "prod".into(), 2)]);
    assert_eq!(s.models().unwrap().len(), 2);

    for (id, state) in [("s2", 1), ("s1", 1), ("s2", 3)] {
        s.put_sweep(&pb::Sweep {
            id: id.into(),
            state,
            ..Default::default()
        })
        .unwrap();
    }
    let sweeps: Vec<_> = s
        .sweeps()
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.state))
        .collect();
    assert_eq!(sweeps, [("s2".into(), 3), ("s1".into(), 1)]);

    s.probe().unwrap();
    assert_eq!(s.write_fault(), None);
}

#[test]
fn sqlite_keeps_the_storage_contract() {
    let dir = temp_dir("contract-sqlite");
    contract(&Db::open(&dir.join("kiln.db")).unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn postgres_keeps_the_storage_contract_and_reopens_with_everything() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database("contract");
    contract(&PgStorage::open(&url).unwrap());
    // A job store on it: what one process wrote, the next loads.
    let store = JobStore::with_db(Arc::new(PgStorage::open(&url).unwrap())).unwrap();
    store
        .create(pb::Job {
            id: "job-1".into(),
            ..Default::default()
        })
        .unwrap();
    store
        .append(
            "job-1",
            Kind::StateChanged(pb::StateChanged {
                state: pb::JobState::Running as i32,
                ..Default::default()
            }),
        )
        .unwrap();
    drop(store);
    let again = JobStore::with_db(Arc::new(PgStorage::open(&url).unwrap())).unwrap();
    assert_eq!(again.get("job-1").unwrap().state(), pb::JobState::Running);
    assert_eq!(again.events("job-1").unwrap().len(), 2);
}

#[test]
fn replicas_starting_together_create_the_schema_once() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database("migrate");
    let opened: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStorage::open(&url).map(|_| ()))
        })
        .collect();
    for replica in opened {
        replica.join().unwrap().expect("every replica opens");
    }
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM kiln_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "one schema version row");
}

#[test]
fn a_restarted_postgres_is_reconnected_and_a_down_one_is_unavailable() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database("restart");
    let storage = PgStorage::open(&url).unwrap();
    storage.put_dataset("ds-1", "one", 1, "{}").unwrap();
    // Every connection cut (as a restart does): the next call reconnects.
    let mut admin = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = 'restart' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    // The first call may see the cut; the one after reconnects.
    let _ = storage.datasets();
    assert_eq!(storage.datasets().unwrap(), ["{}"]);
    drop(server);
    let down = storage.put_dataset("ds-2", "two", 2, "{}").unwrap_err();
    assert!(!down.is_out_of_space(), "{down}");
    let fault = storage
        .write_fault()
        .expect("the failed write is remembered");
    assert!(
        !fault.out_of_space && fault.message.contains("postgres"),
        "{fault:?}"
    );
}

fn running() -> Kind {
    Kind::StateChanged(pb::StateChanged {
        state: pb::JobState::Running as i32,
        ..Default::default()
    })
}

fn epoch(n: u32) -> Kind {
    Kind::Epoch(pb::EpochMetrics {
        epoch: n,
        ..Default::default()
    })
}

/// Claims until one is granted (another's lease must expire first); how
/// long that took.
fn claim_when_free(storage: &PgStorage, lease: Duration) -> (kiln_store::Claim, Duration) {
    let started = std::time::Instant::now();
    loop {
        if let Some(claim) = storage.claim_job(lease, false).unwrap() {
            return (claim, started.elapsed());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never granted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three processes on one database: an api replica (`api`) and two
/// trainers. One lease per job; a trainer whose lease ended can write
/// nothing for the job; an event stored first by another process is read
/// back, not overwritten; a cancel reaches the trainer that holds the job.
#[test]
fn leases_give_a_job_to_one_trainer_and_fence_the_one_that_lost_it() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database("leases");
    let open = || Arc::new(PgStorage::open(&url).unwrap());
    let (api_db, first_db, second_db) = (open(), open(), open());
    let api = JobStore::with_db(api_db.clone()).unwrap();
    let first = JobStore::with_db(first_db.clone()).unwrap();
    let second = JobStore::with_db(second_db.clone()).unwrap();
    assert!(api.shared());
    api.create(pb::Job {
        id: "job-1".into(),
        ..Default::default()
    })
    .unwrap();

    // One trainer gets it; the other finds nothing to take.
    let lease = Duration::from_millis(1500);
    let claim = first_db
        .claim_job(lease, false)
        .unwrap()
        .expect("queued job");
    assert_eq!((claim.job_id.as_str(), claim.attempt), ("job-1", 1));
    assert_eq!(second_db.claim_job(lease, false).unwrap(), None);
    assert_eq!(
        first.sync().unwrap(),
        1,
        "the job created on the api replica"
    );
    first.append("job-1", running()).unwrap();
    first.append("job-1", epoch(1)).unwrap();

    // The api replica follows: the events, and a watcher woken by them.
    assert_eq!(api.sync().unwrap(), 1);
    assert_eq!(api.get("job-1").unwrap().epochs_completed, 1);
    assert_eq!(api.events("job-1").unwrap(), first.events("job-1").unwrap());

    // The first trainer stops renewing (paused): once its lease expires
    // the second takes the job, with the next attempt.
    let (claim, waited) = claim_when_free(&second_db, lease);
    assert_eq!(claim.attempt, 2);
    assert!(waited < lease + Duration::from_secs(5), "{waited:?}");
    let late = first.append("job-1", epoch(2)).unwrap_err();
    assert_eq!(
        late,
        JobError::Fenced("job-1".into()),
        "a late write is refused"
    );
    let renewed = first_db.renew_leases(lease).unwrap();
    assert_eq!(renewed.len(), 1);
    assert!(!renewed[0].held, "{renewed:?}");
    assert!(
        first_db.write_fault().is_none(),
        "a fenced write says nothing of the database's health"
    );
    second.sync().unwrap();
    second.append("job-1", epoch(2)).unwrap();
    assert_eq!(second.get("job-1").unwrap().epochs_completed, 2);

    // The api replica cancels a job it last saw QUEUED, which a trainer
    // took meanwhile: its write conflicts, it reads the job again (RUNNING
    // now), and asks the trainer to stop it instead.
    api.create(pb::Job {
        id: "job-2".into(),
        ..Default::default()
    })
    .unwrap();
    let claim = first_db.claim_job(lease, false).unwrap().expect("job-2");
    assert_eq!(claim.job_id, "job-2");
    first.sync().unwrap();
    first.append("job-2", running()).unwrap();
    // A policy's stop (a sweep pruning a trial) carries its reason along.
    let pruned = "pruned: below the median";
    let cancelled = api.stop("job-2", pb::StopReason::Pruned, pruned).unwrap();
    assert_eq!(cancelled.state(), pb::JobState::Running);
    assert_eq!(api.events("job-2").unwrap(), first.events("job-2").unwrap());
    let renewed = first_db.renew_leases(lease).unwrap();
    let job_2 = renewed.iter().find(|l| l.job_id == "job-2").unwrap();
    assert!(job_2.held && job_2.cancel_requested, "{renewed:?}");
    assert_eq!(
        job_2.stop,
        Some((pb::StopReason::Pruned as i32, pruned.to_string()))
    );
    // The trainer ends it with that reason.
    first.cancel_here("job-2", job_2.stop.clone());
    let ended = first
        .append("job-2", kiln_store::jobs::cancelled_event("stopped"))
        .unwrap();
    assert_eq!(ended.state(), pb::JobState::Cancelled);
    assert_eq!(ended.message, pruned, "{ended:?}");
    // job-1's lease is still reported lost to the trainer that had it.
    assert!(renewed.iter().any(|l| l.job_id == "job-1" && !l.held));

    // Model versions: one number, one owner.
    let row = |job: &str| ModelRow {
        name: "m".into(),
        version: second_db.next_model_version("m").unwrap().unwrap(),
        job_id: job.into(),
        artifact: job.into(),
        meta: "{}".into(),
    };
    let mine = row("job-1");
    second_db.put_model(&mine).unwrap();
    second_db.put_model(&mine).unwrap(); // the same row again
    let theirs = ModelRow {
        version: 1,
        ..row("job-9")
    };
    assert!(matches!(
        api_db.put_model(&theirs),
        Err(kiln_store::DbError::Conflict(_))
    ));
    assert_eq!(api_db.next_model_version("m").unwrap(), Some(2));
    // A trainer that lost the job cannot register its model either.
    let stale = ModelRow {
        version: 2,
        ..row("job-1")
    };
    assert!(matches!(
        first_db.put_model(&stale),
        Err(kiln_store::DbError::Fenced(_))
    ));
    assert_eq!(api_db.next_model_version("m").unwrap(), Some(2));
}
