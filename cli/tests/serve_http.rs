//! `muddit serve` end to end over HTTP: every route, every error class, concurrency and
//! batching, cancellation, timeouts, the queue bound and SIGTERM. The real binary with the
//! default model, on 127.0.0.1 and a free port.

mod common;
mod serve_common;

use base64::Engine as _;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};
use serve_common::{client, post, send, Server};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GENERATIONS: &str = "/v1/images/generations";
const EDITS: &str = "/v1/images/edits";

fn eval_image(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/shapes-eval/images")
        .join(name)
}

/// The PNGs of a generation answer: (RGB bytes, the stored parameters as JSON).
fn images(answer: &Value) -> Vec<(Vec<u8>, Value)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    answer["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            let bytes = b64
                .decode(d["b64_json"].as_str().expect("b64_json"))
                .expect("base64");
            let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
            let mut reader = decoder.read_info().expect("a PNG");
            let params = reader
                .info()
                .utf8_text
                .iter()
                .find(|c| c.keyword == "muddit-parameters")
                .expect("the CLI's parameter chunk")
                .get_text()
                .expect("text");
            let mut rgb = vec![0; reader.output_buffer_size().expect("size")];
            reader.next_frame(&mut rgb).expect("pixels");
            (rgb, serde_json::from_str(&params).expect("JSON parameters"))
        })
        .collect()
}

