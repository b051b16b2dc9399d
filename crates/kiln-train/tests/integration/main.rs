//! kiln-train against its references: each module trains or steps real
//! networks on libtorch (CPU) and compares the numbers with PyTorch, Keras or
//! closed forms (tests/reference holds the Python side), or checks a
//! property of the engine (checkpoint resume, export, gradient health).
//!
//! One test binary, so burn and libtorch are linked once for all of them.
//! Its tests share libtorch's random generator: see
//! [`common::generator_alone`].

mod common;

mod artifact_export;
mod cancel_phases;
mod checkpoint_resume;
mod early_stop_keras;
mod function_parity;
mod gradient_health;
mod lr_range;
mod memory_estimate;
mod optim_parity;
mod schedule_parity;
mod swa_parity;
mod torch_parity;
