//! The floors: what the same machine does with the same services and no code of ours
//! in between, measured in the same run as the benchmark.

pub mod pg;
pub mod raw_amqp;