/// The error object of a refusal, checked for the shape every error has.
fn error(status: u16, answer: &Value, want_status: u16) -> &Value {
    assert_eq!(status, want_status, "{answer}");
    let e = &answer["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
    e
}

fn refused_field(server: &Server, path: &str, body: Value, field: &str) {
    let (status, answer) = post(server, path, &body);
    let e = error(status, &answer, 400);
    assert_eq!(e["param"], field, "{body} -> {answer}");
}

/// A POST written on a bare socket (the server may answer and close before the whole body is
/// sent, as it does for bodies over the limit): (status, JSON answer).
fn raw_post(server: &Server, path: &str, header: &str, body: &[u8]) -> (u16, Value) {
    raw_post_as(server, path, "application/json", header, body)
}

/// [`raw_post`] with another Content-Type.
fn raw_post_as(
    server: &Server,
    path: &str,
    content_type: &str,
    header: &str,
    body: &[u8],
) -> (u16, Value) {
    use std::io::{Read, Write};
    let host = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {content_type}\r\n{header}\r\nconnection: close\r\n\r\n"
    );
    let mut writer = stream.try_clone().expect("clone");
    let body = body.to_vec();
    // Write errors are expected once the server has refused the body.
    std::thread::spawn(move || {
        writer
            .write_all(head.as_bytes())
            .and_then(|_| writer.write_all(&body))
    });
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let json = text.split_once("\r\n\r\n").expect("a body").1;
    (
        status,
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

#[test]
fn every_get_route_answers() {
    let server = Server::start(&[]);
    let c = client();
    let (_, health) = send(c.get(server.url("/health")));
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], "shapes-64");
    let (_, models) = send(c.get(server.url("/v1/models")));
    assert_eq!(models["data"][0]["id"], "shapes-64");
    let page = c.get(server.url("/")).send().expect("page");
    assert!(page.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    let html = page.text().expect("html");
    assert!(
        html.contains("/v1/images/generations") && !html.contains("://"),
        "a page with no CDN"
    );
    let (status, _) = post(
        &server,
        GENERATIONS,
        &json!({ "prompt": "a red circle in the center" }),
    );
    assert_eq!(status, 200);
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    for want in [
        "muddit_requests_total{route=\"/v1/images/generations\",status=\"200\"} 1",
        "muddit_images_generated_total 1",
        "muddit_queue_depth 0",
        "muddit_stage_seconds_total{stage=\"transformer\"}",
    ] {
        assert!(metrics.contains(want), "{want} missing from\n{metrics}");
    }
    let is_generation =
        |l: &str| serde_json::from_str::<Value>(l).is_ok_and(|v| v["route"] == GENERATIONS);
    let line = server.log_line(is_generation);
    let line: Value = serde_json::from_str(
        &line.unwrap_or_else(|| panic!("no log line for the generation in {:?}", server.log())),
    )
    .expect("JSON");
    assert_eq!(line["status"], 200);
    assert!(line["queue_wait_ms"].is_number() && line["run_ms"].as_f64().is_some_and(|t| t > 0.0));
}

/// OpenAI's shape; with a seed the PNGs are `muddit t2i`'s, bit for bit, metadata included.
#[test]
fn generations_are_the_cli_images_with_its_metadata() {
    let server = Server::start(&[]);
    let prompt = "a blue square at the top";
    let (status, answer) = post(
        &server,
        GENERATIONS,
        &json!({ "prompt": prompt, "n": 2, "size": "64x64", "response_format": "b64_json",
                 "model": "dall-e-2", "seed": 7 }),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "shapes-64");
    assert_eq!(answer["seed"], 7);
    let served = images(&answer);
    assert_eq!(served.len(), 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = common::muddit(
        &[
            "t2i",
            "--prompt",
            prompt,
            "--batch",
            "2",
            "--seed",
            "7",
            "-q",
            "-o",
            "img-%d.png",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    for (i, (rgb, params)) in served.iter().enumerate() {
        let cli = std::fs::read(dir.path().join(format!("img-{i}.png"))).expect("CLI image");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&cli);
        let (cli_rgb, cli_params) = images(&json!({ "data": [{ "b64_json": b64 }] })).remove(0);
        assert_eq!(params, &cli_params, "image {i}: the same parameters");
        assert!(
            rgb == &cli_rgb,
            "image {i}: the pixels of `muddit t2i --seed 7`"
        );
        assert_eq!(params["index"], i);
    }
    assert!(served[0].0 != served[1].0, "two draws of one prompt differ");
}

#[test]
fn malformed_requests_name_their_field_and_the_server_stays_healthy() {
    let server = Server::start(&["--max-body", "200000"]);
    let gen = |extra: Value| {
        let mut body = json!({ "prompt": "a red circle" });
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        body
    };
    refused_field(&server, GENERATIONS, json!({ "n": 1 }), "prompt");
    refused_field(&server, GENERATIONS, gen(json!({ "n": "two" })), "n");
    refused_field(&server, GENERATIONS, gen(json!({ "n": 0 })), "n");
    refused_field(&server, GENERATIONS, gen(json!({ "n": 257 })), "n");
    refused_field(
        &server,
        GENERATIONS,
        gen(json!({ "colour": "red" })),
        "colour",
    );
    refused_field(&server, GENERATIONS, gen(json!({ "size": "big" })), "size");
    refused_field(
        &server,
        GENERATIONS,
        gen(json!({ "size": "60x60" })),
        "size",
    );
    refused_field(
        &server,
        GENERATIONS,
        gen(json!({ "size": "99999x64" })),
        "size",
    );
    refused_field(&server, GENERATIONS, gen(json!({ "steps": 0 })), "steps");
    refused_field(&server, GENERATIONS, gen(json!({ "cfg": -1.0 })), "cfg");
    refused_field(
        &server,
        GENERATIONS,
        gen(json!({ "response_format": "url" })),
        "response_format",
    );
    refused_field(&server, GENERATIONS, json!({ "prompt": "  " }), "prompt");
    refused_field(
        &server,
        GENERATIONS,
        json!({ "prompt": "x".repeat(5000) }),
        "prompt",
    );
    refused_field(
        &server,
        "/v1/captions",
        json!({ "image": "not base64!" }),
        "image",
    );
    refused_field(
        &server,
        "/v1/captions",
        json!({ "image": "aGVsbG8=" }),
        "image",
    );
    refused_field(
        &server,
        "/v1/captions",
        json!({ "image": "", "question": "?" }),
        "question",
    );
    refused_field(
        &server,
        "/v1/vqa",
        json!({ "image": "aGVsbG8=" }),
        "question",
    );
    // Not JSON at all.
    let request = client()
        .post(server.url(GENERATIONS))
        .header("content-type", "application/json")
        .body("{\"prompt\": ");
    let (status, body) = send(request);
    assert_eq!(error(status, &body, 400)["param"], "body");
    // A multipart field nobody asked for, and a broken image file.
    let unknown = Form::new().text("colour", "red");
    let broken = Form::new().part("image", Part::bytes(b"\x89PNG\r\n\x1a\nbroken".to_vec()));
    for (form, field) in [(unknown, "colour"), (broken, "image")] {
        let (status, body) = send(client().post(server.url("/v1/captions")).multipart(form));
        assert_eq!(error(status, &body, 400)["param"], field);
    }
    // Too large: announced by Content-Length, and found while reading a chunked body.
    let big = vec![b'A'; 300_000];
    let (status, answer) = raw_post(&server, "/v1/captions", "content-length: 300000", &big);
    assert_eq!(error(status, &answer, 413)["code"], "body_too_large");
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, answer) = raw_post(&server, GENERATIONS, "transfer-encoding: chunked", &chunked);
    assert_eq!(error(status, &answer, 413)["code"], "body_too_large");
    // Routes and methods that do not exist.
    let (status, body) = send(client().get(server.url("/v2/nothing")));
    error(status, &body, 404);
    let (status, body) = send(client().get(server.url(GENERATIONS)));
    error(status, &body, 405);
    // Edits: each input named.
    let b64 = base64::engine::general_purpose::STANDARD;
    let image = b64.encode(std::fs::read(eval_image("000.png")).expect("eval image"));
    let black = {
        let mut png = Vec::new();
        image::GrayImage::new(64, 64)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("png");
        b64.encode(png)
    };
    let edit = |extra: Value| {
        let mut body = json!({ "prompt": "a red circle", "image": image });
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        body
    };
    let cases = [
        (json!({ "prompt": "x" }), "image"),
        (json!({ "image": image }), "prompt"),
        (edit(json!({ "image": "not base64!" })), "image"),
        (edit(json!({ "image": "aGVsbG8=" })), "image"),
        (edit(json!({ "mask": black })), "mask"),
        (edit(json!({ "strength": 1.5 })), "strength"),
        (edit(json!({ "outpaint": "1,2" })), "outpaint"),
        (
            edit(json!({ "outpaint": "18446744073709551552,0,64,0" })),
            "outpaint",
        ),
        (edit(json!({ "outpaint": "4096,0,0,0" })), "outpaint"),
        (
            edit(json!({ "keep_unmasked_pixels": true })),
            "keep_unmasked_pixels",
        ),
        (
            edit(json!({ "outpaint": "0,0,32,0", "mask_blur": -1 })),
            "mask_blur",
        ),
        (
            edit(json!({ "outpaint": "32,0,32,0", "size": "64x64" })),
            "size",
        ),
        (edit(json!({ "colour": "red" })), "colour"),
    ];
    for (body, field) in cases {
        refused_field(&server, EDITS, body, field);
    }
    let unknown = Form::new()
        .part("image", Part::bytes(b"x".to_vec()))
        .text("colour", "red");
    let (status, body) = send(client().post(server.url(EDITS)).multipart(unknown));
    assert_eq!(error(status, &body, 400)["param"], "colour");

    let (status, answer) = post(&server, GENERATIONS, &gen(json!({ "n": 1 })));
    assert_eq!(status, 200, "still serving after the refusals: {answer}");
}

#[test]
fn captions_and_answers_are_the_cli_ones_as_json_and_multipart() {
    let server = Server::start(&[]);
    let path = eval_image("000.png");
    let cwd = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cli_caption = common::stdout(&common::muddit(
        &["caption", "-q", path.to_str().expect("utf-8")],
        cwd,
    ));
    let question = "what color is the triangle?";
    let cli_answer = common::stdout(&common::muddit(
        &[
            "vqa",
            "-q",
            "--question",
            question,
            path.to_str().expect("utf-8"),
        ],
        cwd,
    ));
    let bytes = std::fs::read(&path).expect("eval image");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);

    let (status, answer) = post(&server, "/v1/captions", &json!({ "image": b64 }));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["text"].as_str(), Some(cli_caption.trim()));
    let data_url = format!("data:image/png;base64,{b64}");
    let (status, answer) = post(
        &server,
        "/v1/vqa",
        &json!({ "image": data_url, "question": question }),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["answer"].as_str(), Some(cli_answer.trim()));
    println!(
        "caption {:?} (truth: a red triangle in the center), answer {:?} (truth: red)",
        cli_caption.trim(),
        cli_answer.trim()
    );

    let form = Form::new()
        .part("image", Part::bytes(bytes).file_name("000.png"))
        .text("question", question);
    let (status, body) = send(client().post(server.url("/v1/vqa")).multipart(form));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["answer"].as_str(), Some(cli_answer.trim()));
}

