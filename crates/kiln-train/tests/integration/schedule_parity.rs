//! kiln's LR schedules against torch.optim.lr_scheduler itself
//! (tests/reference/torch_schedules.py, run at test time): every learning
//! rate (and 1cycle momentum) over long runs must agree to 1e-12 relative.

use std::sync::OnceLock;

use kiln_core::spec::{LrScheduleKind, LrScheduleSpec, Metric, Warmup};
use kiln_train::schedule::LrScheduler;
use serde_json::{json, Value};

struct Case {
    name: String,
    spec: LrScheduleSpec,
    base_lr: f64,
    epochs: u32,
    steps_per_epoch: usize,
    /// "sgd" (momentum 0.9) or "adam" (1cycle cycles beta1).
    optimizer: &'static str,
    /// ReduceOnPlateau: the monitored metric per epoch (None: missing / NaN).
    metrics: Vec<Option<f64>>,
}

fn kind_json(kind: &LrScheduleKind) -> Value {
    match *kind {
        LrScheduleKind::Constant => json!({"type": "constant"}),
        LrScheduleKind::Step { step_size, gamma } => {
            json!({"type": "step", "step_size": step_size, "gamma": gamma})
        }
        LrScheduleKind::Exponential { gamma } => json!({"type": "exponential", "gamma": gamma}),
        LrScheduleKind::Cosine { t_max, eta_min } => {
            json!({"type": "cosine", "t_max": t_max, "eta_min": eta_min})
        }
        LrScheduleKind::ReduceOnPlateau {
            monitor: _,
            mode_max,
            factor,
            patience,
            threshold,
            threshold_rel,
            cooldown,
            min_lr,
            eps,
        } => json!({
            "type": "plateau",
            "mode": if mode_max { "max" } else { "min" },
            "factor": factor,
            "patience": patience,
            "threshold": threshold,
            "threshold_mode": if threshold_rel { "rel" } else { "abs" },
            "cooldown": cooldown,
            "min_lr": min_lr,
            "eps": eps,
        }),
        LrScheduleKind::OneCycle {
            max_lr,
            pct_start,
            anneal_cos,
            div_factor,
            final_div_factor,
            three_phase,
            cycle_momentum,
            base_momentum,
            max_momentum,
        } => json!({
            "type": "onecycle",
            "max_lr": max_lr,
            "pct_start": pct_start,
            "anneal_strategy": if anneal_cos { "cos" } else { "linear" },
            "div_factor": div_factor,
            "final_div_factor": final_div_factor,
            "three_phase": three_phase,
            "cycle_momentum": cycle_momentum,
            "base_momentum": base_momentum,
            "max_momentum": max_momentum,
        }),
    }
}

fn case_json(c: &Case) -> Value {
    json!({
        "base_lr": c.base_lr,
        "epochs": c.epochs,
        "steps_per_epoch": c.steps_per_epoch,
        "optimizer": c.optimizer,
        "kind": kind_json(&c.spec.kind),
        "warmup": c.spec.warmup.map(|w| json!({"epochs": w.epochs, "start_factor": w.start_factor})),
        "metrics": c.metrics,
    })
}

fn epoch_case(name: &str, kind: LrScheduleKind, warmup: Option<Warmup>, epochs: u32) -> Case {
    Case {
        name: name.into(),
        spec: LrScheduleSpec { kind, warmup },
        base_lr: 0.1,
        epochs,
        steps_per_epoch: 7,
        optimizer: "sgd",
        metrics: vec![],
    }
}

