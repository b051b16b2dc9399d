//! What handing work to a sleeping thread and back costs on this machine:
//! the hop every Predict makes to its model's worker thread and back. The
//! main thread works for 300 µs between round trips, so the other thread
//! has gone to sleep, as a model's worker has between requests at
//! concurrency 1. Referenced by the README's serving performance section.
//!
//! ```sh
//! cargo run --release -p kiln-serve --example wake_latency
//! ```
use std::sync::mpsc;
use std::time::Instant;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let n = 5_000;
    let (to_worker, worker_rx) = mpsc::sync_channel::<u64>(16);
    let (to_main, main_rx) = mpsc::channel::<u64>();
    let worker = std::thread::spawn(move || {
        while let Ok(v) = worker_rx.recv() {
            to_main.send(v).unwrap();
        }
    });
    for i in 0..1000 {
        to_worker.send(i).unwrap();
        main_rx.recv().unwrap();
    }
    let (t, c) = (Instant::now(), cpu_seconds());
    let mut lat = Vec::with_capacity(n);
    for i in 0..n as u64 {
        // Work for 300 µs first, so the worker has gone to sleep (as the
        // model's worker has between requests at concurrency 1).
        let busy = Instant::now();
        while busy.elapsed().as_micros() < 300 {
            std::hint::spin_loop();
        }
        let s = Instant::now();
        to_worker.send(i).unwrap();
        main_rx.recv().unwrap();
        lat.push(s.elapsed().as_secs_f64() * 1e6);
    }
    let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    lat.sort_by(f64::total_cmp);
    println!(
        "thread ping-pong after 300 µs of work (2 wake-ups per round trip): p50 {:.1} µs, p99 {:.1} µs, core time {:.1} µs per round trip incl. the 300 µs ({} round trips in {:.2} s)",
        lat[n / 2], lat[n * 99 / 100], cpu * 1e6 / n as f64, n, wall
    );
    drop(to_worker);
    worker.join().unwrap();
}