/// OpenAI's edit form (image and mask files, the mask's transparent part edited) gives the
/// PNG `muddit t2i -i --mask` gives with the same seed; an outpainting in JSON keeps the
/// input's pixels.
#[test]
fn edits_are_the_cli_edits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    common::edit_inputs(dir);
    let prompt = "a green square to the left of a blue circle";
    let o = common::muddit(
        &[
            "t2i", "-i", "in.png", "--mask", "mask.png", "--prompt", prompt, "--seed", "5",
            "--steps", "8", "-o", "cli.png", "-q",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let cli = image::open(dir.join("cli.png")).expect("png").to_rgb8();

    let server = Server::start(&[]);
    // The mask as OpenAI's clients send it: opaque where kept, transparent where edited.
    let transparent = image::RgbaImage::from_fn(64, 64, |x, _| {
        image::Rgba([0, 0, 0, if x < 32 { 0 } else { 255 }])
    });
    let mut mask = Vec::new();
    transparent
        .write_to(
            &mut std::io::Cursor::new(&mut mask),
            image::ImageFormat::Png,
        )
        .expect("png");
    let input = std::fs::read(dir.join("in.png")).expect("in.png");
    let form = Form::new()
        .part("image", Part::bytes(input.clone()).file_name("in.png"))
        .part("mask", Part::bytes(mask).file_name("mask.png"))
        .text("prompt", prompt)
        .text("model", "dall-e-2")
        .text("seed", "5")
        .text("steps", "8");
    let (status, answer) = send(client().post(server.url(EDITS)).multipart(form));
    assert_eq!(status, 200, "{answer}");
    let served = images(&answer);
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].0, cli.into_raw(), "the CLI's pixels");
    let edit = &served[0].1["edit"];
    assert_eq!(edit["init_image"], "in.png");
    assert_eq!(edit["strength"], 1.0);
    assert_eq!(edit["keep_unmasked_pixels"], true);

    // JSON, outpainting the 32 px crop back to 64 px: the crop's pixels come back exactly.
    let b64 = base64::engine::general_purpose::STANDARD;
    let crop = std::fs::read(dir.join("crop.png")).expect("crop.png");
    let body = json!({ "prompt": prompt, "image": b64.encode(&crop), "outpaint": "0,0,32,0",
                       "n": 2, "greedy": true });
    let (status, answer) = post(&server, EDITS, &body);
    assert_eq!(status, 200, "{answer}");
    let served = images(&answer);
    assert_eq!(served.len(), 2);
    let crop = image::load_from_memory(&crop).expect("crop").to_rgb8();
    for (rgb, params) in &served {
        assert_eq!(
            (params["width"].as_u64(), params["height"].as_u64()),
            (Some(64), Some(64))
        );
        assert_eq!(params["edit"]["outpaint"], json!([0, 0, 32, 0]));
        for (x, y, p) in crop.enumerate_pixels() {
            let at = ((y * 64 + x) * 3) as usize;
            assert_eq!(&rgb[at..at + 3], &p.0, "pixel {x},{y}");
        }
    }
}

