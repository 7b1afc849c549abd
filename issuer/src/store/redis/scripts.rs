//! The Lua scripts of the Redis store, one `.lua` file each under `lua/` (each begins with
//! the `KEYS` and `ARGV` it takes). A script applies a decision only if the facts it was made
//! on still hold (compare-and-set); the decisions themselves are in `crate::domain::rules`.

use redis::Script;

pub(super) struct Scripts {
    pub(super) login: Script,
    pub(super) open_session: Script,
    pub(super) read_refresh: Script,
    pub(super) rotate: Script,
    pub(super) revoke: Script,
    pub(super) mark_session: Script,
    pub(super) feed: Script,
    pub(super) purge: Script,
    pub(super) drop_session: Script,
    pub(super) forget_sessions: Script,
    pub(super) insert_key: Script,
    pub(super) erase_key: Script,
    pub(super) lease: Script,
    pub(super) put_token: Script,
    pub(super) release: Script,
    pub(super) invalidate: Script,
    pub(super) set_phone: Script,
    pub(super) set_user_fields: Script,
    pub(super) rate_limit: Script,
    pub(super) put_ephemeral: Script,
    pub(super) take_ephemeral: Script,
    pub(super) purge_ephemeral: Script,
    pub(super) report_ttl: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            login: Script::new(include_str!("lua/login.lua")),
            open_session: Script::new(include_str!("lua/open_session.lua")),
            read_refresh: Script::new(include_str!("lua/read_refresh.lua")),
            rotate: Script::new(include_str!("lua/rotate.lua")),
            revoke: Script::new(include_str!("lua/revoke.lua")),
            mark_session: Script::new(include_str!("lua/mark_session.lua")),
            feed: Script::new(include_str!("lua/feed.lua")),
            purge: Script::new(include_str!("lua/purge.lua")),
            drop_session: Script::new(include_str!("lua/drop_session.lua")),
            forget_sessions: Script::new(include_str!("lua/forget_sessions.lua")),
            insert_key: Script::new(include_str!("lua/insert_key.lua")),
            erase_key: Script::new(include_str!("lua/erase_key.lua")),
            lease: Script::new(include_str!("lua/lease.lua")),
            put_token: Script::new(include_str!("lua/put_token.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            invalidate: Script::new(include_str!("lua/invalidate.lua")),
            set_phone: Script::new(include_str!("lua/set_phone.lua")),
            set_user_fields: Script::new(include_str!("lua/set_user_fields.lua")),
            rate_limit: Script::new(include_str!("lua/rate_limit.lua")),
            put_ephemeral: Script::new(include_str!("lua/put_ephemeral.lua")),
            take_ephemeral: Script::new(include_str!("lua/take_ephemeral.lua")),
            purge_ephemeral: Script::new(include_str!("lua/purge_ephemeral.lua")),
            report_ttl: Script::new(include_str!("lua/report_ttl.lua")),
        }
    }
}
