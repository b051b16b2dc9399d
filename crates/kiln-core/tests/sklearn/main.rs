//! kiln-core against scikit-learn, run in the test venv: the classification
//! metrics, and the preprocessing (imputer fill values, stratified shares,
//! balanced class weights).
//!
//! Needs the Python at `$KILN_PYTHON`, else `~/.cache/kiln/venv/bin/python`,
//! with `scikit-learn` installed (scripts/setup.sh, run by `make test`). The
//! tests fail, not skip, without them.

mod classification_metrics;
mod preprocessing;
mod python;