/// Concurrent greedy requests: every one answered, each with its own prompt's image (equal to
/// the image of the same request run alone, though most ran in shared batches).
#[test]
fn concurrent_requests_are_batched_and_each_gets_its_own_image() {
    let server = Server::start(&["--max-batch", "4"]);
    let prompts = [
        "a red circle at the top",
        "a green square at the bottom",
        "a yellow triangle on the left",
    ];
    let alone: Vec<Vec<u8>> = prompts
        .iter()
        .map(|p| {
            let (status, answer) = post(
                &server,
                GENERATIONS,
                &json!({ "prompt": p, "greedy": true }),
            );
            assert_eq!(status, 200, "{answer}");
            images(&answer).remove(0).0
        })
        .collect();
    assert!(
        alone[0] != alone[1] && alone[1] != alone[2],
        "different prompts, different images"
    );
    let batches_before = server.metric("muddit_batches_total");
    let requests = 12;
    let answers: Vec<(usize, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..requests)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let body = json!({ "prompt": prompts[i % 3], "greedy": true });
                    let (status, answer) = post(server, GENERATIONS, &body);
                    (i, status, answer)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (i, status, answer) in &answers {
        assert_eq!(*status, 200, "request {i}: {answer}");
        let (rgb, params) = images(answer).remove(0);
        let index = params["index"].as_u64().expect("index") as usize;
        assert_eq!(
            params["prompts"][index],
            prompts[i % 3],
            "request {i}: its own prompt"
        );
        assert!(
            rgb == alone[i % 3],
            "request {i}: the image of its prompt run alone"
        );
    }
    let batches = server.metric("muddit_batches_total") - batches_before;
    println!("{requests} requests in {batches} model batches");
    assert!(batches < requests as f64, "waiting requests share batches");
}

