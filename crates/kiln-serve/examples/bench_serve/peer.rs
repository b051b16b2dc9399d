//! `--peer mlserver`: kiln against MLServer over the Open Inference
//! Protocol. Same model (kiln's export, loaded by both), same thread count,
//! same pinning, same load generator; the measurements alternate between
//! the sides at each concurrency.

use std::process::Command;

use kiln::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

use crate::oip::{self, Encoding};
use crate::{
    feature_row, flat_f32, load, mlserver, print_load, print_load_header, print_model_line,
    train_and_export,
};
use crate::{Args, BoxError, Call, Endpoint, Load, Server};

/// Both servers' probabilities for the same rows must agree this closely:
/// the same f32 weights through the same torch kernels, up to the order of
/// float sums.
const SAME_OUTPUTS: f32 = 1e-5;

/// The targets of the comparison: kiln's requests/s over MLServer's best
/// (adaptive batching on or off), at a concurrency.
const TARGETS: [(usize, f64); 2] = [(1, 3.0), (64, 5.0)];

pub async fn compare(args: &Args, cores: usize) -> Result<(), BoxError> {
    let pin = args
        .pin
        .clone()
        .or_else(|| (cores >= 2).then(|| ("0".to_string(), "1".to_string())));
    let version = mlserver::ensure_installed(&args.python)?;
    if let Some((_, client)) = &pin {
        pin_self(client)?;
    }
    let server_cpus = pin.as_ref().map(|p| p.0.as_str());

    eprintln!("training the benchmark model on kiln-server ...");
    let threads = ("KILN_TORCH_THREADS", args.threads.to_string());
    let kiln_server = Server::start(&args.server, "peer", &[threads], server_cpus);
    let file = train_and_export(&kiln_server, args).await?;
    eprintln!("starting MLServer {version} on the same model ...");
    let peer = mlserver::MlServer::start(
        &args.python,
        &file,
        args.threads,
        args.mlserver_workers,
        args.mlserver_batching,
        server_cpus,
    )
    .await?;
    let (kiln, peer_ep) = (kiln_server.endpoint(), peer.endpoint());
    let worst = same_outputs(&kiln, &peer_ep, args.features).await?;

    let oip = |model, encoding| Call::Oip { model, encoding };
    let sides: [(&str, &Endpoint, Call); 5] = [
        ("kiln (raw)", &kiln, oip("bench", Encoding::Raw)),
        ("MLServer off (raw)", &peer_ep, oip("bench", Encoding::Raw)),
        ("kiln (typed)", &kiln, oip("bench", Encoding::Typed)),
        (
            "MLServer off (typed)",
            &peer_ep,
            oip("bench", Encoding::Typed),
        ),
        (
            "MLServer on (raw)",
            &peer_ep,
            oip("bench-batched", Encoding::Raw),
        ),
    ];
    let mut loads: Vec<(usize, usize, Load)> = Vec::new();
    for &c in &args.concurrency {
        for (i, (label, endpoint, call)) in sides.iter().enumerate() {
            eprintln!("load: concurrency {c}, {label} ...");
            loads.push((c, i, load(endpoint, args, c, *call).await));
        }
    }

    println!();
    print_model_line(args);
    let where_ = match &pin {
        Some((s, c)) => format!("each server pinned to CPU {s}, this load generator to CPU {c}"),
        None => format!("unpinned, on {cores} core(s)"),
    };
    println!(
        "kiln-server vs MLServer {version} (torch {}; parallel_workers {}; adaptive batching: \
         max_batch_size {}, max_batch_time {} ms); {} libtorch/torch thread(s); {where_}",
        torch_version(args),
        args.mlserver_workers,
        args.mlserver_batching.max_batch_size,
        args.mlserver_batching.max_batch_time * 1e3,
        args.threads,
    );
    println!("same probabilities on 64 rows, raw and typed: max |kiln - MLServer| = {worst:.1e}");
    println!();
    print_load_header("ModelInfer");
    for (i, (label, _, _)) in sides.iter().enumerate() {
        for (c, _, l) in loads.iter().filter(|x| x.1 == i) {
            print_load(label, *c, l);
        }
    }
    println!();
    let req_s = |c: usize, side: usize| {
        loads
            .iter()
            .find(|x| x.0 == c && x.1 == side)
            .map_or(f64::NAN, |x| x.2.requests_per_s)
    };
    for &c in &args.concurrency {
        let best_peer = req_s(c, 1).max(req_s(c, 3)).max(req_s(c, 4));
        let (raw, typed) = (req_s(c, 0) / best_peer, req_s(c, 2) / best_peer);
        let target = TARGETS.iter().find(|t| t.0 == c).map(|t| t.1);
        let verdict = match target {
            Some(t) if raw >= t => format!("  (target >= {t}x: met)"),
            Some(t) => format!("  (target >= {t}x: NOT met)"),
            None => String::new(),
        };
        println!(
            "kiln / MLServer's best @{c}: {raw:.2}x raw, {typed:.2}x typed; \
             server core time per request {:.0} µs against {:.0} µs{verdict}",
            loads
                .iter()
                .find(|x| x.0 == c && x.1 == 0)
                .map_or(f64::NAN, |x| x.2.server_cpu_us),
            best_peer_cpu(&loads, c),
        );
    }
    let errors: usize = loads.iter().map(|x| x.2.errors).sum();
    if errors > 0 {
        return Err(format!("{errors} request(s) failed during the loads").into());
    }
    Ok(())
}

