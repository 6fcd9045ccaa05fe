//! Shared helpers of the end-to-end suites: the services started by
//! `tests/run.sh`, and the real `inkstream` binary as a child process.
//!
//! A test that needs a service calls [`redis_url`] or [`kafka_brokers`]; when
//! the harness did not provide it, the test **fails** with a message saying
//! how to run the suite. Nothing is skipped silently.

pub mod chaos;
pub mod cut_proxy;
pub mod tls;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn required(var: &str, what: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: this test needs a real {what}. Run the suite with `tests/run.sh`, \
             which installs and starts it (or export {var} yourself)."
        ),
    }
}

/// The real redis-server started by the harness (`redis://127.0.0.1:PORT`).
pub fn redis_url() -> String {
    required("INKSTREAM_TEST_REDIS_URL", "redis-server")
}

/// The real Kafka-compatible broker started by the harness (`127.0.0.1:PORT`).
pub fn kafka_brokers() -> String {
    required(
        "INKSTREAM_TEST_KAFKA_BROKERS",
        "Kafka broker (Apache Kafka)",
    )
}

/// A name no other test (or earlier run) uses: for key prefixes and topics.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// A config file `inkstream.toml` holding `toml`, in a directory of its own
/// under the system's temp dir (left there: a few bytes per test run).
fn config_file(toml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("inkstream-cfg"));
    std::fs::create_dir_all(&dir).expect("create a config directory");
    let cfg = dir.join("inkstream.toml");
    std::fs::write(&cfg, toml).expect("write the config file");
    cfg
}

/// A config with one API key, `name`, whose secret is `key`, and `extra`
/// lines of that key's table (`scopes = [...]`, `categories = [...]`).
pub fn api_key_config(name: &str, key: &str, extra: &str) -> PathBuf {
    config_file(&format!(
        "[[auth.api_keys]]\nname = \"{name}\"\nsha256 = \"{}\"\n{extra}\n",
        connectors::auth::hash_api_key(key)
    ))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct ports that were free a moment ago: each is held until all
/// are picked (picked one by one, the system may hand the same port out
/// twice: a broker's controller and SASL listeners once got one port).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let ports = free_port_list(N);
    std::array::from_fn(|i| ports[i])
}

