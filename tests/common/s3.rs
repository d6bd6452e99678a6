//! A real S3 server on loopback for the remote-store tests: the one `.ci/run` started (its
//! `SQUIRREL_S3_*` variables), or else one this test binary starts through `.ci/s3-server.sh`
//! (which installs moto if needed), watched so it exits with this process.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use squirrel_store::remote::RemoteOptions;

/// An S3 server's address and credentials.
#[derive(Debug, Clone)]
pub struct Server {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub key_id: String,
    pub secret: String,
    pub pid: u32,
    /// The state directory of a server this process started (stopped on drop when private).
    state: Option<std::path::PathBuf>,
    private: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let (true, Some(dir)) = (self.private, &self.state) {
            let _ = Command::new("bash")
                .arg(script())
                .args(["stop", &dir.to_string_lossy()])
                .status();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/s3-server.sh")
}

fn from_exports(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn build(
    vars: &std::collections::HashMap<String, String>,
    state: Option<std::path::PathBuf>,
    private: bool,
) -> Server {
    let get = |k: &str| {
        vars.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} not set by the S3 server"))
    };
    Server {
        endpoint: get("SQUIRREL_S3_ENDPOINT"),
        bucket: get("SQUIRREL_S3_BUCKET"),
        region: get("SQUIRREL_S3_REGION"),
        key_id: get("SQUIRREL_S3_ACCESS_KEY_ID"),
        secret: get("SQUIRREL_S3_SECRET_ACCESS_KEY"),
        pid: get("SQUIRREL_S3_PID").parse().expect("a pid"),
        state,
        private,
    }
}

/// Starts a server of this process's own.
pub fn start(private: bool) -> Server {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "squirrel-s3-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let out = Command::new("bash")
        .arg(script())
        .args([
            "start",
            &dir.to_string_lossy(),
            &std::process::id().to_string(),
        ])
        .output()
        .expect("runs .ci/s3-server.sh");
    assert!(
        out.status.success(),
        "the S3 server did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    build(
        &from_exports(&String::from_utf8_lossy(&out.stdout)),
        Some(dir),
        private,
    )
}

/// The server shared by the tests of this binary.
pub fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let vars: std::collections::HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("SQUIRREL_S3_"))
            .collect();
        if vars.contains_key("SQUIRREL_S3_ENDPOINT") {
            build(&vars, None, false)
        } else {
            start(false)
        }
    })
}

impl Server {
    /// Options that reach this server with its credentials, short timeouts and quick retries.
    pub fn opts(&self) -> RemoteOptions {
        RemoteOptions::new()
            .option("aws_endpoint", &self.endpoint)
            .option("aws_allow_http", "true")
            .option("aws_access_key_id", &self.key_id)
            .option("aws_secret_access_key", &self.secret)
            .option("aws_region", &self.region)
            .timeout(Duration::from_secs(20))
            .retries(2)
            .backoff(Duration::from_millis(20))
    }

    /// A fresh `s3://` URL for one test.
    pub fn url(&self, name: &str) -> String {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!(
            "s3://{}/{name}-{}-{nanos}-{}",
            self.bucket,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The environment variables a client (the CLI, say) reads to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", self.region.clone()),
        ]
    }

    /// A raw object_store client on the bucket, to damage objects behind a store's back.
    pub fn raw(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_region(&self.region)
            .build()
            .expect("a client")
    }
}

/// Runs a future to completion on a runtime of its own (for the raw client).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// What a [`Proxy`] does to the traffic it forwards.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Closes a connection once it has forwarded this many response bytes, for the first
    /// `times` connections that get that far (`usize::MAX`: every one).
    CutAfter { bytes: usize, times: usize },
    /// Accepts connections, reads requests, never answers.
    Silent,
}

/// A TCP proxy on loopback in front of a server, misbehaving as told. Stops when dropped.
pub struct Proxy {
    pub endpoint: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    addr: std::net::SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: &str, fault: Fault) -> Proxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let cuts = Arc::new(AtomicUsize::new(0));
        let cuts_seen = cuts.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                match fault {
                    Fault::Silent => held.push(client),
                    Fault::CutAfter { bytes, times } => {
                        let Ok(server) = TcpStream::connect(&upstream) else {
                            continue;
                        };
                        let (mut c_read, mut s_write) = (
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        );
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut c_read, &mut s_write);
                            let _ = s_write.shutdown(Shutdown::Write);
                        });
                        let cuts = cuts.clone();
                        let (mut s_read, mut c_write) = (server, client);
                        std::thread::spawn(move || {
                            let mut sent = 0usize;
                            let mut buf = [0u8; 16 << 10];
                            let mut armed = true;
                            loop {
                                let n = match s_read.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if armed && sent + n > bytes {
                                    if cuts.fetch_add(1, Ordering::SeqCst) < times {
                                        let _ =
                                            c_write.write_all(&buf[..bytes.saturating_sub(sent)]);
                                        break;
                                    }
                                    armed = false;
                                }
                                if c_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                sent += n;
                            }
                            let _ = c_write.shutdown(Shutdown::Both);
                            let _ = s_read.shutdown(Shutdown::Both);
                        });
                    }
                }
            }
            drop(held);
        });
        Proxy {
            endpoint: format!("http://{addr}"),
            stop,
            cuts: cuts_seen,
            addr,
            thread: Some(thread),
        }
    }
}

impl Proxy {
    /// Connections that reached the cut point so far (the first `times` of them were cut).
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