/// A deterministic noisy curve, `scale` times a shape that improves (falls,
/// or rises for `rising`) and then plateaus; every 13th epoch the metric is
/// missing.
fn metric_curve(n: u32, seed: u64, rising: bool, scale: f64, noise: f64) -> Vec<Option<f64>> {
    let mut state = seed;
    (0..n)
        .map(|e| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            let trend = (-(e as f64) / 12.0).exp();
            let v = if rising {
                0.95 - 0.5 * trend + noise * u
            } else {
                1.0 + 2.0 * trend + noise * u
            };
            (e % 13 != 12).then_some(scale * v)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn plateau_kind(
    mode_max: bool,
    factor: f64,
    patience: u32,
    threshold: f64,
    threshold_rel: bool,
    cooldown: u32,
    min_lr: f64,
    eps: f64,
) -> LrScheduleKind {
    LrScheduleKind::ReduceOnPlateau {
        monitor: if mode_max {
            Metric::ValAccuracy
        } else {
            Metric::ValLoss
        },
        mode_max,
        factor,
        patience,
        threshold,
        threshold_rel,
        cooldown,
        min_lr,
        eps,
    }
}

fn plateau_case(
    name: &str,
    kind: LrScheduleKind,
    warmup: Option<Warmup>,
    seed: u64,
    scale: f64,
) -> Case {
    let LrScheduleKind::ReduceOnPlateau { mode_max, .. } = kind else {
        unreachable!()
    };
    let noise = if mode_max { 0.01 } else { 0.03 };
    let epochs = 150;
    Case {
        name: name.into(),
        spec: LrScheduleSpec { kind, warmup },
        base_lr: 1.0,
        epochs,
        steps_per_epoch: 3,
        optimizer: "sgd",
        metrics: metric_curve(epochs, seed, mode_max, scale, noise),
    }
}

#[allow(clippy::too_many_arguments)]
fn one_cycle_case(
    name: &str,
    anneal_cos: bool,
    three_phase: bool,
    cycle_momentum: bool,
    pct_start: f64,
    epochs: u32,
    steps_per_epoch: usize,
    optimizer: &'static str,
) -> Case {
    Case {
        name: name.into(),
        spec: LrScheduleSpec {
            kind: LrScheduleKind::OneCycle {
                max_lr: 0.4,
                pct_start,
                anneal_cos,
                div_factor: 25.0,
                final_div_factor: 1e4,
                three_phase,
                cycle_momentum,
                base_momentum: 0.85,
                max_momentum: 0.95,
            },
            warmup: None,
        },
        base_lr: 0.01, // ignored: max_lr / div_factor rules
        epochs,
        steps_per_epoch,
        optimizer,
        metrics: vec![],
    }
}

fn cases() -> Vec<Case> {
    let warm = |epochs, start_factor| {
        Some(Warmup {
            epochs,
            start_factor,
        })
    };
    let step = |step_size, gamma| LrScheduleKind::Step { step_size, gamma };
    let cosine = |t_max, eta_min| LrScheduleKind::Cosine { t_max, eta_min };
    vec![
        epoch_case("constant", LrScheduleKind::Constant, None, 50),
        epoch_case("step/30x0.1", step(30, 0.1), None, 200),
        epoch_case("step/7x0.5", step(7, 0.5), None, 200),
        epoch_case("step/1x0.97", step(1, 0.97), None, 200),
        epoch_case(
            "exponential/0.95",
            LrScheduleKind::Exponential { gamma: 0.95 },
            None,
            200,
        ),
        epoch_case(
            "exponential/0.999",
            LrScheduleKind::Exponential { gamma: 0.999 },
            None,
            200,
        ),
        epoch_case("cosine/50", cosine(50, 0.0), None, 200),
        epoch_case("cosine/37 eta_min", cosine(37, 1e-3), None, 200),
        epoch_case("cosine/1", cosine(1, 0.0), None, 20),
        epoch_case("cosine/3 eta_min", cosine(3, 0.02), None, 40),
        epoch_case(
            "warmup/constant",
            LrScheduleKind::Constant,
            warm(5, 0.1),
            30,
        ),
        epoch_case("warmup/step", step(10, 0.5), warm(5, 0.01), 200),
        epoch_case(
            "warmup/step longer than step_size",
            step(3, 0.7),
            warm(8, 0.25),
            60,
        ),
        epoch_case("warmup/cosine", cosine(100, 0.0), warm(10, 0.1), 200),
        epoch_case(
            "warmup/cosine eta_min",
            cosine(40, 5e-3),
            warm(6, 1.0 / 3.0),
            200,
        ),
        epoch_case(
            "warmup/exponential",
            LrScheduleKind::Exponential { gamma: 0.9 },
            warm(4, 0.5),
            100,
        ),
        epoch_case("warmup/one epoch", step(2, 0.5), warm(1, 0.3), 20),
        // The metric scales keep rel and abs thresholds apart, so that the
        // threshold mode matters (checked by plateau_cases_exercise_...).
        plateau_case(
            "plateau/min rel cooldown min_lr",
            plateau_kind(false, 0.5, 3, 0.01, true, 4, 0.01, 1e-8),
            None,
            1,
            10.0,
        ),
        plateau_case(
            "plateau/min abs",
            plateau_kind(false, 0.3, 2, 0.002, false, 0, 0.0, 1e-8),
            None,
            2,
            0.1,
        ),
        plateau_case(
            "plateau/min eps stops reductions",
            plateau_kind(false, 0.9, 1, 0.01, true, 1, 0.0, 0.05),
            None,
            3,
            5.0,
        ),
        plateau_case(
            "plateau/max rel",
            plateau_kind(true, 0.5, 2, 0.01, true, 2, 1e-4, 1e-8),
            None,
            4,
            0.3,
        ),
        plateau_case(
            "plateau/max abs patience 0",
            plateau_kind(true, 0.7, 0, 0.005, false, 1, 1e-3, 1e-8),
            None,
            5,
            3.0,
        ),
        plateau_case(
            "plateau/min rel patience 10 (torch defaults)",
            plateau_kind(false, 0.1, 10, 1e-4, true, 0, 0.0, 1e-8),
            None,
            6,
            1.0,
        ),
        plateau_case(
            "plateau/warmup",
            plateau_kind(false, 0.5, 1, 0.01, false, 0, 1e-3, 1e-8),
            warm(6, 0.2),
            7,
            0.2,
        ),
        one_cycle_case(
            "onecycle/cos 2-phase",
            true,
            false,
            true,
            0.3,
            20,
            37,
            "sgd",
        ),
        one_cycle_case(
            "onecycle/linear 2-phase",
            false,
            false,
            true,
            0.3,
            20,
            37,
            "sgd",
        ),
        one_cycle_case("onecycle/cos 3-phase", true, true, true, 0.3, 20, 37, "sgd"),
        one_cycle_case(
            "onecycle/linear 3-phase",
            false,
            true,
            true,
            0.25,
            10,
            50,
            "sgd",
        ),
        one_cycle_case(
            "onecycle/cos no momentum",
            true,
            false,
            false,
            0.45,
            8,
            125,
            "sgd",
        ),
        one_cycle_case(
            "onecycle/cos adam beta1",
            true,
            false,
            true,
            0.3,
            12,
            33,
            "adam",
        ),
        one_cycle_case(
            "onecycle/linear 3-phase adam",
            false,
            true,
            true,
            0.35,
            7,
            13,
            "adam",
        ),
        one_cycle_case("onecycle/tiny", true, false, true, 0.3, 1, 3, "sgd"),
        one_cycle_case("onecycle/tiny 3-phase", false, true, true, 0.3, 3, 1, "sgd"),
    ]
}

struct Reference {
    cases: Vec<Case>,
    torch: Vec<Value>,
}

/// One python run for all cases (torch's import is the slow part).
fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let cases = cases();
        let input = Value::Array(cases.iter().map(case_json).collect());
        let torch: Vec<Value> = crate::common::run_reference("torch_schedules.py", &input);
        assert_eq!(torch.len(), cases.len());
        Reference { cases, torch }
    })
}