/// [`free_ports`] for a count known at run time.
pub fn free_port_list(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The `inkstream` binary built by this cargo invocation
/// (`target/<profile>/inkstream`, next to the test's `deps/` folder).
pub fn inkstream_bin() -> PathBuf {
    if let Ok(p) = std::env::var("INKSTREAM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = dir.join("inkstream");
    assert!(
        bin.exists(),
        "{} does not exist: build the workspace (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A running `inkstream serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    /// Starts `inkstream serve` with `args` and waits until `/healthz` answers.
    pub async fn start(args: &[&str]) -> Server {
        Server::start_on(free_port(), args).await
    }

    /// Like [`Server::start`] on a given port (a restart "in place").
    pub async fn start_on(port: u16, args: &[&str]) -> Server {
        Server::start_with_env(port, &[], args).await
    }

    /// Like [`Server::start_on`] with environment variables (secrets).
    pub async fn start_with_env(port: u16, env: &[(&str, &str)], args: &[&str]) -> Server {
        Server::spawn(port, env, args, Stdio::inherit()).await
    }

    /// Like [`Server::start`], also keeping what it logs: the lines are
    /// copied to the test's stderr and into the returned buffer as they
    /// come (a pipe nobody read would stall the server once full).
    pub async fn start_logged(args: &[&str]) -> (Server, Arc<Mutex<String>>) {
        let mut server = Server::spawn(free_port(), &[], args, Stdio::piped()).await;
        let log = Arc::new(Mutex::new(String::new()));
        let pipe = server.child.stderr.take().expect("a piped stderr");
        let kept = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        (server, log)
    }

    async fn spawn(port: u16, env: &[(&str, &str)], args: &[&str], stderr: Stdio) -> Server {
        let mut cmd = Command::new(inkstream_bin());
        cmd.arg("serve")
            .arg("--port")
            .arg(port.to_string())
            // The suites drive load as anonymous callers from one address:
            // lift their per-peer rate (a test's own `--set` comes later and wins).
            .args([
                "--set",
                "ingest.anonymous_rate_per_sec=1e9",
                "--set",
                "ingest.anonymous_burst=1e9",
            ])
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("KAFKA_BROKERS")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().expect("spawn inkstream serve");
        let server = Server { child, port };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(server.url("/healthz")).send().await
                && r.status().is_success()
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "inkstream serve did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private redis-server (from the harness's `INKSTREAM_TEST_REDIS_SERVER`)
/// that a test may stop and restart, with AOF so data survives the restart.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start(name: &str) -> PrivateRedis {
        let dir = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = PrivateRedis {
            port: free_port(),
            dir,
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and data directory.
    pub fn restart(&mut self) {
        let bin = required("INKSTREAM_TEST_REDIS_SERVER", "redis-server binary");
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes this server a replica of `primary` (`REPLICAOF`) and waits
    /// until the primary reports it online (its first sync done).
    pub fn replicate(&self, primary: &PrivateRedis) {
        let query = |port: u16, cmd: &mut redis::Cmd| -> String {
            let client =
                redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a redis URL");
            let mut conn = client
                .get_connection()
                .expect("connect to a private redis-server");
            match cmd.query::<redis::Value>(&mut conn).expect("redis command") {
                redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                other => format!("{other:?}"),
            }
        };
        query(
            self.port,
            redis::cmd("REPLICAOF").arg("127.0.0.1").arg(primary.port),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !query(primary.port, redis::cmd("INFO").arg("replication")).contains("state=online") {
            assert!(
                Instant::now() < deadline,
                "the replica on port {} did not come online within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the server (SIGSTOP): a replica that stops confirming
    /// writes, without closing a connection. [`PrivateRedis::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server [`PrivateRedis::pause`] froze (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let sent = Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {which} {pid} failed");
    }

    /// Stops the server (SIGKILL: an outage, not a clean shutdown; AOF with
    /// fsync always keeps every acknowledged write).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Apache Kafka broker (KRaft, one node; started with the harness's
/// `tests/kafka/broker.sh`) that a test may stop and start again on the same
/// ports. Its data lives in a folder of its own and survives a restart, as a
/// real broker's does.
pub struct PrivateKafka {
    pub port: u16,
    controller_port: u16,
    /// The SASL_SSL listener's port, when started with one.
    pub sasl_port: Option<u16>,
    /// `broker.sh`'s settings of the SASL_SSL listener (kept for restarts).
    env: Vec<(String, String)>,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateKafka {
    pub fn start() -> PrivateKafka {
        PrivateKafka::start_with(free_ports(), None, Vec::new())
    }

    /// A broker with a second listener, SASL_SSL: SCRAM-SHA-512 for `user`
    /// with `password`, over TLS with the PEM certificate `cert` and its
    /// key `key` (e.g. `tls::TestPki`'s server pair).
    pub fn start_sasl_ssl(
        cert: &std::path::Path,
        key: &std::path::Path,
        user: &str,
        password: &str,
    ) -> PrivateKafka {
        let [port, plain, controller] = free_ports();
        let path = |p: &std::path::Path| p.display().to_string();
        let env = vec![
            ("KAFKA_SASL_SSL_PORT".to_owned(), port.to_string()),
            ("KAFKA_TLS_CERT".to_owned(), path(cert)),
            ("KAFKA_TLS_KEY".to_owned(), path(key)),
            ("KAFKA_SCRAM_USER".to_owned(), user.to_owned()),
            ("KAFKA_SCRAM_PASSWORD".to_owned(), password.to_owned()),
        ];
        PrivateKafka::start_with([plain, controller], Some(port), env)
    }

    fn start_with(
        [port, controller_port]: [u16; 2],
        sasl_port: Option<u16>,
        env: Vec<(String, String)>,
    ) -> PrivateKafka {
        let dir = std::env::temp_dir().join(unique("kafka"));
        std::fs::create_dir_all(&dir).expect("kafka dir");
        let mut k = PrivateKafka {
            port,
            controller_port,
            sasl_port,
            env,
            dir,
            child: None,
        };
        k.restart();
        k
    }

    /// The PLAINTEXT listener.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The SASL_SSL listener.
    pub fn sasl_brokers(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.sasl_port
                .expect("a broker started with start_sasl_ssl")
        )
    }

    /// Starts the broker (again) and waits until it says it has started: an
    /// open port alone does not answer metadata requests yet.
    pub fn restart(&mut self) {
        let script = required(
            "INKSTREAM_TEST_KAFKA_SH",
            "Apache Kafka (tests/kafka/broker.sh)",
        );
        let log_path = self.dir.join("broker.log");
        let log = std::fs::File::create(&log_path).expect("kafka log");
        let child = Command::new("bash")
            .arg(script)
            .arg("run")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn Apache Kafka");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("Kafka Server started") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("Apache Kafka exited during startup ({status}):\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "Apache Kafka did not say \"Kafka Server started\" within 90 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the broker (SIGSTOP): its connections stay open and nothing
    /// sent to it is answered — a hung broker or a partition, not a crash.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let child = self.child.as_ref().expect("a running broker");
        let status = Command::new("kill")
            .arg(which)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {which} of the broker failed");
    }

    /// Stops the broker at once (SIGKILL, like a crash); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// POSTs `events` (a JSON array) to `/v1/events`; the response status.
pub async fn post_events(server: &Server, events: &[serde_json::Value]) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(server.url("/v1/events"))
        .json(&serde_json::Value::Array(events.to_vec()))
        .send()
        .await
        .expect("POST /v1/events")
        .status()
}

/// `n` keystroke batches of `user` in `project`, a second apart from `t0`
/// (ids `<prefix>-<i>`): the live WPM operator emits one update for each.
pub fn keystrokes(
    prefix: &str,
    user: &str,
    project: &str,
    t0: i64,
    n: i64,
) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("{prefix}-{i}"), "type": "writing.keystroke",
                "ts": t0 + i * 1_000, "user_id": user, "project_id": project,
                "data": {"keystrokes": 6, "words": 1, "chars": 6}})
        })
        .collect()
}

/// The configuration of a consumer that checks what reached a broker: a
/// group of its own (`group` plus a unique suffix), from the earliest offset,
/// no commits. Topics created after it subscribed are found within a second:
/// librdkafka's default looks for them again only every 5 minutes, so a
/// checker that subscribes before the mirror has created a topic would miss
/// everything on it.
pub fn checking_consumer(brokers: &str, group: &str) -> rdkafka::ClientConfig {
    let mut config = connectors::kafka::client_config(brokers);
    config
        .set("group.id", unique(group))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "1000");
    config
}

/// Debian's `kcat` (librdkafka's command-line client), installed by the harness.
pub fn kcat() -> String {
    required("INKSTREAM_TEST_KCAT", "kcat (Debian package)")
}

/// Runs one of Apache Kafka's own command-line tools (`class`, from the
/// broker's jars through `tests/kafka/broker.sh tool`) to completion.
pub fn kafka_tool(class: &str, args: &[&str]) -> std::process::Output {
    let script = required(
        "INKSTREAM_TEST_KAFKA_SH",
        "Apache Kafka (tests/kafka/broker.sh)",
    );
    Command::new("bash")
        .arg(script)
        .arg("tool")
        .arg(class)
        .args(args)
        .output()
        .expect("run an Apache Kafka tool")
}

/// The harness's Python (with fastavro and confluent-kafka).
pub fn python() -> String {
    required(
        "INKSTREAM_TEST_PYTHON",
        "Python with fastavro and confluent-kafka",
    )
}

/// A client WebSocket to the server under test.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client on `path` whose receive buffer is 4 KiB (set before
/// connecting, which turns off the kernel's receive autotuning): once it
/// stops reading, the server's send buffer fills after a few megabytes at
/// most, whatever the machine's TCP settings.
pub async fn small_window_client(server: &Server, path: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("set the receive buffer");
    let stream = socket
        .connect(
            format!("127.0.0.1:{}", server.port)
                .parse()
                .expect("a socket address"),
        )
        .await
        .expect("connect to the server");
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    tokio_tungstenite::client_async(server.ws_url(path), stream)
        .await
        .expect("WebSocket handshake")
        .0
}

/// The next JSON text frame (other frames skipped); fails after 10 s.
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("stream open")
            .expect("frame ok");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON frame");
        }
    }
}

/// Connects to `/ws/analytics`, subscribes to `channel` and checks the reply.
pub async fn subscribe(server: &Server, channel: &str) -> Ws {
    use futures_util::SinkExt;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/ws/analytics"))
        .await
        .expect("connect /ws/analytics");
    let frame = serde_json::json!({"op": "subscribe", "channel": channel}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
        .await
        .expect("send subscribe");
    let reply = next_json(&mut ws).await;
    // `subscribed` also carries the channel's `offset` and `epoch`.
    assert_eq!(
        (reply["op"].as_str(), reply["channel"].as_str()),
        (Some("subscribed"), Some(channel)),
        "{reply}"
    );
    ws
}

/// Sends a subscribe frame on `ws`; returns the frames that came before the
/// `subscribed` reply (a replay), and the reply.
pub async fn subscribe_frame(
    ws: &mut Ws,
    frame: serde_json::Value,
) -> (Vec<serde_json::Value>, serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        frame.to_string(),
    ))
    .await
    .expect("send subscribe");
    let mut before = Vec::new();
    loop {
        let m = next_json(ws).await;
        if m["op"] == "subscribed" {
            return (before, m);
        }
        before.push(m);
    }
}

