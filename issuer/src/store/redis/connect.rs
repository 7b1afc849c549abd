//! Making the store's connections: one server's `ConnectionManager` (a direct URL, or the
//! primary Sentinel names) or a Redis Cluster's connection, each with its own health
//! connection (see [`super::link`]).

use super::*;

pub(super) async fn connect_manager(
    client: redis::Client,
) -> Result<ConnectionManager, RedisError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config).await
}

/// A client for the current primary.
pub(super) async fn primary_client(target: &RedisTarget) -> Result<redis::Client, RedisError> {
    match target {
        RedisTarget::Direct(url) => redis::Client::open(url.as_str()),
        RedisTarget::Sentinel {
            sentinels,
            master,
            db,
            username,
            password,
        } => {
            let addrs = sentinels
                .iter()
                .map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port));
            let mut builder = redis::sentinel::SentinelClientBuilder::new(
                addrs,
                master,
                redis::sentinel::SentinelServerType::Master,
            )?
            .set_client_to_redis_db(*db);
            if let Some(username) = username {
                builder = builder.set_client_to_redis_username(username);
            }
            if let Some(password) = password {
                builder = builder.set_client_to_redis_password(password);
            }
            let mut sentinel = builder.build()?;
            sentinel.async_get_client().await
        }
        RedisTarget::Cluster {
            nodes,
            tls,
            username,
            password,
        } => {
            // Any node hears every PUBLISH of the cluster: the first seed that answers.
            let mut last = None;
            for (host, port) in nodes {
                let client = redis::Client::open(node_url(host, *port, *tls, username, password))?;
                let probe = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.get_multiplexed_async_connection(),
                )
                .await;
                match probe {
                    Ok(Ok(_)) => return Ok(client),
                    Ok(Err(err)) => last = Some(err),
                    Err(_) => {
                        last = Some(RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("{host}:{port} did not answer within 2 s"),
                        )))
                    }
                }
            }
            Err(last.unwrap_or_else(|| {
                RedisError::from(std::io::Error::other("the cluster URL names no node"))
            }))
        }
    }
}

/// `redis[s]://[user:password@]host:port/` for one cluster node (an IPv6 address, kept
/// without brackets by the configuration, in brackets here).
pub(super) fn node_url(
    host: &str,
    port: u16,
    tls: bool,
    username: &Option<String>,
    password: &Option<String>,
) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    let bracketed;
    let host = if host.contains(':') {
        bracketed = format!("[{host}]");
        bracketed.as_str()
    } else {
        host
    };
    let Ok(mut url) = url::Url::parse(&format!("{scheme}://{host}:{port}/")) else {
        return format!("{scheme}://{host}:{port}/");
    };
    if let Some(user) = username {
        let _ = url.set_username(user);
    }
    if let Some(password) = password {
        let _ = url.set_password(Some(password));
    }
    url.to_string()
}

/// A connection to a Redis Cluster through its seed nodes (the client discovers the rest,
/// follows `MOVED`/`ASK` and refreshes the topology after a failover or a resharding).
pub(super) async fn cluster_link(target: &RedisTarget) -> Result<Link, RedisError> {
    let RedisTarget::Cluster {
        nodes,
        tls,
        username,
        password,
    } = target
    else {
        return Err(RedisError::from(std::io::Error::other("not a cluster URL")));
    };
    let seeds = nodes
        .iter()
        .map(|(host, port)| node_url(host, *port, *tls, &None, &None));
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(3))
        .retries(8)
        .min_retry_wait(20)
        .max_retry_wait(500);
    if let Some(username) = username {
        builder = builder.username(username);
    }
    if let Some(password) = password {
        builder = builder.password(password);
    }
    if *tls {
        builder = builder.tls(redis::cluster::TlsMode::Secure);
    }
    let client = builder.build()?;
    Ok(Link::Cluster(client.get_async_connection().await?))
}

/// The primary's address (a cluster's: empty), the main and the health connections.
pub(super) async fn connect_links(
    target: &RedisTarget,
) -> Result<(String, Link, Link), RedisError> {
    if matches!(target, RedisTarget::Cluster { .. }) {
        let (main, health) = (cluster_link(target).await?, cluster_link(target).await?);
        return Ok((String::new(), main, health));
    }
    let client = primary_client(target).await?;
    let primary = client.get_connection_info().addr().to_string();
    let (manager, health) = links_to(client).await?;
    Ok((primary, manager, health))
}

/// The main and the health connections to one server.
pub(super) async fn links_to(client: redis::Client) -> Result<(Link, Link), RedisError> {
    let manager = connect_manager(client.clone()).await?;
    let health = connect_manager(client).await?;
    Ok((Link::Single(manager), Link::Single(health)))
}
