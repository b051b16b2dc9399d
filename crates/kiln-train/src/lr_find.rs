//! The LR range test with fastai `lr_find`'s semantics (fastai/callback/schedule.py,
//! `LRFinder` and `Learner.lr_find`; DESIGN.md):
//!
//! - iteration `i` (0-based) trains one mini-batch at
//!   `start_lr * (end_lr / start_lr)^(i / iterations)`, passing over shuffled
//!   epochs as often as needed;
//! - the loss is smoothed as fastai's Recorder does (`AvgSmoothLoss`, beta
//!   0.98): `avg = beta * avg + (1 - beta) * loss`, reported as
//!   `avg / (1 - beta^count)`;
//! - the test stops after `iterations` batches, or once the smoothed loss
//!   exceeds 4x its minimum so far (`stop_div`);
//! - the suggestions (`valley`, `steep`, `minimum`) are computed on the
//!   recorded curve without its first `iterations / 10` points and its last 5,
//!   cut at the first non-finite loss;
//! - the network and the optimizer are fresh afterwards: the test trains its
//!   own copy, and training builds its model again from the same seed (fastai
//!   saves and reloads them).
//!
//! Two differences, both about what is not defined there: fastai keeps
//! training on a NaN loss until `iterations` (its `>` comparison is false for
//! NaN); kiln stops at the first non-finite loss, and cuts the curve where
//! fastai's would have been cut. fastai's training loader drops the last
//! partial batch; kiln's batching keeps it (as in training).

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_core::prepare::Prepared;
use kiln_core::spec::{JobSpec, LrRangeSpec};
use rand::{seq::SliceRandom, SeedableRng};

use crate::loss::Loss;
use crate::model::{Mlp, ModelArch};
use crate::optim;
use crate::outcome::TrainError;
use crate::report::TrainEvent;
use crate::tensors::{features, targets};

pub use crate::report::{LrPoint, LrRangeReport, LrSuggestions};

/// fastai's `AvgSmoothLoss` beta.
pub const SMOOTHING_BETA: f64 = 0.98;
/// fastai's `stop_div`: stop once the smoothed loss exceeds this multiple of its minimum.
pub const DIVERGENCE_FACTOR: f64 = 4.0;

/// Runs the test on `spec`'s network, optimizer, loss, batch size and seed;
/// each point goes to `emit` as [`TrainEvent::LrPoint`] as it is measured.
pub fn lr_range_test(
    spec: &JobSpec,
    data: &Prepared,
    device: &Device,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<LrRangeReport, TrainError> {
    let training = &spec.training;
    let settings = spec.lr_range_test;
    device.seed(training.seed);
    let ad = device.clone().autodiff();
    let arch = ModelArch::for_job(spec, data);
    let mut model = Mlp::new(&arch, &ad);
    let mut optimizer = optim::build(&training.optimizer);
    let train_x = features(&data.train, data.width, &ad);
    let train_y = targets(&data.train, data.outputs, &ad);
    let loss_fn = Loss::new(&training.loss.balanced_for(&data.train_class_counts()), &ad);
    let has_batch_norm = arch.hidden.iter().any(|l| l.batch_norm.is_some());

    let mut rng = rand::rngs::StdRng::seed_from_u64(training.seed);
    let mut order: Vec<i64> = (0..data.train.rows as i64).collect();
    let batch = training.batch_size as usize;
    let mut smoother = Smoother::default();
    let mut best = f64::INFINITY;
    let mut points: Vec<LrPoint> = Vec::with_capacity(settings.iterations as usize);
    let mut diverged = false;
    'epochs: loop {
        order.shuffle(&mut rng);
        let order_t =
            Tensor::<1, Int>::from_data(TensorData::new(order.clone(), [order.len()]), &ad);
        let mut stepped = false;
        for start in (0..order.len()).step_by(batch) {
            if cancelled() {
                return Err(TrainError::Cancelled {
                    epochs_completed: 0,
                });
            }
            let end = (start + batch).min(order.len());
            if has_batch_norm && end - start == 1 {
                continue;
            }
            stepped = true;
            let iteration = points.len() as u32;
            let lr = scheduled_lr(&settings, iteration);
            let idx = order_t.clone().slice(start..end);
            let x = train_x.clone().select(0, idx.clone());
            let y = train_y.select(idx);
            let batch_loss = loss_fn.forward(model.forward(x), &y);
            let loss = batch_loss.clone().detach().into_scalar::<f64>();
            let mut grads = GradientsParams::from_grads(batch_loss.backward(), &model);
            if let Some(clip) = &training.grad_clip {
                optim::clip_gradients(&model, &mut grads, clip);
            }
            model = optimizer.step(lr, None, model, grads);
            let smoothed_loss = smoother.add(loss);
            let point = LrPoint {
                iteration,
                learning_rate: lr,
                loss,
                smoothed_loss,
            };
            points.push(point);
            emit(TrainEvent::LrPoint(point));
            if !smoothed_loss.is_finite() {
                diverged = true;
                break 'epochs;
            }
            best = best.min(smoothed_loss);
            if settings.stop_on_divergence && smoothed_loss > DIVERGENCE_FACTOR * best {
                diverged = true;
                break 'epochs;
            }
            if points.len() as u32 >= settings.iterations {
                break 'epochs;
            }
        }
        if !stepped {
            return Err(TrainError::LrRangeTest(
                "the training split has no batch to train on".into(),
            ));
        }
    }
    let lrs: Vec<f64> = points.iter().map(|p| p.learning_rate).collect();
    let losses: Vec<f64> = points.iter().map(|p| p.smoothed_loss).collect();
    let suggestions = suggest(&lrs, &losses, settings.iterations).ok_or_else(|| {
        TrainError::LrRangeTest(format!(
            "the loss diverged after {} of {} iterations, too early for a suggestion \
             (the first tenth and the last 5 points are left out); lower \
             spec.lr_range_test.start_lr or end_lr",
            points.len(),
            settings.iterations
        ))
    })?;
    Ok(LrRangeReport {
        suggestions,
        iterations: points.len() as u32,
        diverged,
        chosen: None,
    })
}

