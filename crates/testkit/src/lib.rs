//! Test harness shared by every integration test: starts a real `nats-server -js` on a free
//! 127.0.0.1 port with a temporary store directory (stopped on drop, restartable on the same port
//! and store), finds the workspace's service binaries and runs them as child processes that can
//! be killed with SIGKILL.
//!
//! The `nats-server` binary is taken from `NATS_SERVER_BIN`, else the project's `.venv/bin`
//! (installed by `scripts/install-nats`), else `PATH`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// Where the `nats-server` binary is, or a message saying how to install it.
pub fn nats_server_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let venv = workspace_root().join(".venv/bin/nats-server");
    if venv.exists() {
        return Ok(venv);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.exists() {
                return Ok(candidate);
            }
        }
    }
    Err("no nats-server found: run scripts/install-nats (or set NATS_SERVER_BIN)".into())
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback interface has a free port")
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A real nats-server with JetStream, for one test.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
}

impl NatsServer {
    /// Starts a server on a free loopback port with a fresh JetStream store.
    pub fn start() -> NatsServer {
        let binary = nats_server_binary().unwrap_or_else(|e| panic!("{e}"));
        let store = tempfile::Builder::new()
            .prefix("privacy-nats-")
            .tempdir()
            .expect("a temporary directory");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            binary,
        };
        server.launch(false);
        server
    }

    /// Starts the process and waits for its log to say it is ready; a port taken meanwhile by
    /// someone else is replaced by another free one (unless `keep_port`).
    fn launch(&mut self, keep_port: bool) {
        let log = self.store.path().join("nats.log");
        for _attempt in 0..5 {
            let _ = std::fs::remove_file(&log);
            let mut child = Command::new(&self.binary)
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(self.store.path().join("jetstream"))
                .arg("-l")
                .arg(&log)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("Server is ready") {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nats-server did not get ready within 20 s:\n{text}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if keep_port {
                panic!(
                    "nats-server could not start again on port {}:\n{text}",
                    self.port
                );
            }
            self.port = free_port();
        }
        panic!("nats-server failed to start five times");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGKILL) and waits for it; its store stays for [`NatsServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.launch(true);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding the workspace's built binaries (`target/debug` for tests), or
/// `PRIVACY_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PRIVACY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary lives in a folder");
    if deps.ends_with("deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A service binary running as a child process.
pub struct ServiceProcess {
    child: Option<Child>,
    name: String,
}

impl ServiceProcess {
    /// Starts `bin_dir()/<binary>` with exactly the given `PRIVACY_*` environment on top of the
    /// test's own (RUST_LOG defaults to `warn`).
    pub fn spawn(binary: &str, env: &BTreeMap<String, String>) -> ServiceProcess {
        let path = bin_dir().join(binary);
        assert!(
            path.exists(),
            "{} is not built: run the tests with `cargo test --workspace`",
            path.display()
        );
        let mut cmd = Command::new(&path);
        cmd.envs(env).stdout(Stdio::null()).stderr(Stdio::inherit());
        if !env.contains_key("RUST_LOG") {
            cmd.env("RUST_LOG", "warn");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        ServiceProcess {
            child: Some(child),
            name: binary.to_owned(),
        }
    }

    /// Kills the process with SIGKILL (no chance to flush or clean up) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status (graceful shutdown).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{} did not exit within {timeout:?} of SIGTERM", self.name);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