/// kiln's LR (and momentum) sequence, recorded the way the script records torch's.
fn run_kiln(c: &Case) -> (Vec<f64>, Option<Vec<f64>>) {
    let mut s = LrScheduler::new(&c.spec, c.base_lr, c.steps_per_epoch, c.epochs);
    let mut lrs = vec![];
    let mut moms = vec![];
    let monitor = match c.spec.kind {
        LrScheduleKind::ReduceOnPlateau { monitor, .. } => Some(monitor),
        _ => None,
    };
    for e in 0..c.epochs as usize {
        for _ in 0..c.steps_per_epoch {
            if s.per_batch() {
                lrs.push(s.lr());
                moms.push(s.momentum());
            }
            s.after_batch();
        }
        if !s.per_batch() {
            lrs.push(s.lr());
            moms.push(s.momentum());
        }
        // Missing values go in as None on even epochs and NaN on odd ones:
        // both must act like torch's NaN.
        let value = c.metrics.get(e).copied().flatten();
        let value = match value {
            None if e % 2 == 1 => Some(f64::NAN),
            v => v,
        };
        s.after_epoch(&|m: Metric| {
            assert_eq!(
                Some(m),
                monitor,
                "{}: asked for a metric it does not monitor",
                c.name
            );
            value
        });
    }
    lrs.push(s.lr());
    moms.push(s.momentum());
    let moms = if moms.iter().all(Option::is_none) {
        None
    } else {
        Some(moms.into_iter().map(Option::unwrap).collect())
    };
    (lrs, moms)
}

