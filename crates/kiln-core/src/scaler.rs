//! Per-column affine scaling, fitted on the training split only and stored with
//! the model so Predict applies exactly the same transform.

use serde::{Deserialize, Serialize};

use crate::spec::Scaling;

/// `x' = (x - offset) / scale`, column by column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Subtracted from each column.
    pub offset: Vec<f64>,
    /// Each column is divided by it, after the offset.
    pub scale: Vec<f64>,
}

impl Scaler {
    /// The scaler that changes nothing, for `width` columns.
    pub fn identity(width: usize) -> Self {
        Self {
            offset: vec![0.0; width],
            scale: vec![1.0; width],
        }
    }

    /// Fits on `values`, row-major with `width` columns. A constant column gets
    /// scale 1, so it is centred (standard) or shifted to 0 (min-max), never divided by 0.
    pub fn fit(kind: Scaling, values: &[f32], width: usize) -> Self {
        Self::fit_columns(&vec![kind; width], values)
    }

    /// Fits column `j` with `kinds[j]`; `values` is row-major with `kinds.len()` columns.
    pub fn fit_columns(kinds: &[Scaling], values: &[f32]) -> Self {
        let width = kinds.len();
        let rows = values.len().checked_div(width).unwrap_or(0);
        if rows == 0 {
            return Self::identity(width);
        }
        let column = |j: usize| values.iter().skip(j).step_by(width).map(|&v| v as f64);
        let (offset, scale) = (0..width)
            .map(|j| match kinds[j] {
                Scaling::Standard => {
                    let mean = column(j).sum::<f64>() / rows as f64;
                    let var = column(j).map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64;
                    (mean, nonzero(var.sqrt()))
                }
                Scaling::MinMax => {
                    let min = column(j).fold(f64::INFINITY, f64::min);
                    let max = column(j).fold(f64::NEG_INFINITY, f64::max);
                    (min, nonzero(max - min))
                }
                Scaling::None => (0.0, 1.0),
            })
            .unzip();
        Self { offset, scale }
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.offset.len()
    }

    /// Scales row-major `values` in place.
    pub fn transform(&self, values: &mut [f32]) {
        let w = self.width();
        for (i, v) in values.iter_mut().enumerate() {
            let j = i % w;
            *v = ((*v as f64 - self.offset[j]) / self.scale[j]) as f32;
        }
    }

    /// Undoes `transform` in place.
    pub fn inverse(&self, values: &mut [f32]) {
        let w = self.width();
        for (i, v) in values.iter_mut().enumerate() {
            let j = i % w;
            *v = (*v as f64 * self.scale[j] + self.offset[j]) as f32;
        }
    }
}

fn nonzero(spread: f64) -> f64 {
    if spread > 1e-12 && spread.is_finite() {
        spread
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_matches_population_mean_and_std() {
        // Columns: [1, 2, 3, 4] and a constant [5, 5, 5, 5].
        let data = [1.0, 5.0, 2.0, 5.0, 3.0, 5.0, 4.0, 5.0];
        let s = Scaler::fit(Scaling::Standard, &data, 2);
        assert_eq!(s.offset, vec![2.5, 5.0]);
        assert!((s.scale[0] - 1.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.scale[1], 1.0);
        let mut x = data;
        s.transform(&mut x);
        let col0: Vec<f32> = x.iter().step_by(2).copied().collect();
        let mean: f32 = col0.iter().sum::<f32>() / 4.0;
        let var: f32 = col0.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        assert!(x.iter().skip(1).step_by(2).all(|&v| v == 0.0));
        s.inverse(&mut x);
        for (a, b) in x.iter().zip(data) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn min_max_maps_to_unit_interval() {
        let data = [-2.0, 0.0, 6.0];
        let s = Scaler::fit(Scaling::MinMax, &data, 1);
        let mut x = data;
        s.transform(&mut x);
        assert_eq!(x, [0.0, 0.25, 1.0]);
    }

    #[test]
    fn none_is_identity() {
        let s = Scaler::fit(Scaling::None, &[3.0, 4.0], 1);
        assert_eq!(s, Scaler::identity(1));
    }
}
