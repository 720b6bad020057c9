//! Test support: builds the upstream Go programs (the stock `remotedialer/server` and our
//! `peer` helper) from the pinned module in `tests/remotedialer-peers`, runs them on free
//! loopback ports, and provides a tiny local HTTP target plus polling helpers; `fake_server` is a
//! scripted server for misbehaviour the upstream one cannot produce.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod fake_server;

use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub struct GoBinaries {
    pub server: PathBuf,
    pub peer: PathBuf,
}

fn peers_module() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/remotedialer-peers")
}

fn cache_dir() -> PathBuf {
    // target/<profile>/deps/<test binary> -> target/<profile>/remotedialer-peers
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .join("remotedialer-peers")
}

fn go_build(output: &Path, package: &str) {
    let result = Command::new("go")
        .args(["build", "-o"])
        .arg(output)
        .arg(package)
        .current_dir(peers_module())
        // Never fetch another toolchain; a too-old `go` must fail here, loudly.
        .env("GOTOOLCHAIN", "local")
        .output();
    match result {
        Err(error) => {
            panic!("cannot run `go` to build {package} (is Go installed and on PATH?): {error}")
        }
        Ok(out) if !out.status.success() => panic!(
            "go build {package} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => {}
    }
}

/// Builds both Go programs once per test process; a file lock keeps parallel test
/// binaries from building into the same files at once. Go's build cache makes repeats cheap.
pub fn go_binaries() -> &'static GoBinaries {
    static BINARIES: OnceLock<GoBinaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).expect("create peer cache dir");
        let lock = std::fs::File::create(dir.join(".build.lock")).expect("create lock file");
        fs4::fs_std::FileExt::lock_exclusive(&lock).expect("lock peer build");
        let binaries = GoBinaries {
            server: dir.join("remotedialer-server"),
            peer: dir.join("peer"),
        };
        go_build(&binaries.server, "github.com/rancher/remotedialer/server");
        go_build(&binaries.peer, "./cmd/peer");
        fs4::fs_std::FileExt::unlock(&lock).expect("unlock peer build");
        binaries
    })
}

/// Kills the child process when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// The unmodified upstream server program (`github.com/rancher/remotedialer/server`).
pub struct UpstreamServer {
    pub port: u16,
    process: Option<ChildGuard>,
}

impl UpstreamServer {
    pub async fn start() -> Self {
        for _ in 0..5 {
            let port = free_port();
            if let Some(process) = Self::launch(port).await {
                return Self {
                    port,
                    process: Some(process),
                };
            }
        }
        panic!("upstream server did not start on any free port");
    }

    /// Starts the server on `port`; `None` if it exited (port taken) or never listened.
    async fn launch(port: u16) -> Option<ChildGuard> {
        let mut child = ChildGuard(
            Command::new(&go_binaries().server)
                .args(["-listen", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn upstream server"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.0.try_wait() {
                return None;
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(child);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts again on the same port (a "server restart").
    pub async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(process) = Self::launch(self.port).await {
                self.process = Some(process);
                return;
            }
        }
        panic!("upstream server did not restart on port {}", self.port);
    }

    pub fn connect_url(&self) -> String {
        format!("ws://127.0.0.1:{}/connect", self.port)
    }

    /// URL that makes the server GET `http://<target>/<path>` through client `id`'s tunnel.
    pub fn client_url(&self, id: &str, target: SocketAddr, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/client/{id}/http/{target}/{path}?timeout=120",
            self.port
        )
    }
}

/// Our Go peer's upload mode: an upstream `remotedialer.Server` that pushes bytes into a
/// client's stream.
pub struct UploadPeer {
    pub port: u16,
    _process: ChildGuard,
}

impl UploadPeer {
    pub async fn start() -> Self {
        let mut child = Command::new(&go_binaries().peer)
            .args(["upload", "-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn peer upload");
        let stdout = child.stdout.take().expect("peer stdout");
        let process = ChildGuard(child);
        let mut lines =
            BufReader::new(tokio::process::ChildStdout::from_std(stdout).expect("async stdout"))
                .lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("peer printed its address in time")
            .expect("read peer stdout")
            .expect("peer stdout line");
        let port = line
            .rsplit(':')
            .next()
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected peer output {line:?}"));
        Self {
            port,
            _process: process,
        }
    }

    pub fn connect_url(&self) -> String {
        format!("ws://127.0.0.1:{}/connect", self.port)
    }
}

/// Byte `i` of the deterministic body served at `/bytes/<n>`.
pub fn body_byte(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(i / 997)) as u8
}

/// Byte `i` of what the Go peer's upload mode sends.
pub fn upload_byte(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i / 4099)) as u8
}

pub fn sha256_of(len: u64, byte: fn(u64) -> u8) -> String {
    let mut hasher = Sha256::new();
    let mut block = Vec::with_capacity(64 << 10);
    let mut i = 0;
    while i < len {
        block.clear();
        let end = (i + (64 << 10)).min(len);
        block.extend((i..end).map(byte));
        hasher.update(&block);
        i = end;
    }
    hex::encode(hasher.finalize())
}

/// A minimal HTTP/1.1 server for GETs (keep-alive supported):
/// `/bytes/<n>` streams n deterministic bytes, anything else echoes the path back.
pub async fn spawn_http_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let address = listener.local_addr().expect("target addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve_http(socket));
        }
    });
    address
}

async fn serve_http(socket: TcpStream) {
    let (reader, mut writer) = socket.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
        let result = if let Some(size) = path.strip_prefix("/bytes/") {
            let size: u64 = size.parse().unwrap_or(0);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
            stream_body(&mut writer, head, size).await
        } else {
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                path.len(),
                path
            );
            writer.write_all(response.as_bytes()).await
        };
        if result.is_err() {
            return;
        }
    }
}

async fn stream_body(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    head: String,
    size: u64,
) -> std::io::Result<()> {
    writer.write_all(head.as_bytes()).await?;
    let mut block = Vec::with_capacity(64 << 10);
    let mut i = 0;
    while i < size {
        block.clear();
        let end = (i + (64 << 10)).min(size);
        block.extend((i..end).map(body_byte));
        writer.write_all(&block).await?;
        i = end;
    }
    Ok(())
}

/// A TCP target that reads `expected` bytes, answers their SHA-256 in hex and closes;
/// reading starts only once `start` resolves, so a test can hold the stream back.
pub async fn spawn_hashing_target<F>(expected: u64, start: F) -> SocketAddr
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let address = listener.local_addr().expect("target addr");
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        start.await;
        let mut hasher = Sha256::new();
        let mut remaining = expected;
        let mut buffer = vec![0u8; 64 << 10];
        while remaining > 0 {
            let want = buffer.len().min(remaining as usize);
            match socket.read(&mut buffer[..want]).await {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    hasher.update(&buffer[..read]);
                    remaining -= read as u64;
                }
            }
        }
        let _ = socket
            .write_all(hex::encode(hasher.finalize()).as_bytes())
            .await;
        // Keep the socket open until the peer closes, so the digest is not raced by EOF.
        let _ = socket.read(&mut buffer).await;
    });
    address
}

/// Polls `check` until it returns `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