/// The script sends each double as its bits (no decimal round trip).
fn from_bits(v: &Value) -> f64 {
    f64::from_bits(v.as_u64().expect("f64 bits"))
}

fn assert_close(name: &str, what: &str, kiln: &[f64], torch: &Value) {
    let torch: Vec<f64> = torch
        .as_array()
        .unwrap_or_else(|| panic!("{name}: torch gave no {what}"))
        .iter()
        .map(from_bits)
        .collect();
    assert_eq!(kiln.len(), torch.len(), "{name}: {what} sequence length");
    for (i, (&k, &t)) in kiln.iter().zip(&torch).enumerate() {
        let tol = 1e-12 * k.abs().max(t.abs());
        assert!(
            (k - t).abs() <= tol,
            "{name}: {what}[{i}]: kiln {k:e} vs torch {t:e}\n kiln  {:?}\n torch {:?}",
            &kiln[i.saturating_sub(3)..(i + 3).min(kiln.len())],
            &torch[i.saturating_sub(3)..(i + 3).min(torch.len())],
        );
    }
}

fn check(prefix: &str) {
    let r = reference();
    let mut n = 0;
    for (c, t) in r.cases.iter().zip(&r.torch) {
        if !c.name.starts_with(prefix) {
            continue;
        }
        n += 1;
        let (lrs, moms) = run_kiln(c);
        assert_close(&c.name, "lr", &lrs, &t["lr"]);
        match moms {
            Some(m) => assert_close(&c.name, "momentum", &m, &t["momentum"]),
            None => assert!(t["momentum"].is_null(), "{}: torch cycles momentum", c.name),
        }
    }
    assert!(n > 0, "no cases for {prefix}");
}

#[test]
fn constant() {
    check("constant");
}

#[test]
fn step_lr() {
    check("step/");
}

#[test]
fn exponential_lr() {
    check("exponential/");
}

#[test]
fn cosine_annealing_lr_past_t_max() {
    check("cosine/");
}

#[test]
fn linear_warmup_chained() {
    check("warmup/");
}

#[test]
fn reduce_lr_on_plateau() {
    check("plateau/");
}

#[test]
fn one_cycle_lr() {
    check("onecycle/");
}