/// The server core time per request of MLServer's fastest configuration at `c`.
fn best_peer_cpu(loads: &[(usize, usize, Load)], c: usize) -> f64 {
    loads
        .iter()
        .filter(|x| x.0 == c && x.1 != 0 && x.1 != 2)
        .max_by(|a, b| a.2.requests_per_s.total_cmp(&b.2.requests_per_s))
        .map_or(f64::NAN, |x| x.2.server_cpu_us)
}

/// Sends the same 64 rows to both servers, raw and typed, and returns the
/// largest difference between kiln's probabilities and MLServer's; an
/// error when it is over [`SAME_OUTPUTS`].
async fn same_outputs(kiln: &Endpoint, peer: &Endpoint, width: usize) -> Result<f32, BoxError> {
    let rows: Vec<kiln::v1::Row> = (0..64)
        .map(|i| kiln::v1::Row {
            values: feature_row(2_000_000 + i, width),
        })
        .collect();
    let rows = flat_f32(&rows);
    let mut answers = Vec::new();
    for endpoint in [kiln, peer] {
        let mut client = GrpcInferenceServiceClient::new(endpoint.channel().await);
        for encoding in [Encoding::Raw, Encoding::Typed] {
            let request = oip::request("bench", &rows, width, encoding);
            let response = client.model_infer(request).await?.into_inner();
            answers.push(oip::probabilities(&response)?);
        }
    }
    let reference = &answers[0];
    let mut worst = 0f32;
    for answer in &answers[1..] {
        if answer.len() != reference.len() {
            return Err(format!(
                "{} probabilities against kiln's {}",
                answer.len(),
                reference.len()
            )
            .into());
        }
        for (a, b) in answer.iter().zip(reference) {
            let d = (a - b).abs();
            if d.is_nan() || d > SAME_OUTPUTS {
                return Err(format!(
                    "kiln and MLServer disagree: {b} against {a}, over {SAME_OUTPUTS:e} apart"
                )
                .into());
            }
            worst = worst.max(d);
        }
    }
    Ok(worst)
}

/// Pins every thread of this process to `cpus` (threads started later
/// inherit it).
fn pin_self(cpus: &str) -> Result<(), BoxError> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("taskset -a -p -c {cpus} failed ({status})").into());
    }
    Ok(())
}

fn torch_version(args: &Args) -> String {
    Command::new(&args.python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
