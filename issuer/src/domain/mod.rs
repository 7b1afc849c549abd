//! The domain's pure rules: no I/O, time as an argument, unit-tested beside the code.

pub mod grants;
pub mod keys;
pub mod ratelimit;
pub mod rules;
pub mod tokens;
pub mod web;
