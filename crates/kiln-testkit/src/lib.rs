//! What kiln's end-to-end tests share (the kiln-server package's `e2e` test
//! binary and the CLI's tests): a real kiln-server started on a free port
//! with its own data directory ([`Server`]), the gRPC calls the tests make
//! over and over ([`rpc`]), small job specs ([`specs`]) and the files of the
//! repository and of the set-up cache ([`paths`]).
//!
//! Tests write `use kiln_testkit::*;` and find everything by name.
#![warn(missing_docs)]

pub mod disk;
pub mod paths;
pub mod postgres;
pub mod rpc;
pub mod s3;
pub mod server;
pub mod specs;

pub use disk::SmallDisk;
pub use paths::*;
pub use postgres::PgServer;
pub use rpc::*;
pub use s3::S3Server;
pub use server::{cli_binary, server_binary, temp_dir, Server};
pub use specs::*;
