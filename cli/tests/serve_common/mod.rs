//! `muddit serve` started for a test: the real binary on 127.0.0.1 and a free port, with the
//! default model; killed when dropped.

#![allow(dead_code)] // each test binary uses a part

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Reads the lines of `stream` on a thread of its own, each through `pick`: what it picks
/// comes out of the receiver, in order.
pub fn read_lines<T: Send + 'static>(
    stream: impl Read + Send + 'static,
    pick: impl Fn(String) -> Option<T> + Send + 'static,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(item) = pick(line) {
                let _ = tx.send(item);
            }
        }
    });
    rx
}

pub struct Server {
    child: Child,
    pub url: String,
    /// The stderr lines so far (the per-request log).
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `muddit serve --port 0 ARGS`, once it listens (at most 120 s).
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_muddit"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env_remove("MUDDIT_MODEL")
            .env(
                "XDG_CACHE_HOME",
                concat!(env!("CARGO_TARGET_TMPDIR"), "/cache"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn muddit serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        read_lines(child.stderr.take().expect("stderr"), move |line| {
            lines.lock().expect("log").push(line);
            None::<String>
        });
        let stdout = read_lines(child.stdout.take().expect("stdout"), Some);
        let line = stdout
            .recv_timeout(Duration::from_secs(120))
            .expect("the server prints its address within 120 s");
        let url = line
            .strip_prefix("muddit serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, url, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// The first stderr line `wanted` accepts, waiting at most 2 s for the reader to see it.
    pub fn log_line(&self, wanted: impl Fn(&str) -> bool) -> Option<String> {
        (0..40).find_map(|_| {
            let found = self.log().into_iter().find(|l| wanted(l));
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            found
        })
    }

    /// Sends `signal` (`TERM`, `INT`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The exit status, waiting at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The value of an unlabelled metric (or one with exactly `labels`) in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .expect("GET /metrics")
            .text()
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// Sends `request`: (status, JSON answer).
pub fn send(request: reqwest::blocking::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().expect("a response");
    let status = response.status().as_u16();
    (status, response.json().expect("a JSON answer"))
}

/// POSTs `body` as JSON: (status, JSON answer).
pub fn post(server: &Server, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    send(client().post(server.url(path)).json(body))
}
