//! The connection the Redis store runs its commands on: one server's `ConnectionManager`
//! (a direct URL, or the primary Sentinel names) or a Redis Cluster's `ClusterConnection`
//! (which follows `MOVED`/`ASK`, fails over and refreshes the topology by itself). Both are
//! a [`redis::aio::ConnectionLike`], so every command and script of the store is written
//! once; the health reads that must reach every node (`INFO stats`, `CONFIG GET`) go
//! through [`Link::on_every_node`]. (`WAIT` needs nothing of the kind: the cluster client
//! sends it to every primary and answers the minimum.) [`Link::connection_ids`] names the
//! connection the client has to each primary now, which it may replace by itself.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// One server or a cluster. Cheap to clone (both multiplex).
#[derive(Clone)]
pub(super) enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    /// Runs `cmd` on every node (primaries and replicas of a cluster; the one server
    /// otherwise) and returns each node's answer. Fails if any node does not answer.
    pub(super) async fn on_every_node<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
    ) -> RedisResult<Vec<T>> {
        Ok(self
            .on_every_node_named(cmd)
            .await?
            .into_iter()
            .map(|(_, answer)| answer)
            .collect())
    }

    /// [`Link::on_every_node`], each answer with its node's address (`host:port` in a
    /// cluster; `""` for the one server).
    pub(super) async fn on_every_node_named<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
    ) -> RedisResult<Vec<(String, T)>> {
        match self {
            Link::Single(conn) => Ok(vec![(String::new(), cmd.query_async(conn).await?)]),
            Link::Cluster(conn) => {
                let value = conn
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None)),
                    )
                    .await?;
                match value {
                    // One answer per node address.
                    Value::Map(answers) => answers
                        .into_iter()
                        .map(|(node, answer)| {
                            Ok((
                                redis::from_redis_value(node)?,
                                redis::from_redis_value(answer)?,
                            ))
                        })
                        .collect(),
                    other => Ok(vec![(String::new(), redis::from_redis_value(other)?)]),
                }
            }
        }
    }
}

impl Link {
    /// The server's id (`CLIENT ID`) of the connection the client has now to each primary
    /// (the one server: one, named `""`), sorted by the primary's address. A server numbers
    /// its connections upwards and never again the same while it runs, so two reads giving
    /// the same id for a node went out on one connection and it was not replaced in between.
    pub(super) async fn connection_ids(&mut self) -> RedisResult<Vec<(String, i64)>> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("ID");
        match self {
            Link::Single(conn) => Ok(vec![(String::new(), cmd.query_async(conn).await?)]),
            Link::Cluster(conn) => {
                let value = conn
                    .route_command(
                        cmd,
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                let mut ids = match value {
                    Value::Map(answers) => answers
                        .into_iter()
                        .map(|(node, id)| {
                            Ok((redis::from_redis_value(node)?, redis::from_redis_value(id)?))
                        })
                        .collect::<RedisResult<Vec<_>>>()?,
                    one => vec![(String::new(), redis::from_redis_value(one)?)],
                };
                ids.sort();
                Ok(ids)
            }
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
        }
    }
}