/// The scripted plateau sequences really exercise what they are named for:
/// each case reduces more than once, and changing any of the parameters it
/// sets (threshold, threshold mode, cooldown, min_lr, eps, warmup) changes
/// kiln's LR sequence, so the torch comparison pins each of them down.
#[test]
fn plateau_cases_exercise_their_parameters() {
    let r = reference();
    let torch_lrs = |name: &str| -> Vec<f64> {
        let i = r.cases.iter().position(|c| c.name == name).unwrap();
        r.torch[i]["lr"]
            .as_array()
            .unwrap()
            .iter()
            .map(from_bits)
            .collect()
    };
    let reductions = |v: &[f64]| v.windows(2).filter(|w| w[1] < w[0]).count();
    for c in r.cases.iter().filter(|c| c.name.starts_with("plateau/")) {
        let want = torch_lrs(&c.name);
        assert!(reductions(&want) >= 3, "{}: too few reductions", c.name);
        let base = c.spec.kind;
        let LrScheduleKind::ReduceOnPlateau {
            threshold,
            cooldown,
            min_lr,
            eps,
            ..
        } = base
        else {
            unreachable!()
        };
        let mut variants: Vec<(&str, LrScheduleSpec)> = vec![];
        let mut vary = |what, kind: LrScheduleKind, warmup: Option<Warmup>| {
            variants.push((what, LrScheduleSpec { kind, warmup }))
        };
        let warmup = c.spec.warmup;
        let with = |f: &dyn Fn(&mut LrScheduleKind)| {
            let mut k = base;
            f(&mut k);
            k
        };
        // (torch's default threshold, 1e-4 relative, is too small to show
        // against this noise: that case only checks the defaults.)
        if threshold > 0.0 && !c.name.contains("torch defaults") {
            vary(
                "threshold mode",
                with(&|k| {
                    if let LrScheduleKind::ReduceOnPlateau { threshold_rel, .. } = k {
                        *threshold_rel = !*threshold_rel
                    }
                }),
                warmup,
            );
            vary(
                "threshold",
                with(&|k| {
                    if let LrScheduleKind::ReduceOnPlateau { threshold, .. } = k {
                        *threshold = 0.0
                    }
                }),
                warmup,
            );
        }
        if cooldown > 0 {
            vary(
                "cooldown",
                with(&|k| {
                    if let LrScheduleKind::ReduceOnPlateau { cooldown, .. } = k {
                        *cooldown = 0
                    }
                }),
                warmup,
            );
        }
        if min_lr > 0.0 {
            vary(
                "min_lr",
                with(&|k| {
                    if let LrScheduleKind::ReduceOnPlateau { min_lr, .. } = k {
                        *min_lr = 0.0
                    }
                }),
                warmup,
            );
        }
        if eps > 1e-8 {
            vary(
                "eps",
                with(&|k| {
                    if let LrScheduleKind::ReduceOnPlateau { eps, .. } = k {
                        *eps = 1e-8
                    }
                }),
                warmup,
            );
        }
        if warmup.is_some() {
            vary("warmup", base, None);
        }
        for (what, spec) in variants {
            let variant = Case {
                name: format!("{} without its {what}", c.name),
                spec,
                base_lr: c.base_lr,
                epochs: c.epochs,
                steps_per_epoch: c.steps_per_epoch,
                optimizer: c.optimizer,
                metrics: c.metrics.clone(),
            };
            assert!(
                run_kiln(&variant).0 != want,
                "{}: the metric sequence does not exercise its {what}",
                c.name
            );
        }
    }
    // min_lr reached and held
    let v = torch_lrs("plateau/min rel cooldown min_lr");
    assert_eq!(*v.last().unwrap(), 0.01);
    // eps: the reductions stop once a cut would be smaller than eps (0.05)
    let v = torch_lrs("plateau/min eps stops reductions");
    let last = *v.last().unwrap();
    assert!(last * 0.1 <= 0.05 && last > 0.4, "{last}");
}