/// fastai's `SchedExp(start, end)` at `iteration / iterations`.
fn scheduled_lr(settings: &LrRangeSpec, iteration: u32) -> f64 {
    let pos = iteration as f64 / settings.iterations as f64;
    settings.start_lr * (settings.end_lr / settings.start_lr).powf(pos)
}

/// fastai's `AvgSmoothLoss`: a debiased exponential moving average.
#[derive(Default)]
struct Smoother {
    average: f64,
    count: i32,
}

impl Smoother {
    fn add(&mut self, loss: f64) -> f64 {
        self.count += 1;
        // torch.lerp(loss, avg, beta) = loss + beta * (avg - loss)
        self.average = loss + SMOOTHING_BETA * (self.average - loss);
        self.average / (1.0 - SMOOTHING_BETA.powi(self.count))
    }
}

/// `Learner.lr_find`'s suggestions from the recorded curve: the points from
/// `planned / 10` up to 5 before the end, cut at the first non-finite loss.
/// A curve that ended on a non-finite loss is cut as fastai's full-length one
/// (NaN until `planned`) would be. `None` when fewer than two points remain.
pub fn suggest(lrs: &[f64], losses: &[f64], planned: u32) -> Option<LrSuggestions> {
    let planned = planned as usize;
    let ended_non_finite = losses.last().is_some_and(|l| !l.is_finite());
    let full_len = if ended_non_finite {
        planned.max(losses.len())
    } else {
        losses.len()
    };
    let start = planned / 10;
    let end = full_len.saturating_sub(5).min(losses.len());
    if start >= end {
        return None;
    }
    let (lrs, losses) = (&lrs[start..end], &losses[start..end]);
    let finite = losses
        .iter()
        .position(|l| !l.is_finite())
        .unwrap_or(losses.len());
    let (lrs, losses) = (&lrs[..finite], &losses[..finite]);
    if losses.len() < 2 {
        return None;
    }
    Some(LrSuggestions {
        valley: valley(lrs, losses),
        steepest: steepest(lrs, losses),
        minimum: lrs[argmin(losses)] / 10.0,
    })
}

/// fastai's `valley`: the longest run of ever-lower losses (a longest
/// decreasing subsequence, scanned as fastai scans it), and the point
/// `int(len / 3) + int(len / 6)` into it. Its arithmetic is kept exactly,
/// including `max_start` of -1 for a run from the first point and Python's
/// negative indexing that follows from it.
fn valley(lrs: &[f64], losses: &[f64]) -> f64 {
    let n = losses.len();
    let (mut max_start, mut max_end) = (0isize, 0usize);
    let mut lds = vec![1usize; n];
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end as isize - lds[max_end] as isize;
            }
        }
    }
    let sections = (max_end as isize - max_start) as f64 / 3.0;
    let idx = max_start + sections as isize + (sections / 2.0) as isize;
    lrs[if idx < 0 { idx + n as isize } else { idx } as usize]
}

/// fastai's `steep`: the left point of the steepest fall of the loss
/// against log(lr).
fn steepest(lrs: &[f64], losses: &[f64]) -> f64 {
    let slopes: Vec<f64> = (0..losses.len() - 1)
        .map(|i| (losses[i + 1] - losses[i]) / (lrs[i + 1].ln() - lrs[i].ln()))
        .collect();
    lrs[argmin(&slopes)]
}