/// Every JSON frame until none arrives for `quiet`.
pub async fn until_quiet(ws: &mut Ws, quiet: Duration) -> Vec<serde_json::Value> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(quiet, ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            out.push(serde_json::from_str(&t).expect("JSON frame"));
        }
    }
    out
}

/// Sets the dataflow lease's fence token under `prefix` in the test Redis
/// to `token` (as a takeover moves it on) and returns the fence's key.
pub async fn set_dataflow_fence(prefix: &str, token: i64) -> String {
    let key = format!("{prefix}:lease:dataflow:fence");
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test redis");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(token)
        .query_async(&mut conn)
        .await
        .expect("SET the fence");
    key
}

/// The barrier (event time, ms) of the latest complete dataflow checkpoint
/// in the test Redis under `prefix`, 0 when there is none.
pub async fn checkpoint_barrier(prefix: &str) -> i64 {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test redis");
    let latest: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}:ckpt:dataflow:latest"))
        .query_async(&mut conn)
        .await
        .expect("GET the checkpoint pointer");
    latest
        .and_then(|l| l.split(' ').next().and_then(|b| b.parse().ok()))
        .unwrap_or(0)
}

/// The server's `/metrics` page.
pub async fn metrics_text(server: &Server) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The sum of every sample of the metric family `name` on `/metrics`.
pub async fn metric(server: &Server, name: &str) -> f64 {
    let text = metrics_text(server).await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The external Schema Registry started by the harness (Apicurio Registry's
/// Confluent-compatible API, `http://127.0.0.1:PORT/apis/ccompat/v7`).
pub fn schema_registry_url() -> String {
    required(
        "INKSTREAM_TEST_SCHEMA_REGISTRY_URL",
        "Schema Registry (Apicurio Registry, tests/registry/registry.sh)",
    )
}

/// Waits for a child expected to exit by itself (e.g. `serve` refusing to
/// start), polling until `within` has passed. Returns its exit status and
/// its stderr (when piped; empty otherwise), or `None` — after killing and
/// reaping it — when it was still running at the deadline.
pub async fn exit_within(
    child: &mut Child,
    within: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("the child's stderr");
    }
    Some((status, stderr))
}