/// A request whose client gives up while it waits is never run.
#[test]
fn a_disconnected_client_cancels_its_queued_work() {
    let server = Server::start(&["--max-batch", "1"]);
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            post(
                &server,
                GENERATIONS,
                &json!({ "prompt": "a red circle", "steps": 300, "size": "128x128", "seed": 1 }),
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        let impatient = reqwest::blocking::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .expect("client");
        let gone = impatient
            .post(server.url(GENERATIONS))
            .json(&json!({ "prompt": "a blue square", "n": 3, "seed": 2 }))
            .send();
        assert!(
            gone.is_err(),
            "the client timed out while the request waited"
        );
        let (status, answer) = slow.join().expect("thread");
        assert_eq!(status, 200, "{answer}");
    });
    // The worker drops the cancelled job when it next looks at the queue.
    let (status, _) = post(&server, GENERATIONS, &json!({ "prompt": "a green circle" }));
    assert_eq!(status, 200);
    assert_eq!(server.metric("muddit_requests_cancelled_total"), 1.0);
    assert_eq!(
        server.metric("muddit_images_generated_total"),
        2.0,
        "the 3 images of the gone client were never made"
    );
    // The gone client's request is logged and counted as 499 (client closed request).
    let closed = server.log_line(|l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["route"] == GENERATIONS && v["status"] == 499)
    });
    assert!(closed.is_some(), "no 499 line in {:?}", server.log());
    assert_eq!(
        server.metric("muddit_requests_total{route=\"/v1/images/generations\",status=\"499\"}"),
        1.0
    );
}

#[test]
fn a_request_past_its_timeout_gets_504_and_a_full_queue_429() {
    let server = Server::start(&["--max-batch", "1", "--queue", "1", "--request-timeout", "1"]);
    let slow = json!({ "prompt": "a red circle", "steps": 400, "size": "128x128", "seed": 1 });
    let answers: Vec<(u16, Value, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (server, slow) = (&server, &slow);
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(100 * i));
                    let r = client()
                        .post(server.url(GENERATIONS))
                        .json(slow)
                        .send()
                        .expect("POST");
                    let retry = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().expect("ascii").to_string());
                    (r.status().as_u16(), r.json().expect("JSON"), retry)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    println!("statuses {statuses:?}");
    // One runs (past its 1 s: 504), one waits (504), the others find the queue full.
    assert!(
        statuses.iter().filter(|&&s| s == 429).count() >= 1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|&&s| s == 504).count() >= 1,
        "{statuses:?}"
    );
    for (status, answer, retry) in &answers {
        error(*status, answer, *status);
        if *status == 429 {
            let seconds: u64 = retry
                .as_deref()
                .expect("Retry-After")
                .parse()
                .expect("seconds");
            assert!(seconds >= 1);
        }
    }
    let health = client().get(server.url("/health")).send().expect("health");
    assert_eq!(health.status().as_u16(), 200);
}

/// SIGTERM: no new connections, the request in flight answered, exit 0 within 10 s.
#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_0() {
    let mut server = Server::start(&[]);
    let url = server.url("/health");
    let (status, answer) = std::thread::scope(|s| {
        let running = s.spawn(|| {
            post(
                &server,
                GENERATIONS,
                &json!({ "prompt": "a red circle", "steps": 100, "size": "128x128" }),
            )
        });
        std::thread::sleep(Duration::from_millis(400));
        server.signal("TERM");
        running.join().expect("thread")
    });
    assert_eq!(status, 200, "the request in flight is answered: {answer}");
    let start = Instant::now();
    let exit = server
        .wait(Duration::from_secs(10))
        .expect("the server stops within 10 s");
    assert!(exit.success(), "exit status {exit:?}");
    println!(
        "stopped {:.2} s after the answer",
        start.elapsed().as_secs_f64()
    );
    assert!(
        client().get(url).send().is_err(),
        "nothing listens any more"
    );
}

#[test]
fn sigint_stops_an_idle_server_with_exit_0() {
    let mut server = Server::start(&[]);
    server.signal("INT");
    let exit = server
        .wait(Duration::from_secs(10))
        .expect("the server stops within 10 s");
    assert!(exit.success(), "exit status {exit:?}");
    let said = server.log_line(|l| l.contains("muddit serve: stopped"));
    assert!(said.is_some(), "{:?}", server.log());
}