/// The first index of the smallest value (torch.argmin).
fn argmin(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(
            (0, f64::INFINITY),
            |(bi, bv), (i, &v)| {
                if v < bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            },
        )
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_exponential_from_start_lr() {
        let s = LrRangeSpec::default();
        assert_eq!(scheduled_lr(&s, 0), 1e-7);
        // Halfway through 100 iterations: sqrt(1e-7 * 10) = 1e-3.
        assert!((scheduled_lr(&s, 50) / 1e-3 - 1.0).abs() < 1e-12);
        // The last iteration (99) stays below end_lr, as fastai's.
        let last = scheduled_lr(&s, 99);
        assert!(last < 10.0 && last > 8.0, "{last}");
    }

    #[test]
    fn smoothing_is_fastais_debiased_average() {
        let mut s = Smoother::default();
        // The first value is the loss itself.
        assert!((s.add(2.0) - 2.0).abs() < 1e-12);
        // avg = 0.98 * 0.04 + 0.02 * 1 = 0.0592; / (1 - 0.98^2) = 0.0396.
        assert!((s.add(1.0) - 0.0592 / 0.0396).abs() < 1e-12);
    }

    fn lrs(n: usize) -> Vec<f64> {
        (0..n).map(|i| 1e-4 * 10f64.powf(i as f64 / 4.0)).collect()
    }

    #[test]
    fn valley_steep_and_minimum_on_a_hand_checked_curve() {
        // Falls from index 1 (fastest from 3 to 4), bottoms out at 7, rises.
        let losses = [1.0, 5.0, 4.9, 4.5, 2.5, 2.0, 1.8, 1.5, 3.0, 9.0];
        let lrs = lrs(10);
        let s = suggest_all(&lrs, &losses);
        // lds: [1,1,2,3,4,5,6,7,...]: the run 1..=7 has lds[7] = 7, so
        // max_end = 7, max_start = 0; sections = 7/3 = 2.33: idx = 0 + 2 + 1 = 3.
        assert_eq!(s.valley, lrs[3]);
        // Steepest: the biggest drop per log step is 4.5 -> 2.5 (index 3).
        assert_eq!(s.steepest, lrs[3]);
        // Minimum: 1.0 at index 0.
        assert_eq!(s.minimum, lrs[0] / 10.0);

        // A run from the first point: lds[6] = 7, so fastai's max_start is
        // 6 - 7 = -1; sections = 7/3: idx = -1 + 2 + 1 = 2.
        let losses = [5.0, 4.9, 4.5, 2.5, 2.0, 1.8, 1.5, 3.0, 9.0];
        assert_eq!(valley(&lrs[..9], &losses), lrs[2]);
        // Two points falling: max_start -1, sections 2/3: idx -1, which
        // Python reads as the last point.
        assert_eq!(valley(&lrs[..3], &[2.0, 1.0, 3.0]), lrs[2]);
    }

    fn suggest_all(lrs: &[f64], losses: &[f64]) -> LrSuggestions {
        LrSuggestions {
            valley: valley(lrs, losses),
            steepest: steepest(lrs, losses),
            minimum: lrs[argmin(losses)] / 10.0,
        }
    }

    #[test]
    fn suggestions_skip_the_first_tenth_and_last_five() {
        // 30 planned and recorded: points 3..25 are used.
        let lrs = lrs(30);
        let mut losses: Vec<f64> = (0..30).map(|i| 10.0 - i as f64 * 0.1).collect();
        // The global minimum sits in the dropped tail; another in the head.
        losses[28] = -5.0;
        losses[1] = -4.0;
        let s = suggest(&lrs, &losses, 30).unwrap();
        // Within 3..25 the loss falls steadily: its minimum is at 24.
        assert_eq!(s.minimum, lrs[24] / 10.0);
    }

    #[test]
    fn a_curve_ending_in_nan_is_cut_as_fastais_full_length_one() {
        // Planned 100; NaN at point 40: fastai's list would run to 100 and
        // keep 10..95, cut at the NaN: 10..40.
        let lrs = lrs(41);
        let mut losses: Vec<f64> = (0..41).map(|i| 10.0 - i as f64 * 0.1).collect();
        losses[40] = f64::NAN;
        let s = suggest(&lrs, &losses, 100).unwrap();
        assert_eq!(s.minimum, lrs[39] / 10.0);
        // Stopped by the 4x rule instead (a finite last point): the last 5
        // recorded points are dropped.
        losses[40] = 100.0;
        let s = suggest(&lrs, &losses, 100).unwrap();
        assert_eq!(s.minimum, lrs[35] / 10.0);
        // Too short to suggest anything.
        assert_eq!(suggest(&lrs[..12], &losses[..12], 100), None);
    }
}
