//! The use cases the HTTP layer calls. Each area is a struct holding only what it uses (the
//! store, the keys, a WeChat client, the metrics…), built once by [`crate::app::App`], which
//! composes them; none of them sees `App`. Every call takes the request's time (`now`, read
//! once per request from the clock by the HTTP layer), asks the domain for decisions and
//! keeps them in the store.

pub mod admin;
pub mod flights;
pub mod identity;
pub mod sessions;
pub mod userdata;
