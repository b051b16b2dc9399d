//! kiln's early stopping decides exactly as keras.callbacks.EarlyStopping on
//! scripted metric curves: the epoch it stops at and the epoch it keeps.

use kiln_core::spec::{EarlyStoppingSpec, Metric};
use kiln_train::early_stop::EarlyStopping;
use serde_json::{json, Value};

fn keras(cases: &Value) -> Vec<(u32, u32)> {
    crate::common::run_reference("keras_early_stopping.py", cases)
}

/// A noisy, mostly falling curve with plateaus, from a fixed seed.
fn curve(seed: u64, len: usize) -> Vec<f64> {
    let mut s = seed;
    let mut v = 1.0;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f64 / (1u64 << 24) as f64;
            v *= 0.9 + 0.2 * u; // drifts down, often up
            (v * 1000.0).round() / 1000.0 // ties happen
        })
        .collect()
}

#[test]
fn decisions_match_keras() {
    struct Case {
        curve: Vec<f64>,
        spec: EarlyStoppingSpec,
    }
    let mut cases = Vec::new();
    for seed in 0..12u64 {
        for (patience, min_delta, baseline, start_from_epoch, mode_max) in [
            (0, 0.0, None, 0, false),
            (2, 0.0, None, 0, false),
            (3, 0.01, None, 0, false),
            (2, 0.0, Some(0.5), 0, false),
            (1, 0.0, None, 4, false),
            (3, 0.005, Some(0.8), 2, false),
            (2, 0.0, None, 0, true),
            (4, 0.01, Some(1.2), 1, true),
        ] {
            cases.push(Case {
                curve: curve(seed, 40),
                spec: EarlyStoppingSpec {
                    monitor: Metric::ValLoss,
                    mode_max,
                    patience,
                    min_delta,
                    baseline,
                    start_from_epoch,
                    restore_best_weights: true,
                },
            });
        }
    }
    let request: Vec<Value> = cases
        .iter()
        .map(|c| {
            let s = &c.spec;
            let mut kwargs = json!({
                "monitor": "val_loss",
                "patience": s.patience,
                "min_delta": s.min_delta,
                "start_from_epoch": s.start_from_epoch,
                "mode": if s.mode_max { "max" } else { "min" },
            });
            if let Some(b) = s.baseline {
                kwargs["baseline"] = json!(b);
            }
            json!({"curve": c.curve, "kwargs": kwargs})
        })
        .collect();
    let expected = keras(&Value::Array(request));
    let mut stops = 0;
    for (case, want) in cases.iter().zip(expected) {
        let mut es = EarlyStopping::new(Some(&case.spec));
        let mut got = (case.curve.len() as u32, 0);
        for (i, &v) in case.curve.iter().enumerate() {
            if es.update(i as u32 + 1, v).stop {
                got.0 = i as u32 + 1;
                stops += 1;
                break;
            }
        }
        got.1 = es.best_epoch;
        assert_eq!(got, want, "curve {:?} with {:?}", case.curve, case.spec);
    }
    assert!(
        stops > 20,
        "the cases must exercise stopping ({stops} stopped)"
    );
}