/// `body` as one chunk of a chunked transfer.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

/// A multipart form with one file part `image` of `bytes`: (Content-Type, body).
fn image_form(bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "muddit-test-boundary";
    let mut body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"image\"; filename=\"big.bin\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A chunked multipart body over `--max-body` is 413 on every multipart route, as a body that
/// announces its length.
#[test]
fn a_chunked_multipart_body_over_the_limit_gets_413() {
    let server = Server::start(&["--max-body", "200000"]);
    let (content_type, form) = image_form(&vec![0; 300_000]);
    for path in ["/v1/captions", "/v1/vqa", EDITS] {
        let (status, answer) = raw_post_as(
            &server,
            path,
            &content_type,
            "transfer-encoding: chunked",
            &chunked(&form),
        );
        assert_eq!(
            error(status, &answer, 413)["code"],
            "body_too_large",
            "{path}"
        );
    }
}

/// Large uploads are decoded off the runtime's threads: `/health` answers at once while three
/// 16384 x 16384 PNGs decode.
#[test]
fn health_answers_while_large_uploads_decode() {
    let mut png = Vec::new();
    image::GrayImage::new(16384, 16384)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    let server = Server::start(&[]);
    let answered = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let uploads: Vec<_> = (0..3)
            .map(|_| {
                let (server, png, answered) = (&server, &png, &answered);
                s.spawn(move || {
                    let form = Form::new().part("image", Part::bytes(png.clone()));
                    let (status, answer) =
                        send(client().post(server.url("/v1/captions")).multipart(form));
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    (status, answer)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let (status, health) = send(client().get(server.url("/health")));
        let took = start.elapsed();
        let decoding = 3 - answered.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(status, 200, "{health}");
        println!("/health in {took:?} while {decoding} uploads decode");
        assert!(decoding > 0, "the uploads were still decoding");
        assert!(took < Duration::from_secs(1), "/health took {took:?}");
        for upload in uploads {
            let (status, answer) = upload.join().expect("thread");
            assert_eq!(status, 200, "{answer}");
        }
    });
}

/// A field given twice is refused by name, in forms and in JSON, whichever spelling repeats it.
#[test]
fn repeated_fields_are_refused_by_name() {
    let server = Server::start(&[]);
    let png = std::fs::read(eval_image("000.png")).expect("eval image");
    let file = || Part::bytes(png.clone()).file_name("000.png");
    let forms = [
        (
            EDITS,
            Form::new()
                .part("image", file())
                .text("prompt", "first")
                .text("prompt", "second"),
            "prompt",
        ),
        (
            "/v1/vqa",
            Form::new()
                .part("image", file())
                .part("image", file())
                .text("question", "what color?"),
            "image",
        ),
        (
            EDITS,
            Form::new()
                .part("image", file())
                .part("image[]", file())
                .text("prompt", "a red circle"),
            "image",
        ),
    ];
    for (path, form, field) in forms {
        let (status, answer) = send(client().post(server.url(path)).multipart(form));
        let e = error(status, &answer, 400);
        assert_eq!(e["param"], field, "{path}: {answer}");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("more than once")),
            "{answer}"
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let bodies = [
        (
            EDITS,
            format!(r#"{{"image": "{b64}", "prompt": "first", "prompt": "second"}}"#),
        ),
        (
            GENERATIONS,
            r#"{"prompt": "first", "prompt": "second"}"#.into(),
        ),
    ];
    for (path, body) in bodies {
        let request = client()
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body);
        let (status, answer) = send(request);
        assert_eq!(
            error(status, &answer, 400)["param"],
            "prompt",
            "{path}: {answer}"
        );
    }
}

/// A JSON body that is not an object (an array would fill the fields by position) is refused
/// on every JSON route.
#[test]
fn json_bodies_must_be_objects() {
    let server = Server::start(&[]);
    let array = json!(["a red circle", 2, "128x64", null]);
    for path in [GENERATIONS, EDITS, "/v1/captions", "/v1/vqa"] {
        let (status, answer) = post(&server, path, &array);
        let e = error(status, &answer, 400);
        assert_eq!(e["param"], "body", "{path}: {answer}");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("expected a JSON object")),
            "{path}: {answer}"
        );
    }
}

/// A seed under greedy draws changes nothing; it is refused rather than echoed as if used.
#[test]
fn a_seed_with_greedy_draws_is_refused() {
    let server = Server::start(&[]);
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(eval_image("000.png")).expect("eval image"));
    let greedy = json!({ "greedy": true, "seed": 1, "steps": 4 });
    let with = |fields: Value| {
        let mut body = greedy.clone();
        body.as_object_mut()
            .expect("object")
            .extend(fields.as_object().expect("object").clone());
        body
    };
    let cases = [
        (GENERATIONS, with(json!({ "prompt": "a red circle" }))),
        (
            EDITS,
            with(json!({ "prompt": "a red circle", "image": b64 })),
        ),
        ("/v1/captions", with(json!({ "image": b64 }))),
        (
            "/v1/vqa",
            with(json!({ "image": b64, "question": "what color?" })),
        ),
    ];
    for (path, body) in cases {
        let (status, answer) = post(&server, path, &body);
        let e = error(status, &answer, 400);
        assert_eq!(e["param"], "seed", "{path}: {answer}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains("greedy")),
            "{answer}"
        );
    }
    let (status, answer) = post(
        &server,
        GENERATIONS,
        &json!({ "prompt": "a red circle", "greedy": false, "seed": 1, "steps": 4 }),
    );
    assert_eq!(status, 200, "sampled draws take a seed: {answer}");
}

