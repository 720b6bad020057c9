//! Benchmark client used by `bench/remotedialer/run.sh`: opens N tunnel sessions in one
//! process (header `x-tunnel-id: <prefix><i>`), dialing every Connect as TCP.
//!
//! Protocol with the driver: print `baseline` once the runtime is up, wait for a line on stdin
//! (the driver samples RSS in between), connect, print `ready` once all N sessions are
//! connected, and exit when stdin closes.

use remotedialer::{spawn_client, ClientConfig, DialTcp, Metrics};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

fn argument(name: &str) -> Option<String> {
    let mut args = std::env::args();
    while let Some(arg) = args.next() {
        if arg == name {
            return args.next();
        }
    }
    None
}

#[tokio::main]
async fn main() {
    let url = argument("--url").unwrap_or_else(|| "ws://127.0.0.1:8123/connect".into());
    let sessions: usize = argument("--sessions")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let prefix = argument("--prefix").unwrap_or_else(|| "bench-".into());

    println!("baseline");
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut go = String::new();
    let _ = stdin.read_line(&mut go).await;
    let metrics = Arc::new(Metrics::new());
    let router = Arc::new(DialTcp);
    let handles: Vec<_> = (0..sessions)
        .map(|i| {
            let config =
                ClientConfig::new(url.clone()).header("x-tunnel-id", format!("{prefix}{i}"));
            spawn_client(config, router.clone(), metrics.clone())
        })
        .collect();
    while metrics.snapshot().sessions_active < sessions as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready");

    // Stay up until the driver closes our stdin.
    let mut sink = Vec::new();
    let _ = stdin.read_to_end(&mut sink).await;
    for handle in handles {
        handle.shutdown().await;
    }
}
