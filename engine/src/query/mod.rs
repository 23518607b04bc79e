//! SQL over both tiers: the table providers DataFusion plans against.

pub mod managed;
pub mod system;
pub mod tables;
