//! NATS servers of a test's own, for tests that stop a server or need settings the machine's
//! shared server does not have: a `nats-server` process on a free loopback port with its own
//! store directory, killed (and its directory removed) when dropped; and a three-node
//! JetStream cluster of such processes ([`NatsCluster`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The `nats-server` binary: `ROLLCALL_NATS_SERVER`, else the one on `PATH`, else Debian's.
pub fn binary() -> String {
    if let Ok(path) = std::env::var("ROLLCALL_NATS_SERVER") {
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("nats-server").is_file()))
        .unwrap_or(false);
    if on_path {
        "nats-server".into()
    } else {
        "/usr/sbin/nats-server".into()
    }
}

/// Every server version the tests run against: the machine's (`binary()`), and the current
/// release when `ROLLCALL_NATS_SERVER_CURRENT` names it (the test command installs it).
pub fn binaries() -> Vec<String> {
    let mut binaries = vec![binary()];
    if let Ok(current) = std::env::var("ROLLCALL_NATS_SERVER_CURRENT") {
        binaries.push(current);
    }
    binaries
}

/// The current release's `nats-server` (`ROLLCALL_NATS_SERVER_CURRENT`, else where
/// `scripts/test.sh` installs it).
pub fn current_binary() -> String {
    if let Ok(path) = std::env::var("ROLLCALL_NATS_SERVER_CURRENT") {
        return path;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = format!("{home}/.cache/rollcall/nats-server-2.15.1/bin/nats-server");
    assert!(
        std::path::Path::new(&installed).is_file(),
        "the current nats-server release is missing: set ROLLCALL_NATS_SERVER_CURRENT or run scripts/test.sh, which installs it"
    );
    installed
}

/// Settings of a server of the test's own.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The `nats-server` binary ([`binary`] when unset).
    pub binary: Option<String>,
    /// `max_payload` in bytes (the server's default, 1 MiB, when unset).
    pub max_payload: Option<usize>,
}

/// A `nats-server` process of one test.
#[derive(Debug)]
pub struct NatsServer {
    /// Its client URL.
    pub url: String,
    port: u16,
    directory: PathBuf,
    config: PathBuf,
    binary: String,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

impl NatsServer {
    /// Starts a server with JetStream and waits until it accepts connections.
    pub async fn start(settings: Settings) -> Self {
        let port = free_port();
        let directory =
            std::env::temp_dir().join(format!("rollcall-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&directory).unwrap();
        let config = directory.join("nats.conf");
        let mut text = format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            directory.join("store").display()
        );
        if let Some(max_payload) = settings.max_payload {
            text.push_str(&format!("max_payload: {max_payload}\n"));
        }
        std::fs::write(&config, text).unwrap();
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            directory,
            config,
            binary: settings.binary.unwrap_or_else(binary),
            child: None,
        };
        server.restart().await;
        server
    }

    /// (Re)starts the process on the same port and store, and waits until it accepts.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        crate::eventually(
            "the test's NATS server accepts connections",
            Duration::from_secs(10),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// Kills the process (`SIGKILL`, as a crash would) and waits for it to end.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// The configuration of a three-server cluster in `directory`, on ports free now.
fn configure(directory: &std::path::Path, settings: &Settings) -> Vec<Node> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    (0..3)
        .map(|n| {
            let name = format!("n{n}");
            let (port, monitor) = (free_port(), free_port());
            let others: Vec<String> = routes
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != n)
                .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
                .collect();
            let mut text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{\n  store_dir: \"{}\"\n}}\n\
                 cluster {{\n  name: rollcall\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                directory.join(&name).display(),
                routes[n],
                others.join(", ")
            );
            if let Some(max_payload) = settings.max_payload {
                text.push_str(&format!("max_payload: {max_payload}\n"));
            }
            let config = directory.join(format!("{name}.conf"));
            std::fs::write(&config, text).unwrap();
            Node {
                name,
                port,
                monitor,
                config,
                child: None,
            }
        })
        .collect()
}

/// One server of a [`NatsCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    monitor: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self, binary: &str) {
        let child = Command::new(binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
    }

    /// The meta leader this node knows of, if it answers and knows one.
    async fn meta_leader(&self, http: &reqwest::Client) -> Option<String> {
        let jsz: serde_json::Value = http
            .get(format!("http://127.0.0.1:{}/jsz", self.monitor))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        jsz["meta_cluster"]["leader"]
            .as_str()
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned)
    }
}

