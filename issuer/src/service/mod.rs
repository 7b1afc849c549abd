//! The use cases the HTTP layer calls: each takes the app state, reads the clock once, asks
//! the domain for decisions and keeps them in the store.

pub mod admin;
pub mod identity;
pub mod sessions;
pub mod userdata;