/// Errors say what is wrong: a nameless part, a Content-Type no route reads, a bad field of a
/// JSON edit (no position in a body the client never sent), every route on a 404.
#[test]
fn refusals_say_what_is_wrong() {
    let server = Server::start(&[]);
    let nameless = Form::new().part("", Part::bytes(b"x".to_vec()));
    let (status, answer) = send(
        client()
            .post(server.url("/v1/captions"))
            .multipart(nameless),
    );
    let e = error(status, &answer, 400);
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("no name")),
        "{answer}"
    );
    for path in [GENERATIONS, EDITS, "/v1/captions"] {
        let request = client()
            .post(server.url(path))
            .header("content-type", "multipart/mixed; boundary=x")
            .body("--x--");
        let (status, answer) = send(request);
        let e = error(status, &answer, 415);
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("application/json")),
            "{path}: {answer}"
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(eval_image("000.png")).expect("eval image"));
    let body = json!({ "image": b64, "prompt": "a red circle", "n": "two" });
    let (status, answer) = post(&server, EDITS, &body);
    let e = error(status, &answer, 400);
    assert_eq!(e["param"], "n", "{answer}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.contains("line")),
        "{answer}"
    );
    let (status, answer) = send(client().get(server.url("/v2/nothing")));
    let message = error(status, &answer, 404)["message"]
        .as_str()
        .unwrap_or("");
    for route in [
        "/health",
        "/metrics",
        "/v1/models",
        GENERATIONS,
        EDITS,
        "/v1/captions",
        "/v1/vqa",
    ] {
        assert!(message.contains(route), "{route} missing from {message}");
    }
}

/// A run whose client timed out stops at its next step or block: the next request is answered
/// within its own 2 s, not 504 behind a run of many minutes.
#[test]
fn a_run_nobody_waits_for_stops_and_frees_the_worker() {
    let server = Server::start(&["--request-timeout", "2"]);
    let long = json!({ "prompt": "a red circle", "steps": 1000, "size": "1024x1024" });
    let (status, answer) = post(&server, GENERATIONS, &long);
    assert_eq!(status, 504, "{answer}");
    let (status, answer) = post(&server, GENERATIONS, &json!({ "prompt": "a red circle" }));
    assert_eq!(
        status, 200,
        "the abandoned run still holds the worker: {answer}"
    );
}

/// SIGTERM with the worker in a run nobody waits for: stopped within the grace, exit 0.
#[test]
fn sigterm_does_not_wait_for_a_run_nobody_waits_for() {
    let mut server = Server::start(&["--request-timeout", "1", "--shutdown-grace", "1"]);
    let long = json!({ "prompt": "a red circle", "steps": 1000, "size": "1024x1024" });
    assert_eq!(post(&server, GENERATIONS, &long).0, 504);
    server.signal("TERM");
    let exit = server
        .wait(Duration::from_secs(10))
        .expect("the server stops within 10 s");
    assert!(exit.success(), "exit status {exit:?}");
}