/// A three-node JetStream cluster of one test: `nats-server` processes on free loopback ports,
/// each with its own store directory, routed to each other. Killed (and their directories
/// removed) when dropped, also when the test fails.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    directory: PathBuf,
    binary: String,
    client: Option<async_nats::Client>,
}

impl NatsCluster {
    /// Starts three servers (`settings.max_payload` applies to each) and waits until JetStream
    /// has a meta leader that every server knows. Ports are picked free just before the servers
    /// bind them, so another test's server may take one first: a cluster whose server exits, or
    /// that elects no leader, is started again on other ports (three attempts).
    pub async fn start(settings: Settings) -> Self {
        const ATTEMPTS: usize = 3;
        let binary = settings.binary.clone().unwrap_or_else(binary);
        for attempt in 1..=ATTEMPTS {
            let directory = std::env::temp_dir()
                .join(format!("rollcall-nats-cluster-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&directory).unwrap();
            let mut cluster = Self {
                nodes: configure(&directory, &settings),
                directory,
                binary: binary.clone(),
                client: None,
            };
            for node in &mut cluster.nodes {
                node.spawn(&cluster.binary);
            }
            match cluster.elected(Duration::from_secs(30)).await {
                Ok(()) => {
                    cluster.client = Some(
                        rollcall_eventlog::connect(&cluster.urls(), "rollcall-test-cluster")
                            .await
                            .unwrap(),
                    );
                    return cluster;
                }
                Err(why) if attempt < ATTEMPTS => {
                    eprintln!("the test's NATS cluster did not start ({why}); starting it again on other ports");
                }
                Err(why) => {
                    panic!("the test's NATS cluster did not start in {ATTEMPTS} attempts: {why}")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Waits until every server names the same JetStream meta leader; says why not when a
    /// server exits (a port taken) or `within` passes first.
    async fn elected(&mut self, within: Duration) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        loop {
            for node in &mut self.nodes {
                if let Some(Ok(Some(status))) = node.child.as_mut().map(|child| child.try_wait()) {
                    return Err(format!("server {} exited: {status}", node.name));
                }
            }
            let mut leaders = Vec::new();
            for node in &self.nodes {
                leaders.push(node.meta_leader(&http).await);
            }
            if leaders.first().is_some_and(|first| {
                first.is_some() && leaders.iter().all(|leader| leader == first)
            }) {
                return Ok(());
            }
            if started.elapsed() >= within {
                return Err(format!("no meta leader within {within:?}: {leaders:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running server names the same JetStream meta leader.
    pub async fn wait_for_meta_leader(&self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        crate::eventually(
            "the test's NATS cluster has a JetStream meta leader",
            Duration::from_secs(30),
            || async {
                let mut leaders = Vec::new();
                for node in self.nodes.iter().filter(|node| node.child.is_some()) {
                    leaders.push(node.meta_leader(&http).await);
                }
                leaders.first().is_some_and(|first| {
                    first.is_some() && leaders.iter().all(|leader| leader == first)
                })
            },
        )
        .await;
    }

    /// The client URLs of every server, comma-separated (as `NATS_URL` takes them).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|node| self.url(node))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of one server.
    pub fn url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].port)
    }

    /// The server name of a node (`n0`, `n1`, `n2`).
    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// The node that leads `stream` now (`$JS.API.STREAM.INFO.<stream>` → `cluster.leader`), if
    /// the stream has a leader that is a running node of this cluster.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let client = self.client.clone()?;
        let info = async_nats::jetstream::new(client)
            .get_stream(stream)
            .await
            .ok()?
            .cached_info()
            .clone();
        let leader = info.cluster?.leader?;
        self.nodes
            .iter()
            .position(|node| node.name == leader && node.child.is_some())
    }

    /// Kills one server (`SIGKILL`, as a crash or power loss would) and waits for it to end.
    pub async fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Kills every server.
    pub async fn stop(&mut self) {
        self.client = None;
        for node in 0..self.nodes.len() {
            self.kill(node).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}
