//! Search spaces: the `search_space` of a SubmitSweepRequest checked, grid
//! expansion (cartesian product, the first path varying slowest) and seeded
//! random sampling (SplitMix64, so a seed gives the same trials on every
//! platform and version).

use std::collections::HashMap;

use kiln::v1 as pb;
use kiln_core::FieldError;
use prost_types::value::Kind;
use prost_types::Value;

/// Grids larger than this are refused.
pub const MAX_GRID: usize = 10_000;

/// One parameter's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Dimension {
    /// These values (grid points, or random choices).
    List(Vec<Value>),
    /// Uniform in [low, high).
    Uniform(f64, f64),
    /// exp(uniform(ln low, ln high)).
    LogUniform(f64, f64),
    /// An integer in [low, high].
    IntUniform(i64, i64),
}

/// One trial's values, by path, sorted by path.
pub type TrialParams = Vec<(String, Value)>;

/// A sweep's search space, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    /// Sorted by path.
    pub dimensions: Vec<(String, Dimension)>,
}

/// The request field of parameter `path`, as errors name it.
pub fn field(path: &str) -> String {
    format!("search_space[\"{path}\"]")
}

/// A number as a parameter value.
pub fn number(x: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(x)),
    }
}

impl SearchSpace {
    /// Checks a request's `search_space`; errors name the parameter.
    pub fn from_proto(space: &HashMap<String, pb::Parameter>) -> Result<SearchSpace, FieldError> {
        use pb::parameter::Kind as P;
        if space.is_empty() {
            return Err(FieldError::new(
                "search_space",
                "required: at least one parameter",
            ));
        }
        let mut dimensions = Vec::new();
        for (path, parameter) in space {
            let f = field(path);
            if path.trim().is_empty() {
                return Err(FieldError::new(f, "the path is empty"));
            }
            let range = |r: &pb::Range| -> Result<(f64, f64), FieldError> {
                if !(r.low.is_finite() && r.high.is_finite()) || r.low >= r.high {
                    return Err(FieldError::new(
                        f.clone(),
                        format!(
                            "low ({}) must be below high ({}), both finite",
                            r.low, r.high
                        ),
                    ));
                }
                Ok((r.low, r.high))
            };
            let dimension = match &parameter.kind {
                None => {
                    return Err(FieldError::new(
                        f,
                        "required: one of values, uniform, log_uniform, int_uniform",
                    ))
                }
                Some(P::Values(list)) => {
                    if list.values.is_empty() {
                        return Err(FieldError::new(f, "values: at least one value"));
                    }
                    for (i, v) in list.values.iter().enumerate() {
                        match &v.kind {
                            Some(Kind::NumberValue(x)) if x.is_finite() => {}
                            Some(Kind::StringValue(_)) | Some(Kind::BoolValue(_)) => {}
                            _ => {
                                return Err(FieldError::new(
                                    format!("{f}.values[{i}]"),
                                    "must be a finite number, a string or a bool",
                                ))
                            }
                        }
                    }
                    Dimension::List(list.values.clone())
                }
                Some(P::Uniform(r)) => {
                    let (low, high) = range(r)?;
                    Dimension::Uniform(low, high)
                }
                Some(P::LogUniform(r)) => {
                    let (low, high) = range(r)?;
                    if low <= 0.0 {
                        return Err(FieldError::new(f, "log_uniform: low must be > 0"));
                    }
                    Dimension::LogUniform(low, high)
                }
                Some(P::IntUniform(r)) => {
                    if r.low.fract() != 0.0 || r.high.fract() != 0.0 {
                        return Err(FieldError::new(
                            f,
                            "int_uniform: low and high must be integers",
                        ));
                    }
                    if !(r.low.is_finite() && r.high.is_finite()) || r.low > r.high {
                        return Err(FieldError::new(f, "int_uniform: low must be <= high"));
                    }
                    Dimension::IntUniform(r.low as i64, r.high as i64)
                }
            };
            dimensions.push((path.clone(), dimension));
        }
        dimensions.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(SearchSpace { dimensions })
    }

    /// Every grid point, the first path (sorted) varying slowest. Ranges are
    /// an error naming their parameter.
    pub fn grid(&self) -> Result<Vec<TrialParams>, FieldError> {
        let mut points: Vec<TrialParams> = vec![Vec::new()];
        for (path, dimension) in &self.dimensions {
            let Dimension::List(values) = dimension else {
                return Err(FieldError::new(
                    field(path),
                    "SEARCH_METHOD_GRID takes lists of values only; ranges (uniform, log_uniform, int_uniform) need SEARCH_METHOD_RANDOM",
                ));
            };
            if points.len().saturating_mul(values.len()) > MAX_GRID {
                return Err(FieldError::new(
                    "search_space",
                    format!("the grid has more than {MAX_GRID} points"),
                ));
            }
            points = points
                .into_iter()
                .flat_map(|point| {
                    values.iter().map(move |v| {
                        let mut p = point.clone();
                        p.push((path.clone(), v.clone()));
                        p
                    })
                })
                .collect();
        }
        Ok(points)
    }

