//! The page at `GET /` in headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: type a prompt, see two images, caption one of them and ask about it, see an error
//! shown for a blank prompt. A screenshot is kept as `target/tmp/serve-page.png`.
//!
//! Without Chromium the test says so and passes, unless `CI` or `MUDDIT_REQUIRE_CHROMIUM` is set
//! (`.ci/run` installs it).

mod serve_common;

use serde_json::{json, Value};
use serve_common::{read_lines, Server};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tungstenite::{Message, WebSocket};

/// A headless Chromium, killed when dropped.
struct Browser {
    child: Child,
    /// `ws://127.0.0.1:PORT/devtools/browser/...`
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|name| {
        Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn launch(binary: &str) -> Browser {
    let profile = tempfile::tempdir().expect("profile folder");
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .args([
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=900,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let address = read_lines(child.stderr.take().expect("stderr"), |line| {
        let ws = line.strip_prefix("DevTools listening on ")?;
        Some(ws.to_string())
    });
    let devtools = address
        .recv_timeout(Duration::from_secs(60))
        .expect("chromium's DevTools address within 60 s");
    Browser {
        child,
        devtools,
        _profile: profile,
    }
}

/// One DevTools session on a page: commands answered in order, events skipped.
struct Page {
    socket: WebSocket<TcpStream>,
    next_id: u64,
}

impl Page {
    /// The browser's first page, through its `/json/list`.
    fn open(browser: &Browser) -> Page {
        let host = browser
            .devtools
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host");
        let list: Value = serve_common::client()
            .get(format!("http://{host}/json/list"))
            .send()
            .expect("DevTools list")
            .json()
            .expect("JSON");
        let ws = list
            .as_array()
            .expect("targets")
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let stream = TcpStream::connect(host).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let (socket, _) = tungstenite::client(ws.as_str(), stream).expect("websocket");
        Page { socket, next_id: 1 }
    }

    /// `method(params)`: its result, or the error DevTools answered.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(command.to_string()))
            .expect("send");
        loop {
            let Message::Text(text) = self.socket.read().expect("a DevTools message") else {
                continue;
            };
            let message: Value = serde_json::from_str(&text).expect("JSON");
            if message["id"] == id {
                return match message["error"].is_null() {
                    true => Ok(message["result"].clone()),
                    false => Err(message),
                };
            }
        }
    }

    /// Loads `url` and waits (at most 20 s) until it has loaded.
    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }))
            .expect("Page.navigate");
        let check = json!({ "expression": "document.readyState + ' ' + location.href", "returnByValue": true });
        for _ in 0..200 {
            // A context destroyed by the load in progress is an error answer: try again.
            let state = self.call("Runtime.evaluate", check.clone()).ok();
            let text = state.as_ref().and_then(|s| s["result"]["value"].as_str());
            if text.is_some_and(|t| t.starts_with("complete ") && t.ends_with(url)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{url} did not load within 20 s");
    }

    /// Runs an async JS function body and returns its value.
    fn run(&mut self, body: &str) -> Value {
        let expression = format!("(async () => {{ {HELPERS} {body} }})()");
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .expect("Runtime.evaluate");
        assert!(result["exceptionDetails"].is_null(), "{result}");
        result["result"]["value"].clone()
    }
}

/// `$`, and `until(f, ms)` polling `f` every 50 ms.
const HELPERS: &str = r##"
const $ = (id) => document.getElementById(id);
const until = async (f, ms) => {
  const t0 = Date.now();
  while (!f()) {
    if (Date.now() - t0 > ms) throw new Error("timed out waiting for " + f);
    await new Promise((r) => setTimeout(r, 50));
  }
};
const settled = (id) => () => $(id).textContent !== "" && !$(id).textContent.endsWith("…");
"##;

#[test]
fn the_page_generates_captions_and_answers_in_chromium() {
    let Some(binary) = chromium() else {
        let required = std::env::var_os("CI").is_some()
            || std::env::var_os("MUDDIT_REQUIRE_CHROMIUM").is_some();
        assert!(
            !required,
            "chromium is not installed (apt-get install chromium)"
        );
        eprintln!("skipped: no chromium on this machine (apt-get install chromium)");
        return;
    };
    let server = Server::start(&[]);
    let browser = launch(binary);
    let mut page = Page::open(&browser);
    page.navigate(&server.url("/"));

    let generated = page.run(
        r##"
        await until(() => $("model") && $("model").textContent !== "…", 20000);
        $("prompt").value = "a blue square at the top";
        $("n").value = "2";
        $("generate").click();
        await until(settled("t2i-status"), 120000);
        const imgs = [...document.querySelectorAll("#images img")];
        await until(() => imgs.every((i) => i.complete), 10000);
        return { model: $("model").textContent, status: $("t2i-status").textContent,
                 failed: $("t2i-status").className === "error",
                 sizes: imgs.map((i) => [i.naturalWidth, i.naturalHeight]) };
        "##,
    );
    assert_eq!(generated["model"], "shapes-64", "{generated}");
    assert_eq!(generated["failed"], false, "{generated}");
    assert!(
        generated["status"]
            .as_str()
            .expect("text")
            .starts_with("seed "),
        "{generated}"
    );
    assert_eq!(
        generated["sizes"],
        json!([[64, 64], [64, 64]]),
        "{generated}"
    );

    let read = page.run(
        r##"
        const blob = await (await fetch(document.querySelector("#images img").src)).blob();
        const files = new DataTransfer();
        files.items.add(new File([blob], "generated.png", { type: "image/png" }));
        $("file").files = files.files;
        $("file").dispatchEvent(new Event("change"));
        $("caption").click();
        await until(settled("i2t-status"), 120000);
        const caption = [$("i2t-status").textContent, $("i2t-status").className];
        $("ask").click();
        await until(settled("i2t-status"), 120000);
        const answer = [$("i2t-status").textContent, $("i2t-status").className];
        return { caption, answer };
        "##,
    );
    println!("page: {generated} {read}");
    for key in ["caption", "answer"] {
        assert_eq!(read[key][1], "", "{key} shown as an error: {read}");
        assert!(!read[key][0].as_str().expect("text").is_empty(), "{read}");
    }
    let screenshot = page
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .expect("Page.captureScreenshot");
    let blank = page.run(
        r##"
        $("prompt").value = " ";
        $("generate").click();
        await until(settled("t2i-status"), 20000);
        return [$("t2i-status").textContent, $("t2i-status").className];
        "##,
    );
    assert_eq!(
        blank[1], "error",
        "a refused prompt is shown as an error: {blank}"
    );
    assert!(
        blank[0].as_str().expect("text").contains("empty"),
        "{blank}"
    );

    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot["data"].as_str().expect("data"))
        .expect("base64");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    std::fs::write(&path, png).expect("write the screenshot");
    println!("screenshot: {}", path.display());
}
