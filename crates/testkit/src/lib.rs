//! Test harness shared by every integration test: starts a real `nats-server -js` on a free
//! 127.0.0.1 port with a temporary store directory (stopped on drop, restartable on the same port
//! and store), or a JetStream cluster of them whose nodes can be killed and restarted one by one;
//! finds the workspace's service binaries and runs them as child processes that can be killed
//! with SIGKILL.
//!
//! The `nats-server` binary is taken from `NATS_SERVER_BIN`, else the project's `.venv/bin`
//! (installed by `scripts/install-nats`), else `PATH`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
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

/// Waits until `child`'s log file holds one of `lines`. `Err` carries the log when the process
/// exited first; a process still silent after `timeout` is killed and the test fails.
fn wait_for_log(
    child: &mut Child,
    log: &Path,
    lines: &[&str],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if lines.iter().any(|l| text.contains(l)) {
            return Ok(());
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(std::fs::read_to_string(log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not log any of {lines:?} within {timeout:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `cmd` (a nats-server with its arguments) logging to `log` (a fresh file) and waits for
/// the log to say it is ready. `Err` carries the log when it exited first (e.g. a port was taken).
fn spawn_nats(mut cmd: Command, log: &Path) -> Result<Child, String> {
    let _ = std::fs::remove_file(log);
    let mut child = cmd
        .arg("-l")
        .arg(log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    wait_for_log(
        &mut child,
        log,
        &["Server is ready"],
        Duration::from_secs(20),
    )?;
    Ok(child)
}

/// A real nats-server with JetStream, for one test.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
    /// A configuration file passed with `-c` (e.g. an authorization block).
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts a server on a free loopback port with a fresh JetStream store.
    pub fn start() -> NatsServer {
        NatsServer::start_with_config(None)
    }

    /// Starts a server whose configuration file holds `config` (e.g. an `authorization`
    /// block); the port, JetStream and its store are still given on the command line.
    pub fn start_with(config: &str) -> NatsServer {
        NatsServer::start_with_config(Some(config))
    }

    fn start_with_config(config: Option<&str>) -> NatsServer {
        let binary = nats_server_binary().unwrap_or_else(|e| panic!("{e}"));
        let store = tempfile::Builder::new()
            .prefix("privacy-nats-")
            .tempdir()
            .expect("a temporary directory");
        let config = config.map(|text| {
            let file = store.path().join("nats.conf");
            std::fs::write(&file, text).expect("write the nats-server configuration");
            file
        });
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            binary,
            config,
        };
        server.launch(false);
        server
    }

    /// Starts the process and waits for its log to say it is ready; a port taken meanwhile by
    /// someone else is replaced by another free one (unless `keep_port`).
    fn launch(&mut self, keep_port: bool) {
        let log = self.store.path().join("nats.log");
        for _attempt in 0..5 {
            let mut cmd = Command::new(&self.binary);
            if let Some(file) = &self.config {
                cmd.arg("-c").arg(file);
            }
            cmd.args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path().join("jetstream"));
            match spawn_nats(cmd, &log) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(text) if keep_port => panic!(
                    "nats-server could not start again on port {}:\n{text}",
                    self.port
                ),
                Err(_) => self.port = free_port(),
            }
        }
        panic!("nats-server failed to start five times");
    }

    /// The folder holding the server's JetStream store, configuration and log.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
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

/// What a node of a JetStream cluster logs once it knows the metadata leader (the leader itself
/// logs the second line).
const META_LEADER_KNOWN: [&str; 2] = [
    "JetStream cluster new metadata leader",
    "Self is new JetStream cluster metadata leader",
];

/// One node of a [`NatsCluster`].
struct ClusterNode {
    child: Option<Child>,
    port: u16,
    cluster_port: u16,
}

/// Real nats-server processes forming one JetStream cluster on loopback ports, for one test:
/// each node has a client port, a cluster (route) port, its own store and a config file in a
/// temporary directory. Nodes are named `n0`, `n1`, … (`server_name`, as JetStream reports
/// stream and consumer leaders). Stopped on drop.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl NatsCluster {
    /// Starts an `n`-node cluster and waits until every node knows the JetStream metadata leader
    /// and a stream with `n` replicas can be placed.
    pub fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a cluster has at least one node");
        let binary = nats_server_binary().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("privacy-nats-cluster-")
            .tempdir()
            .expect("a temporary directory");
        let mut cluster = NatsCluster {
            nodes: Vec::new(),
            dir,
            binary,
        };
        // A port taken by someone else between `free_port` and the bind makes a node exit; the
        // routes name every node's port, so the whole cluster starts again on fresh ports.
        for _attempt in 0..5 {
            cluster.stop_all();
            cluster.nodes = (0..n)
                .map(|_| ClusterNode {
                    child: None,
                    port: free_port(),
                    cluster_port: free_port(),
                })
                .collect();
            if (0..n).all(|i| cluster.launch(i).is_ok()) {
                for i in 0..n {
                    cluster.wait_for_meta_leader(i);
                }
                cluster.wait_for_placement();
                return cluster;
            }
        }
        panic!("a nats-server cluster failed to start five times");
    }

    /// Node `i`'s name (`server_name`).
    pub fn name(&self, i: usize) -> String {
        format!("n{i}")
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.name(i) == name)
    }

    /// `nats://127.0.0.1:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node's URL, comma-separated (a `PRIVACY_NATS_URL`).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `i` with SIGKILL (its own process only) and reaps it; its store stays for
    /// [`NatsCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports with its store, and waits until it knows the
    /// metadata leader.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        if let Err(text) = self.launch(i) {
            panic!(
                "nats-server {} could not start again on ports {} and {}:\n{text}",
                self.name(i),
                self.nodes[i].port,
                self.nodes[i].cluster_port
            );
        }
        self.wait_for_meta_leader(i);
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.name(i)))
    }

    /// Writes node `i`'s config file and starts it; `Err` carries its log if it exited.
    fn launch(&mut self, i: usize) -> Result<(), String> {
        let routes: Vec<String> = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| format!("nats-route://127.0.0.1:{}", self.nodes[j].cluster_port))
            .collect();
        let store = self.dir.path().join(self.name(i)).join("jetstream");
        let config = format!(
            "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: {store:?}\n}}\n\
             cluster {{\n  name: privacy-test\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{routes}]\n}}\n",
            name = self.name(i),
            port = self.nodes[i].port,
            store = store.display().to_string(),
            cluster_port = self.nodes[i].cluster_port,
            routes = routes.join(", "),
        );
        let file = self.dir.path().join(format!("{}.conf", self.name(i)));
        std::fs::write(&file, config).expect("the node's config file is written");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c").arg(&file);
        self.nodes[i].child = Some(spawn_nats(cmd, &self.log(i))?);
        Ok(())
    }

    fn wait_for_meta_leader(&mut self, i: usize) {
        let (log, name) = (self.log(i), self.name(i));
        let child = self.nodes[i].child.as_mut().expect("the node runs");
        if let Err(text) = wait_for_log(child, &log, &META_LEADER_KNOWN, Duration::from_secs(30)) {
            panic!("nats-server {name} exited before it found a metadata leader:\n{text}");
        }
    }

    /// Waits until JetStream can place a stream on every node: the metadata leader adds the
    /// other nodes to its peer set only after it was elected, and until then creating a
    /// replicated stream fails with "no suitable peers for placement".
    fn wait_for_placement(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match probe_placement(self.nodes[0].port, self.nodes.len()) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("the cluster cannot place a stream on every node after 30 s: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Creates, over the NATS protocol on `127.0.0.1:port`, a file stream with `replicas` replicas
/// and deletes it again; `Err` says why JetStream refused or did not answer.
fn probe_placement(port: u16, replicas: usize) -> Result<(), String> {
    let conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(conn);
    let config = format!(
        r#"{{"name":"TESTKIT_PROBE","subjects":["testkit.probe"],"storage":"file","num_replicas":{replicas}}}"#
    );
    write!(
        writer,
        "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.probe 1\r\n\
         PUB $JS.API.STREAM.CREATE.TESTKIT_PROBE _INBOX.probe {}\r\n{config}\r\n",
        config.len()
    )
    .map_err(|e| e.to_string())?;
    let created = read_reply(&mut reader, &mut writer)?;
    if created.contains(r#""error""#) {
        return Err(created);
    }
    write!(
        writer,
        "PUB $JS.API.STREAM.DELETE.TESTKIT_PROBE _INBOX.probe 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let deleted = read_reply(&mut reader, &mut writer)?;
    if deleted.contains(r#""error""#) {
        return Err(deleted);
    }
    Ok(())
}

/// Reads protocol lines until a `MSG` arrives and returns its payload (answers `PING`).
fn read_reply(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream) -> Result<String, String> {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("no reply: {e}")),
        }
        if line.starts_with("PING") {
            writer.write_all(b"PONG\r\n").map_err(|e| e.to_string())?;
        } else if line.starts_with("-ERR") {
            return Err(line.trim_end().to_owned());
        } else if line.starts_with("MSG ") {
            let size: usize = line
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad MSG line {line:?}"))?;
            let mut payload = vec![0; size + 2];
            reader.read_exact(&mut payload).map_err(|e| e.to_string())?;
            payload.truncate(size);
            return Ok(String::from_utf8_lossy(&payload).into_owned());
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.stop_all();
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
        ServiceProcess::start(binary, env, None)
    }

    /// Like [`ServiceProcess::spawn`], with the process's standard output and error appended to
    /// the file `log`.
    pub fn spawn_logged(
        binary: &str,
        env: &BTreeMap<String, String>,
        log: &Path,
    ) -> ServiceProcess {
        ServiceProcess::start(binary, env, Some(log))
    }

    fn start(binary: &str, env: &BTreeMap<String, String>, log: Option<&Path>) -> ServiceProcess {
        let path = bin_dir().join(binary);
        assert!(
            path.exists(),
            "{} is not built: run the tests with `cargo test --workspace`",
            path.display()
        );
        let mut cmd = Command::new(&path);
        cmd.envs(env);
        match log {
            Some(file) => {
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", file.display()));
                let err = out.try_clone().expect("a second handle on the log file");
                cmd.stdout(out).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
        }
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

    /// The process id (`None` once it was killed or stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