    /// One random trial: each parameter drawn independently, in path order.
    pub fn sample(&self, rng: &mut Rng) -> TrialParams {
        self.dimensions
            .iter()
            .map(|(path, dimension)| {
                let value = match dimension {
                    Dimension::List(values) => values
                        [(rng.next_f64() * values.len() as f64) as usize % values.len()]
                    .clone(),
                    Dimension::Uniform(low, high) => number(low + rng.next_f64() * (high - low)),
                    Dimension::LogUniform(low, high) => {
                        let (a, b) = (low.ln(), high.ln());
                        number((a + rng.next_f64() * (b - a)).exp())
                    }
                    Dimension::IntUniform(low, high) => {
                        let span = (high - low + 1) as f64;
                        let k = ((rng.next_f64() * span) as i64).min(high - low);
                        number((low + k) as f64)
                    }
                };
                (path.clone(), value)
            })
            .collect()
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): small, fast and the same
/// everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(values: &[f64]) -> pb::Parameter {
        pb::Parameter {
            kind: Some(pb::parameter::Kind::Values(prost_types::ListValue {
                values: values.iter().map(|&x| number(x)).collect(),
            })),
        }
    }

    fn range(kind: fn(pb::Range) -> pb::parameter::Kind, low: f64, high: f64) -> pb::Parameter {
        pb::Parameter {
            kind: Some(kind(pb::Range { low, high })),
        }
    }

    fn num(v: &Value) -> f64 {
        match v.kind {
            Some(Kind::NumberValue(x)) => x,
            _ => panic!("not a number"),
        }
    }

    #[test]
    fn grid_is_the_cartesian_product_first_path_slowest() {
        let space = SearchSpace::from_proto(&HashMap::from([
            (
                "training.optimizer.learning_rate".to_string(),
                list(&[0.1, 0.01]),
            ),
            (
                "model.hidden_layers[0].units".to_string(),
                list(&[4.0, 8.0, 16.0]),
            ),
        ]))
        .unwrap();
        let grid = space.grid().unwrap();
        assert_eq!(grid.len(), 6);
        let pairs: Vec<(f64, f64)> = grid.iter().map(|p| (num(&p[0].1), num(&p[1].1))).collect();
        assert_eq!(grid[0][0].0, "model.hidden_layers[0].units");
        assert_eq!(
            pairs,
            [
                (4.0, 0.1),
                (4.0, 0.01),
                (8.0, 0.1),
                (8.0, 0.01),
                (16.0, 0.1),
                (16.0, 0.01)
            ]
        );
    }

    #[test]
    fn grid_refuses_ranges_naming_the_parameter() {
        let space = SearchSpace::from_proto(&HashMap::from([
            ("a".to_string(), list(&[1.0])),
            (
                "training.optimizer.learning_rate".to_string(),
                range(pb::parameter::Kind::LogUniform, 1e-4, 1e-1),
            ),
        ]))
        .unwrap();
        let e = space.grid().unwrap_err();
        assert_eq!(
            e.field,
            "search_space[\"training.optimizer.learning_rate\"]"
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = SearchSpace::from_proto(&HashMap::from([(
            "x".to_string(),
            range(pb::parameter::Kind::Uniform, 2.0, 1.0),
        )]))
        .unwrap_err();
        assert_eq!(e.field, "search_space[\"x\"]");
        let e = SearchSpace::from_proto(&HashMap::from([(
            "x".to_string(),
            range(pb::parameter::Kind::LogUniform, 0.0, 1.0),
        )]))
        .unwrap_err();
        assert!(e.message.contains("> 0"), "{e}");
        let e = SearchSpace::from_proto(&HashMap::from([(
            "x".to_string(),
            pb::Parameter { kind: None },
        )]))
        .unwrap_err();
        assert_eq!(e.field, "search_space[\"x\"]");
        assert!(SearchSpace::from_proto(&HashMap::new()).is_err());
        let e =
            SearchSpace::from_proto(&HashMap::from([("x".to_string(), list(&[]))])).unwrap_err();
        assert!(e.message.contains("at least one"), "{e}");
    }

    #[test]
    fn random_samples_are_seeded_and_in_range() {
        let space = SearchSpace::from_proto(&HashMap::from([
            (
                "lr".to_string(),
                range(pb::parameter::Kind::LogUniform, 1e-4, 1e-1),
            ),
            (
                "units".to_string(),
                range(pb::parameter::Kind::IntUniform, 2.0, 5.0),
            ),
            (
                "drop".to_string(),
                range(pb::parameter::Kind::Uniform, 0.0, 0.5),
            ),
            (
                "act".to_string(),
                pb::Parameter {
                    kind: Some(pb::parameter::Kind::Values(prost_types::ListValue {
                        values: vec![
                            Value {
                                kind: Some(Kind::StringValue("RELU".into())),
                            },
                            Value {
                                kind: Some(Kind::StringValue("TANH".into())),
                            },
                        ],
                    })),
                },
            ),
        ]))
        .unwrap();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..200).map(|_| space.sample(&mut rng)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let mut units_seen = std::collections::BTreeSet::new();
        for p in &a {
            // Sorted paths: act, drop, lr, units.
            assert_eq!(
                p.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                ["act", "drop", "lr", "units"]
            );
            let drop = num(&p[1].1);
            assert!((0.0..0.5).contains(&drop));
            let lr = num(&p[2].1);
            assert!((1e-4..1e-1).contains(&lr));
            let units = num(&p[3].1);
            assert_eq!(units.fract(), 0.0);
            units_seen.insert(units as i64);
        }
        assert_eq!(units_seen.into_iter().collect::<Vec<_>>(), [2, 3, 4, 5]);
        // log-uniform: about a third of the draws per decade.
        let low_decade = a.iter().filter(|p| num(&p[2].1) < 1e-3).count();
        assert!((40..100).contains(&low_decade), "{low_decade}");
    }

    #[test]
    fn splitmix_reference_values() {
        // SplitMix64 with seed 0 (the reference implementation's first outputs).
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
