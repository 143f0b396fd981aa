//! NATS servers of a test's own, for tests that stop a server or need settings the machine's
//! shared server does not have: a `nats-server` process on a free loopback port with its own
//! store directory, killed (and its directory removed) when dropped.

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
