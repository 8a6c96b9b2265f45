//! Bad input of every kind through the real binary (issue 21): numbers out of bounds from every
//! source, unsafe outputs, hostile model files, hostile images, and the messages they get.
//!
//! Each case runs `muddit` in its own folder and asserts the exit code, that the message is one
//! line holding the expected words, and that nothing in the folder changed: no output written,
//! no file damaged. Cases that succeed assert the files they should write.

mod common;

use common::{muddit, stderr};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The committed default model.
fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-64")
}

/// Every file under `dir` with its bytes (links are read through, pipes not read).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list").flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.insert(path.clone(), Vec::new());
                stack.push(path);
            } else if path.is_file() {
                files.insert(path.clone(), std::fs::read(&path).unwrap_or_default());
            } else {
                // A pipe: reading it would wait for a writer.
                files.insert(path.clone(), b"not a file".to_vec());
            }
        }
    }
    files
}

/// A case's folder: the default model as links (`model/`), files a case changes written for
/// real, and small images.
struct Bench {
    tmp: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let b = Bench { tmp };
        link_tree(&default_model(), &b.path("model"));
        b.write("keep.png", b"precious bytes");
        write_rgb_png(&b.path("red.png"), 8, 8);
        b
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Writes `rel`, replacing a link to the committed model by a real file.
    fn write(&self, rel: &str, bytes: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, bytes).expect("write");
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).expect("read")
    }

    /// Edits the JSON file `rel` with `edit`.
    fn edit_json(&self, rel: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut v: serde_json::Value = serde_json::from_slice(&self.read(rel)).expect("json");
        edit(&mut v);
        self.write(rel, v.to_string().as_bytes());
    }
}

/// `dst` mirrors `src`: folders made, files linked.
fn link_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("list").flatten() {
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            link_tree(&entry.path(), &to);
        } else {
            std::os::unix::fs::symlink(entry.path().canonicalize().expect("path"), &to)
                .expect("link");
        }
    }
}

/// An 8-bit RGB PNG of `w x h` red pixels.
fn write_rgb_png(path: &Path, w: u32, h: u32) {
    image::save_buffer(
        path,
        &[255, 0, 0].repeat((w * h) as usize),
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .expect("png");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A PNG whose header declares `w x h` (`depth`, `color`) over `rows` (filter bytes included,
/// stored uncompressed), with extra chunks before the data.
fn raw_png(w: u32, h: u32, depth: u8, color: u8, rows: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    for c in extra {
        out.extend_from_slice(c);
    }
    out.extend(chunk(b"IDAT", &zlib_stored(rows)));
    out.extend(chunk(b"IEND", &[]));
    out
}

/// `data` as a zlib stream of stored (uncompressed) blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65535).collect()
    };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// A PNG carrying `params` as its `muddit-parameters` text.
fn params_png(params: &serde_json::Value) -> Vec<u8> {
    let mut itxt = b"muddit-parameters\0\0\0\0\0".to_vec();
    itxt.extend_from_slice(params.to_string().as_bytes());
    raw_png(1, 1, 8, 2, &[0, 0, 0, 0], &[chunk(b"iTXt", &itxt)])
}

fn stored_params() -> serde_json::Value {
    serde_json::json!({"prompts": ["a red circle"], "negative_prompt": "", "images_per_prompt": 1,
        "index": 0, "seed": 1, "steps": 2, "cfg": 1.0, "temperature": [2.0, 0.0],
        "schedule": "cosine", "greedy": true, "width": 64, "height": 64, "model": "",
        "engine_version": "0.1.0"})
}

/// The safetensors file `rel` of the bench: header and data, to edit.
fn read_safetensors(b: &Bench, rel: &str) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let bytes = b.read(rel);
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    (
        header.as_object().expect("object").clone(),
        bytes[8 + n..].to_vec(),
    )
}

fn write_safetensors(
    b: &Bench,
    rel: &str,
    header: &serde_json::Map<String, serde_json::Value>,
    data: &[u8],
) {
    let mut h = serde_json::to_vec(header).expect("json");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    b.write(rel, &out);
}

/// The tensor names of a header, sorted.
fn names(header: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

/// The default model's text encoder width (its `<mask>` embedding's length).
const HIDDEN: usize = 48;

const WEIGHTS: [&str; 3] = [
    "model/transformer/diffusion_pytorch_model.safetensors",
    "model/text_encoder/model.safetensors",
    "model/vqvae/diffusion_pytorch_model.safetensors",
];

/// What a case expects.
enum Want {
    /// Exit code 2, one line holding every one of these words, the folder unchanged.
    Error(Vec<String>),
    /// Success, writing these files.
    Writes(Vec<&'static str>),
}

struct Case {
    name: String,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    setup: Box<dyn Fn(&Bench)>,
    want: Want,
}

fn case(name: &str, args: &[&str], want: &[&str]) -> Case {
    Case {
        name: name.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        setup: Box::new(|_| {}),
        want: Want::Error(want.iter().map(|s| s.to_string()).collect()),
    }
}

impl Case {
    fn setup(mut self, f: impl Fn(&Bench) + 'static) -> Self {
        self.setup = Box::new(f);
        self
    }

    fn writes(mut self, files: &[&'static str]) -> Self {
        self.want = Want::Writes(files.to_vec());
        self
    }

    fn env(mut self, key: &'static str, value: &str) -> Self {
        self.env.push((key, value.to_string()));
        self
    }
}

/// Runs every case; all failures are reported together.
fn run_all(cases: Vec<Case>) {
    let failures: Vec<String> = cases.iter().filter_map(|c| run_case(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn run_case(c: &Case) -> Result<(), String> {
    let b = Bench::new();
    (c.setup)(&b);
    let before = snapshot(b.tmp.path());
    let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_muddit"));
    cmd.args(&args)
        .current_dir(b.tmp.path())
        .env_remove("MUDDIT_MODEL")
        .env(
            "XDG_CACHE_HOME",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/cache"),
        );
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    let o = cmd
        .output()
        .map_err(|e| format!("{}: spawn: {e}", c.name))?;
    let err = stderr(&o);
    let after = snapshot(b.tmp.path());
    match &c.want {
        Want::Error(words) => {
            let line = err.trim();
            if o.status.code() != Some(2) {
                return Err(format!(
                    "{}: exit {:?}, expected 2: {line}",
                    c.name,
                    o.status.code()
                ));
            }
            if !line.starts_with("error: ") || line.lines().count() != 1 {
                return Err(format!("{}: not one error line: {line:?}", c.name));
            }
            if let Some(w) = words.iter().find(|w| !line.contains(w.as_str())) {
                return Err(format!("{}: `{w}` missing from: {line}", c.name));
            }
            let parts: Vec<&str> = line.split(": ").collect();
            if parts
                .iter()
                .enumerate()
                .any(|(i, p)| p.len() > 12 && parts[i + 1..].contains(p))
            {
                return Err(format!("{}: repeated text: {line}", c.name));
            }
            if after != before {
                let changed: Vec<_> = after
                    .keys()
                    .filter(|k| before.get(*k) != after.get(*k))
                    .collect();
                return Err(format!("{}: the folder changed: {changed:?}", c.name));
            }
        }
        Want::Writes(files) => {
            if !o.status.success() {
                return Err(format!("{}: failed: {err}", c.name));
            }
            if let Some(f) = files.iter().find(|f| !b.path(f).is_file()) {
                return Err(format!("{}: {f} not written", c.name));
            }
            if b.read("keep.png") != b"precious bytes" {
                return Err(format!("{}: keep.png damaged", c.name));
            }
        }
    }
    Ok(())
}

/// A prompt longer than the text encoder's 75 text tokens runs (cut, as upstream cuts it) with
/// a note naming the flag, its length and the words left out; a prompt that fits gets none.
#[test]
fn prompts_past_the_window_are_noted() {
    let b = Bench::new();
    let run = |prompts: &[String], out: &str| {
        let mut args = vec!["--model", "model", "t2i", "--steps", "2", "-o", out];
        for p in prompts {
            args.extend(["--prompt", p.as_str()]);
        }
        let o = muddit(&args, b.tmp.path());
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let long: Vec<&str> = (0..80).map(|i| ["red", "circle"][i % 2]).collect();
    let long = format!("{} blue square", long.join(" "));
    let err = run(&[long.clone()], "long.png");
    assert!(
        err.contains("note: --prompt is 82 tokens")
            && err.contains("reads the first 75")
            && err.contains("\"circle red circle red circle blue square\" is left out"),
        "{err}"
    );
    let err = run(&["a red circle".into(), long], "two-%d.png");
    assert!(err.contains("note: --prompt 2 is 82 tokens"), "{err}");
    assert!(!err.contains("--prompt 1 "), "{err}");
    let err = run(&["a red circle".into()], "short.png");
    assert!(!err.contains("tokens;"), "{err}");
}

/// `t2i` of the default model (in `model/`) with `extra` flags, by default with one prompt and
/// two steps.
fn t2i(extra: &[&str]) -> Vec<String> {
    let mut a = vec!["--model", "model", "t2i", "-q"];
    if !extra.contains(&"--prompt") {
        a.extend(["--prompt", "a red circle"]);
    }
    if !extra.contains(&"--steps") {
        a.extend(["--steps", "2"]);
    }
    a.extend(extra);
    a.iter().map(|s| s.to_string()).collect()
}

fn t2i_case(name: &str, extra: &[&str], want: &[&str]) -> Case {
    let mut c = case(name, &[], want);
    c.args = t2i(extra);
    c
}

/// `t2i --from-png s.png` where `s.png` is `png`.
fn from_png_case(name: &str, png: Vec<u8>, want: &[&str]) -> Case {
    let args = [
        "--model",
        "model",
        "t2i",
        "-q",
        "--from-png",
        "s.png",
        "-o",
        "out.png",
    ];
    case(name, &args, want).setup(move |b| b.write("s.png", &png))
}

#[test]
fn numbers_are_bounded_from_every_source() {
    let mut cases = Vec::new();
    for w in ["0", "4097", "100", "1000000", "18446744073709551615"] {
        cases.push(t2i_case(
            &format!("width {w}"),
            &["--width", w, "-o", "a.png"],
            &["width"],
        ));
        cases.push(t2i_case(
            &format!("height {w}"),
            &["--height", w, "-o", "a.png"],
            &["height"],
        ));
    }
    for s in ["0", "1001", "4000000000"] {
        cases.push(t2i_case(
            &format!("t2i steps {s}"),
            &["--steps", s, "-o", "a.png"],
            &["steps"],
        ));
        cases.push(case(
            &format!("caption steps {s}"),
            &["--model", "model", "caption", "-q", "--steps", s, "red.png"],
            &["steps"],
        ));
        cases.push(case(
            &format!("bench steps {s}"),
            &[
                "--model", "model", "bench", "-q", "--steps", s, "--width", "64", "--height", "64",
            ],
            &["steps"],
        ));
    }
    for n in ["257", "100000000", "18446744073709551615"] {
        cases.push(t2i_case(
            &format!("batch {n}"),
            &["--batch", n, "-o", "b-%d.png"],
            &["batch", "256"],
        ));
    }
    cases.push(t2i_case(
        "batch 0",
        &["--batch", "0", "-o", "a.png"],
        &["batch"],
    ));
    for n in ["0", "1025", "100000000"] {
        cases.push(case(
            &format!("threads {n}"),
            &[
                "--threads",
                n,
                "--model",
                "model",
                "t2i",
                "--prompt",
                "x",
                "-o",
                "a.png",
            ],
            &["threads"],
        ));
    }
    let long = "x".repeat(5000);
    cases.push(t2i_case(
        "prompt of 5000 bytes",
        &["--prompt", &long, "-o", "a.png"],
        &["prompt", "4096"],
    ));
    cases.push(t2i_case(
        "negative prompt of 5000 bytes",
        &["--negative-prompt", &long, "--cfg", "3", "-o", "a.png"],
        &["prompt", "4096"],
    ));
    cases.push(case(
        "question of 5000 bytes",
        &[
            "--model",
            "model",
            "vqa",
            "-q",
            "--question",
            &long,
            "red.png",
        ],
        &["question"],
    ));
    let many: Vec<String> = (0..300)
        .flat_map(|_| ["--prompt".to_string(), "p".to_string()])
        .collect();
    let mut c = t2i_case("300 prompts", &["-o", "p-%d.png"], &["batch", "256"]);
    c.args.extend(many);
    cases.push(c);
    let mut images = vec!["--model", "model", "caption", "-q"];
    images.extend(std::iter::repeat_n("red.png", 300));
    cases.push(case("300 images to caption", &images, &["image", "256"]));
    for r in ["0", "100", "100000"] {
        cases.push(case(
            &format!("resolution {r}"),
            &[
                "--model",
                "model",
                "caption",
                "-q",
                "--resolution",
                r,
                "red.png",
            ],
            &["resolution"],
        ));
    }
    cases.push(t2i_case(
        "memory of 256 4096 px images",
        &[
            "--width", "4096", "--height", "4096", "--batch", "256", "-o", "m-%d.png",
        ],
        &["GiB", "this machine has"],
    ));
    cases.push(case(
        "bench width 1000000",
        &["--model", "model", "bench", "-q", "--width", "1000000"],
        &["width"],
    ));
    for (key, value, word) in [
        ("width", "1000000", "width"),
        ("height", "0", "height"),
        ("steps", "4000000000", "steps"),
        ("images_per_prompt", "1000000000000", "batch"),
    ] {
        let png = {
            let mut p = stored_params();
            p[key] = serde_json::from_str(value).expect("number");
            params_png(&p)
        };
        cases.push(from_png_case(
            &format!("stored {key} {value}"),
            png,
            &[word, "s.png"],
        ));
    }
    let mut p = stored_params();
    p["index"] = 5.into();
    let png = params_png(&p);
    cases.push(from_png_case(
        "stored index outside the batch",
        png,
        &["index"],
    ));
    for (key, value, words) in [
        ("cfg", "-1", &["stored `cfg` -1", "guidance"][..]),
        (
            "schedule",
            "\"junk\"",
            &["stored `schedule` junk", "cosine"][..],
        ),
        (
            "temperature",
            "[-1.0, 0.0]",
            &["stored `temperature`", "0 or more"][..],
        ),
    ] {
        let mut p = stored_params();
        p[key] = serde_json::from_str(value).expect("json");
        let mut want = vec!["s.png"];
        want.extend_from_slice(words);
        cases.push(from_png_case(
            &format!("stored {key} {value}"),
            params_png(&p),
            &want,
        ));
    }
    // Edit parts, and the edit's canvas size (the record's top level): named as stored.
    for (key, value) in [
        ("strength", "5.0"),
        ("mask_blur", "-1.0"),
        ("width", "70"),
        ("height", "100000"),
    ] {
        let want = [format!(
            "s.png: stored `{key}` {}",
            value.trim_end_matches(".0")
        )];
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        cases.push(
            // The record names `red.png` by its SHA-256, known once the bench is written.
            from_png_case(&format!("stored edit {key}"), Vec::new(), &want).setup(move |b| {
                use sha2::Digest;
                let sha = sha2::Sha256::digest(std::fs::read(b.path("red.png")).expect("red.png"));
                let mut p = stored_params();
                p["edit"] = serde_json::json!({"init_image": "red.png",
                "init_image_sha256": format!("{sha:x}"), "mask": null, "mask_sha256": null,
                "outpaint": [0, 0, 16, 0], "strength": 1.0, "keep_unmasked_pixels": true,
                "mask_blur": 0.0});
                let value = serde_json::from_str(value).expect("number");
                match key {
                    "width" | "height" => p[key] = value,
                    _ => p["edit"][key] = value,
                }
                b.write("s.png", &params_png(&p));
            }),
        );
    }
    for t in ["-1", "2,-0.5", "0"] {
        let flag = format!("--temperature={t}");
        let words: &[&str] = match t {
            "0" => &[],
            _ => &["--temperature", "0 or more"],
        };
        let c = t2i_case(&format!("temperature {t}"), &[&flag, "-o", "t.png"], words);
        cases.push(match t {
            "0" => c.writes(&["t.png"]),
            _ => c,
        });
    }
    let png = raw_png(
        1,
        1,
        8,
        2,
        &[0, 0, 0, 0],
        &[chunk(b"iTXt", b"muddit-parameters\0\0\0\0\0{not json")],
    );
    cases.push(from_png_case(
        "stored parameters malformed",
        png,
        &["s.png", "malformed"],
    ));
    cases.push(case(
        "from-png without parameters",
        &[
            "--model",
            "model",
            "t2i",
            "-q",
            "--from-png",
            "red.png",
            "-o",
            "out.png",
        ],
        &["red.png"],
    ));
    for (name, text, word) in [
        ("a folder", None, "muddit.json"),
        ("an array", Some("[64, 64, 16, 1.0, 12, 64]"), "JSON object"),
        ("a string", Some("\"64\""), "JSON object"),
        ("empty", Some(""), "muddit.json"),
        ("width 100000000", Some("{\"width\": 100000000}"), "width"),
        ("steps 0", Some("{\"t2i_steps\": 0}"), "steps"),
        ("cfg -1", Some("{\"cfg\": -1}"), "cfg"),
        ("an unknown key", Some("{\"widht\": 64}"), "widht"),
        (
            "resolution 5000",
            Some("{\"resolution\": 5000}"),
            "resolution",
        ),
    ] {
        let text = text.map(str::to_string);
        cases.push(
            t2i_case(&format!("muddit.json {name}"), &["-o", "a.png"], &[word]).setup(move |b| {
                let p = b.path("model/muddit.json");
                std::fs::remove_file(&p).expect("rm");
                match &text {
                    Some(t) => b.write("model/muddit.json", t.as_bytes()),
                    None => std::fs::create_dir(&p).expect("mkdir"),
                }
            }),
        );
    }
    run_all(cases);
}

#[test]
fn outputs_are_checked_before_the_run_and_never_clobbered() {
    let mut cases = Vec::new();
    for ext in ["gif", "bmp", "tiff", "txt"] {
        let out = format!("pic.{ext}");
        cases.push(t2i_case(
            &format!("-o .{ext}"),
            &["-o", &out],
            &[&format!(".{ext}"), ".png"],
        ));
    }
    cases.push(t2i_case(
        "-o without extension",
        &["-o", "pic"],
        &["extension"],
    ));
    cases.push(t2i_case(
        "-o equal to --output-ids",
        &["-o", "same.png", "--output-ids", "same.png"],
        &["same file"],
    ));
    cases.push(t2i_case(
        "-o equal to --output-ids by another spelling",
        &["-o", "same.png", "--output-ids", "./same.png"],
        &["same file"],
    ));
    cases.push(t2i_case("-o a folder", &["-o", "model"], &["folder"]));
    cases.push(t2i_case("-o the current folder", &["-o", "."], &["."]));
    cases.push(t2i_case(
        "-o in a missing folder",
        &["-o", "nope/x.png"],
        &["nope", "does not exist"],
    ));
    cases.push(t2i_case(
        "--output-ids in a missing folder",
        &["-o", "a.png", "--output-ids", "nope/ids.safetensors"],
        &["--output-ids", "does not exist"],
    ));
    for name in ["ids.png", "ids.JPG", "ids.webp"] {
        cases.push(t2i_case(
            &format!("--output-ids {name}"),
            &["-o", "a.png", "--output-ids", name],
            &["--output-ids", name, ".safetensors"],
        ));
    }
    cases.push(
        t2i_case(
            "-o a dangling link",
            &["-o", "dang.png"],
            &["dang.png", "dangling", "nowhere.png"],
        )
        .setup(|b| std::os::unix::fs::symlink("nowhere.png", b.path("dang.png")).expect("link")),
    );
    cases.push(t2i_case(
        "-o a device",
        &["-o", "/dev/null"],
        &["regular file"],
    ));
    cases.push(t2i_case(
        "-o under a file",
        &["-o", "keep.png/x.png"],
        &["keep.png"],
    ));
    cases.push(t2i_case(
        "-o exists",
        &["-o", "keep.png"],
        &["keep.png", "--overwrite"],
    ));
    cases.push(t2i_case(
        "--output-ids exists",
        &["-o", "a.png", "--output-ids", "keep.png"],
        &["keep.png", "--overwrite"],
    ));
    cases.push(
        t2i_case(
            "one image of a pattern exists",
            &["--batch", "3", "-o", "k-%d.png"],
            &["k-1.png", "--overwrite"],
        )
        .setup(|b| b.write("k-1.png", b"old")),
    );
    cases.push(t2i_case(
        "two images one name",
        &["--batch", "2", "-o", "fixed.png"],
        &["%d"],
    ));
    cases.push(t2i_case(
        "-o a folder with --overwrite",
        &["-o", "model", "--overwrite"],
        &["folder"],
    ));
    cases.push(case(
        "debug random-inputs over a file",
        &[
            "--model",
            "model",
            "debug",
            "random-inputs",
            "--out",
            "keep.png",
        ],
        &["keep.png", "--overwrite"],
    ));
    cases.push(case(
        "debug random-inputs in a missing folder",
        &[
            "--model",
            "model",
            "debug",
            "random-inputs",
            "--out",
            "nope/in.safetensors",
        ],
        &["does not exist"],
    ));
    cases.push(case(
        "debug forward over a file",
        &[
            "--model", "model", "debug", "forward", "--inputs", "x", "--out", "keep.png",
        ],
        &["keep.png", "--overwrite"],
    ));
    cases.push(t2i_case("jpg output is a JPEG", &["-o", "pic.jpg"], &[]).writes(&["pic.jpg"]));
    cases.push(t2i_case("jpeg output", &["-o", "pic.JPEG"], &[]).writes(&["pic.JPEG"]));
    cases.push(t2i_case("webp output", &["-o", "pic.webp"], &[]).writes(&["pic.webp"]));
    cases.push(
        t2i_case(
            "png with ids",
            &["-o", "pic.png", "--output-ids", "ids.safetensors"],
            &[],
        )
        .writes(&["pic.png", "ids.safetensors"]),
    );
    cases.push(
        t2i_case("overwrite replaces", &["-o", "old.png", "--overwrite"], &[])
            .writes(&["old.png"])
            .setup(|b| b.write("old.png", b"old")),
    );
    let eval = [
        "--model",
        "model",
        "eval",
        "-q",
        "--tasks",
        "t2i",
        "--limit",
        "2",
        "--steps",
        "2",
        "--save-images",
        "saved",
    ];
    cases.push(
        case(
            "eval --save-images over an image",
            &eval,
            &["t2i-001.png", "--overwrite"],
        )
        .setup(|b| b.write("saved/t2i-001.png", b"old")),
    );
    cases.push(
        case("eval --save-images a file", &eval, &["saved"]).setup(|b| b.write("saved", b"old")),
    );
    cases.push(case(
        "eval --steps 0",
        &["--model", "model", "eval", "-q", "--steps", "0"],
        &["--steps"],
    ));
    cases.push(case(
        "eval --i2t-steps 5000",
        &["--model", "model", "eval", "-q", "--i2t-steps", "5000"],
        &["--i2t-steps"],
    ));
    run_all(cases);

    let b = Bench::new();
    for (name, magic) in [
        ("pic.jpg", &[0xff, 0xd8, 0xff][..]),
        ("pic.webp", b"RIFF"),
        ("pic.png", b"\x89PNG"),
    ] {
        let o = muddit(
            &t2i(&["-o", name])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            b.tmp.path(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            b.read(name).starts_with(magic),
            "{name} is not in the format of its extension"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(b.tmp.path())
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Cases that edit one safetensors file of the model.
fn weight_case(name: &str, file: &'static str, words: &[&str], edit: Edit) -> Case {
    t2i_case(name, &["-o", "e.png"], words).setup(move |b| {
        let (mut header, mut data) = read_safetensors(b, file);
        edit(&mut header, &mut data);
        write_safetensors(b, file, &header, &data);
    })
}

/// The byte range of the first stored element of `name`.
fn first_element(
    header: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> (usize, String) {
    let start = header[name]["data_offsets"][0].as_u64().expect("offset") as usize;
    (
        start,
        header[name]["dtype"].as_str().expect("dtype").to_string(),
    )
}

/// Writes a non-finite value (`nan` or `inf`) over the first element of `name`.
fn poison(
    header: &serde_json::Map<String, serde_json::Value>,
    data: &mut [u8],
    name: &str,
    nan: bool,
) {
    let (start, dtype) = first_element(header, name);
    let bytes: Vec<u8> = match (dtype.as_str(), nan) {
        ("F16", true) => vec![0x00, 0x7e],
        ("F16", false) => vec![0x00, 0x7c],
        ("BF16", true) => vec![0xc0, 0x7f],
        ("BF16", false) => vec![0x80, 0x7f],
        (_, true) => f32::NAN.to_le_bytes().to_vec(),
        (_, false) => f32::INFINITY.to_le_bytes().to_vec(),
    };
    data[start..start + bytes.len()].copy_from_slice(&bytes);
}

type Header = serde_json::Map<String, serde_json::Value>;
type Edit = fn(&mut Header, &mut Vec<u8>);

/// The `[start, end)` offsets of tensor `n`.
fn offsets(h: &Header, n: &str) -> (u64, u64) {
    let at = |i: usize| h[n]["data_offsets"][i].as_u64().expect("offset");
    (at(0), at(1))
}

fn nan_weight(h: &mut Header, d: &mut Vec<u8>) {
    let n = names(h)[0].clone();
    poison(h, d, &n, true)
}

fn inf_weight(h: &mut Header, d: &mut Vec<u8>) {
    let n = names(h)[1].clone();
    poison(h, d, &n, false)
}

fn past_the_end(h: &mut Header, _: &mut Vec<u8>) {
    let n = names(h).last().expect("one").clone();
    h[&n]["data_offsets"][1] = (offsets(h, &n).1 + 4096).into();
}

fn huge_shape(h: &mut Header, _: &mut Vec<u8>) {
    let n = names(h)[0].clone();
    h[&n]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40]);
}

fn dtype_disagrees(h: &mut Header, _: &mut Vec<u8>) {
    let n = names(h)[0].clone();
    let other = if h[&n]["dtype"] == "F32" {
        "F16"
    } else {
        "F32"
    };
    h[&n]["dtype"] = other.into();
}

fn overlapping(h: &mut Header, _: &mut Vec<u8>) {
    let mut by_start: Vec<(u64, String)> = names(h)
        .into_iter()
        .map(|n| (offsets(h, &n).0, n))
        .collect();
    by_start.sort();
    let (a, b) = (&by_start[0].1, &by_start[1].1);
    let ((s, _), (bs, be)) = (offsets(h, a), offsets(h, b));
    h[b]["data_offsets"] = serde_json::json!([s, s + be - bs]);
}

fn missing_tensor(h: &mut Header, _: &mut Vec<u8>) {
    let n = names(h).last().expect("one").clone();
    h.remove(&n);
}

fn integer_dtype(h: &mut Header, _: &mut Vec<u8>) {
    let n = names(h)[0].clone();
    let (s, e) = offsets(h, &n);
    h[&n]["dtype"] = "U8".into();
    h[&n]["shape"] = serde_json::json!([e - s]);
}

/// Edits of a safetensors header (and data), with the words their error must hold.
fn header_edits() -> [(&'static str, &'static [&'static str], Edit); 8] {
    [
        ("NaN weight", &["NaN"], nan_weight),
        ("Inf weight", &["infinite"], inf_weight),
        ("offsets past the end", &["safetensors"], past_the_end),
        ("huge shape", &["safetensors"], huge_shape),
        ("dtype and size disagree", &["safetensors"], dtype_disagrees),
        ("overlapping tensors", &["safetensors"], overlapping),
        ("missing tensor", &[], missing_tensor),
        ("integer dtype", &[], integer_dtype),
    ]
}

#[test]
fn hostile_model_files_are_refused_by_name() {
    let mut cases = Vec::new();
    for file in WEIGHTS {
        let short = file.split('/').nth(1).expect("component");
        for (what, words, edit) in header_edits() {
            let mut want = words.to_vec();
            want.push(short);
            cases.push(weight_case(&format!("{short}: {what}"), file, &want, edit));
        }
        cases.push(
            t2i_case(
                &format!("{short}: header length 2^62"),
                &["-o", "e.png"],
                &["safetensors", short],
            )
            .setup(move |b| {
                let mut bytes = b.read(file);
                bytes[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
                b.write(file, &bytes);
            }),
        );
        cases.push(
            t2i_case(
                &format!("{short}: truncated"),
                &["-o", "e.png"],
                &["safetensors", short],
            )
            .setup(move |b| {
                let bytes = b.read(file);
                b.write(file, &bytes[..bytes.len() / 2]);
            }),
        );
        cases.push(
            t2i_case(
                &format!("{short}: empty file"),
                &["-o", "e.png"],
                &["safetensors", short],
            )
            .setup(move |b| b.write(file, b"")),
        );
    }
    for (name, shard, word) in [
        (
            "index names ../",
            "../../../../etc/passwd",
            "plain file name",
        ),
        (
            "index names an absolute path",
            "/etc/passwd",
            "plain file name",
        ),
        (
            "index names a folder inside",
            "sub/../../x.safetensors",
            "plain file name",
        ),
        ("index names nothing", "", "plain file name"),
        (
            "index names a link out of the folder",
            "link.safetensors",
            "link",
        ),
    ] {
        cases.push(
            t2i_case(name, &["-o", "e.png"], &[word, "index.json"])
                .setup(move |b| sharded_with(b, shard)),
        );
    }
    cases.push(
        t2i_case("index not JSON", &["-o", "e.png"], &["index.json"]).setup(|b| {
            sharded_with(b, "shard-1.safetensors");
            b.write(
                "model/transformer/diffusion_pytorch_model.safetensors.index.json",
                b"{",
            );
        }),
    );
    for (key, value) in [
        (
            "axes_dims_rope",
            "[9223372036854775808, 9223372036854775808, 24]",
        ),
        ("num_layers", "1000000000000"),
        ("attention_head_dim", "4611686018427387904"),
        ("num_attention_heads", "1099511627776"),
        ("vocab_size", "1099511627776"),
        ("codebook_size", "0"),
        ("joint_attention_dim", "18446744073709551615"),
    ] {
        let v: serde_json::Value = serde_json::from_str(value).expect("number");
        cases.push(
            t2i_case(
                &format!("transformer config {key} {value}"),
                &["-o", "e.png"],
                &[key, "config.json"],
            )
            .setup(move |b| b.edit_json("model/transformer/config.json", |c| c[key] = v.clone())),
        );
    }
    for (key, value) in [
        ("block_out_channels", "[1125899906842624, 8, 8, 8]"),
        ("num_vq_embeddings", "0"),
        ("latent_channels", "1099511627776"),
        ("block_out_channels", "[8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8]"),
    ] {
        let v: serde_json::Value = serde_json::from_str(value).expect("json");
        cases.push(
            t2i_case(
                &format!("vqvae config {key} {value}"),
                &["-o", "e.png"],
                &[key],
            )
            .setup(move |b| b.edit_json("model/vqvae/config.json", |c| c[key] = v.clone())),
        );
    }
    for (key, value) in [
        ("hidden_size", "1099511627776"),
        ("num_hidden_layers", "0"),
        ("max_position_embeddings", "18446744073709551615"),
    ] {
        let v: serde_json::Value = serde_json::from_str(value).expect("number");
        cases.push(
            t2i_case(
                &format!("text encoder config {key}"),
                &["-o", "e.png"],
                &[key],
            )
            .setup(move |b| b.edit_json("model/text_encoder/config.json", |c| c[key] = v.clone())),
        );
    }
    cases.push(
        t2i_case("config.json a folder", &["-o", "e.png"], &["config.json"]).setup(|b| {
            std::fs::remove_file(b.path("model/vqvae/config.json")).expect("rm");
            std::fs::create_dir(b.path("model/vqvae/config.json")).expect("mkdir");
        }),
    );
    cases.push(
        t2i_case(
            "config.json an array",
            &["-o", "e.png"],
            &["config.json", "object"],
        )
        .setup(|b| b.write("model/transformer/config.json", b"[1, 2]")),
    );
    cases.push(
        case(
            "mask embedding truncated",
            &["--model", "model", "caption", "-q", "red.png"],
            &["mask_token_embedding.pth"],
        )
        .setup(|b| {
            let bytes = b.read("model/mask_token_embedding.pth");
            b.write("model/mask_token_embedding.pth", &bytes[..100]);
        }),
    );
    cases.push(
        case(
            "mask embedding NaN",
            &["--model", "model", "caption", "-q", "red.png"],
            &["mask_token_embedding.pth", "NaN"],
        )
        .setup(|b| {
            let path = b.path("model/mask_token_embedding.pth");
            std::fs::remove_file(&path).expect("rm");
            muddit_engine::pth::write_pth_vector(&path, &[f32::NAN; HIDDEN]).expect("pth");
        }),
    );
    cases.push(
        t2i_case(
            "index with an empty weight_map",
            &["-o", "e.png"],
            &["transformer/x.safetensors.index.json", "weight_map"],
        )
        .setup(|b| {
            b.write(
                "model/transformer/x.safetensors.index.json",
                br#"{"weight_map": {}}"#,
            )
        }),
    );
    for key in ["eos_token", "bos_token", "pad_token"] {
        cases.push(
            t2i_case(
                &format!("special_tokens_map.json {key} unknown"),
                &["-o", "e.png"],
                &["tokenizer/special_tokens_map.json", key, "<|nope|>"],
            )
            .setup(move |b| {
                b.edit_json("model/tokenizer/special_tokens_map.json", |m| {
                    m[key] = "<|nope|>".into()
                })
            }),
        );
    }
    for (name, text, args, words) in [
        (
            "width 17",
            r#"{"width": 17, "height": 64}"#,
            t2i(&["-o", "a.png"]),
            &["muddit.json", "width", "17 px", "multiples of 16"][..],
        ),
        (
            "resolution 17",
            r#"{"resolution": 17}"#,
            ["--model", "model", "caption", "-q", "red.png"]
                .map(String::from)
                .to_vec(),
            &["muddit.json", "resolution", "17 px", "multiples of 16"][..],
        ),
    ] {
        let mut c = case(&format!("muddit.json {name}"), &[], words)
            .setup(move |b| b.write("model/muddit.json", text.as_bytes()));
        c.args = args;
        cases.push(c);
    }
    cases.push(weight_case(
        "overflowing VQ decoder: pixels named",
        WEIGHTS[2],
        &["VQ decoder pixels"],
        |h, d| overflow(h, d, "decoder.conv_out.weight"),
    ));
    cases.push(weight_case(
        "overflowing transformer: logits named",
        WEIGHTS[0],
        &["logits"],
        |h, d| overflow(h, d, "mlm_layer.conv2.weight"),
    ));
    run_all(cases);
}

/// Rewrites tensor `name` as f32 values of 3e38, so that the stage it ends overflows to
/// infinity while every weight stays finite.
fn overflow(
    header: &mut serde_json::Map<String, serde_json::Value>,
    data: &mut Vec<u8>,
    name: &str,
) {
    let (s, e) = (
        header[name]["data_offsets"][0].as_u64().expect("s") as usize,
        header[name]["data_offsets"][1].as_u64().expect("e") as usize,
    );
    let count: u64 = header[name]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().expect("dim"))
        .product();
    let values: Vec<u8> = (0..count).flat_map(|_| 3e38f32.to_le_bytes()).collect();
    let grow = values.len() as i64 - (e - s) as i64;
    let mut out = data[..s].to_vec();
    out.extend_from_slice(&values);
    out.extend_from_slice(&data[e..]);
    *data = out;
    for (_, v) in header.iter_mut().filter(|(k, _)| *k != "__metadata__") {
        let start = v["data_offsets"][0].as_u64().expect("s");
        if start > s as u64 {
            v["data_offsets"][0] = ((start as i64 + grow) as u64).into();
            let end = v["data_offsets"][1].as_u64().expect("e");
            v["data_offsets"][1] = ((end as i64 + grow) as u64).into();
        }
    }
    header[name]["dtype"] = "F32".into();
    header[name]["data_offsets"] = serde_json::json!([s, s + values.len()]);
}

/// Makes the transformer a one-shard checkpoint with an index whose first tensor names `shard`.
fn sharded_with(b: &Bench, shard: &str) {
    let dir = "model/transformer";
    let bytes = b.read(&format!("{dir}/diffusion_pytorch_model.safetensors"));
    std::fs::remove_file(b.path(&format!("{dir}/diffusion_pytorch_model.safetensors")))
        .expect("rm");
    b.write(&format!("{dir}/shard-1.safetensors"), &bytes);
    b.write("outside.safetensors", &bytes);
    std::os::unix::fs::symlink(
        b.path("outside.safetensors"),
        b.path(&format!("{dir}/link.safetensors")),
    )
    .expect("link");
    let (header, _) = read_safetensors(b, &format!("{dir}/shard-1.safetensors"));
    let mut map: BTreeMap<String, String> = names(&header)
        .into_iter()
        .map(|n| (n, "shard-1.safetensors".to_string()))
        .collect();
    if let Some(first) = map.values_mut().next() {
        *first = shard.to_string();
    }
    let index = serde_json::json!({ "weight_map": map });
    b.write(
        &format!("{dir}/diffusion_pytorch_model.safetensors.index.json"),
        index.to_string().as_bytes(),
    );
}

#[test]
fn hostile_images_are_bounded_and_odd_ones_converted() {
    let mut cases = Vec::new();
    let caption = |name: &str, file: &'static str, bytes: Vec<u8>, want: &[&str]| {
        case(name, &["--model", "model", "caption", "-q", file], want)
            .setup(move |b| b.write(file, &bytes))
    };
    cases.push(caption(
        "PNG declaring 100000 x 100000",
        "bomb.png",
        raw_png(100_000, 100_000, 8, 2, &[], &[]),
        &["bomb.png", "100000 x 100000"],
    ));
    cases.push(caption(
        "PNG declaring 20000 x 1",
        "wide.png",
        raw_png(20_000, 1, 8, 2, &[], &[]),
        &["wide.png", "16384"],
    ));
    cases.push(caption(
        "PNG declaring 2^31 x 2^31",
        "huge.png",
        raw_png(1 << 31, 1 << 31, 8, 2, &[], &[]),
        &["huge.png"],
    ));
    let mut jpeg = vec![
        0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11, 0x08, 0xff, 0xff, 0xff, 0xff, 0x03,
    ];
    jpeg.extend_from_slice(&[1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0, 0xff, 0xd9]);
    cases.push(caption(
        "JPEG declaring 65535 x 65535",
        "bomb.jpg",
        jpeg,
        &["bomb.jpg"],
    ));
    cases.push(caption(
        "truncated PNG",
        "cut.png",
        raw_png(8, 8, 8, 2, &[0; 10], &[]),
        &["cut.png"],
    ));
    cases.push(caption(
        "not an image",
        "text.png",
        b"hello".to_vec(),
        &["text.png"],
    ));
    cases.push(caption(
        "empty file",
        "empty.png",
        Vec::new(),
        &["empty.png"],
    ));
    cases.push(case(
        "a folder as image",
        &["--model", "model", "caption", "-q", "model"],
        &["model"],
    ));
    cases.push(case(
        "a missing image",
        &["--model", "model", "caption", "-q", "nope.png"],
        &["nope.png"],
    ));
    let ok = |name: &str, file: &'static str, bytes: Vec<u8>| {
        case(
            name,
            &["--model", "model", "caption", "-q", "--steps", "2", file],
            &[],
        )
        .writes(&[])
        .setup(move |b| b.write(file, &bytes))
    };
    let rows = |bytes_per_row: usize, value: &[u8]| -> Vec<u8> {
        (0..8)
            .flat_map(|_| {
                std::iter::once(0).chain(value.iter().copied().cycle().take(bytes_per_row))
            })
            .collect()
    };
    cases.push(ok(
        "16-bit grey",
        "g16.png",
        raw_png(8, 8, 16, 0, &rows(16, &[0x80, 0]), &[]),
    ));
    cases.push(ok(
        "16-bit RGBA",
        "rgba16.png",
        raw_png(
            8,
            8,
            16,
            6,
            &rows(64, &[0xff, 0, 0, 0, 0, 0, 0xff, 0xff]),
            &[],
        ),
    ));
    cases.push(ok(
        "8-bit grey",
        "g8.png",
        raw_png(8, 8, 8, 0, &rows(8, &[0x40]), &[]),
    ));
    cases.push(ok(
        "1-bit grey",
        "g1.png",
        raw_png(8, 8, 1, 0, &rows(1, &[0xaa]), &[]),
    ));
    cases.push(ok(
        "grey with alpha",
        "ga.png",
        raw_png(8, 8, 8, 4, &rows(16, &[0x80, 0x40]), &[]),
    ));
    cases.push(ok(
        "RGBA",
        "rgba.png",
        raw_png(8, 8, 8, 6, &rows(32, &[0, 0, 0xff, 0x10]), &[]),
    ));
    let palette = vec![
        chunk(b"PLTE", &[255, 0, 0, 0, 0, 255]),
        chunk(b"tRNS", &[0x80]),
    ];
    cases.push(ok(
        "palette with transparency",
        "pal.png",
        raw_png(8, 8, 8, 3, &rows(8, &[0, 1]), &palette),
    ));
    run_all(cases);
}

/// Pipes given where a file is read are refused, never waited on.
#[test]
fn pipes_are_refused_not_waited_on() {
    let fifo = |rel: &'static str| {
        move |b: &Bench| {
            let p = b.path(rel);
            let _ = std::fs::remove_file(&p);
            let made = std::process::Command::new("mkfifo")
                .arg(&p)
                .status()
                .expect("mkfifo");
            assert!(made.success(), "mkfifo {rel}");
        }
    };
    // Text-to-image with model file `rel` a pipe: the error names the file.
    let model_file = |name: &str, rel: &'static str| {
        let file = rel.rsplit('/').next().unwrap_or(rel);
        t2i_case(name, &["-o", "o.png"], &[file]).setup(fifo(rel))
    };
    let from_png = [
        "--model",
        "model",
        "t2i",
        "-q",
        "--from-png",
        "p.png",
        "-o",
        "o.png",
    ];
    let cases = vec![
        case(
            "caption of a pipe",
            &["--model", "model", "caption", "-q", "p.png"],
            &["p.png", "regular file"],
        )
        .setup(fifo("p.png")),
        case("--from-png a pipe", &from_png, &["p.png", "regular file"]).setup(fifo("p.png")),
        model_file("muddit.json a pipe", "model/muddit.json"),
        model_file(
            "scheduler config a pipe",
            "model/scheduler/scheduler_config.json",
        ),
        model_file("vocab a pipe", "model/tokenizer/vocab.json"),
        model_file(
            "weights a pipe",
            "model/vqvae/diffusion_pytorch_model.safetensors",
        ),
        model_file("config.json a pipe", "model/text_encoder/config.json"),
        t2i_case("-o a pipe", &["-o", "p.png"], &["p.png", "regular file"]).setup(fifo("p.png")),
    ];
    run_all(cases);
}

#[test]
fn messages_name_the_case_and_what_to_do() {
    let cases = vec![
        case(
            "--model empty",
            &["--model", "", "t2i", "--prompt", "x"],
            &["--model is empty", "default model"],
        ),
        case(
            "MUDDIT_MODEL empty",
            &["t2i", "--prompt", "x"],
            &["MUDDIT_MODEL"],
        )
        .env("MUDDIT_MODEL", ""),
        case(
            "--model a transformer folder",
            &["--model", "model/transformer", "t2i", "--prompt", "x"],
            &["model root", "--model model"],
        ),
        case(
            "--model a vqvae folder for caption",
            &["--model", "model/vqvae", "caption", "red.png"],
            &["model root", "--model model"],
        ),
        case(
            "--model a missing folder",
            &["--model", "nope/x/y", "t2i", "--prompt", "x"],
            &["nope/x/y"],
        ),
        case(
            "--model a file",
            &["--model", "keep.png", "t2i", "--prompt", "x"],
            &["keep.png"],
        ),
        t2i_case(
            "--schedule unknown",
            &["--schedule", "zigzag", "-o", "a.png"],
            &["zigzag"],
        ),
        t2i_case(
            "--temperature NaN",
            &["--temperature", "nan", "-o", "a.png"],
            &["temperature"],
        ),
        t2i_case(
            "--temperature words",
            &["--temperature", "hot", "-o", "a.png"],
            &["hot"],
        ),
        t2i_case("--cfg infinite", &["--cfg", "inf", "-o", "a.png"], &["cfg"]),
        t2i_case("--cfg negative", &["--cfg=-2", "-o", "a.png"], &["cfg"]),
        case(
            "--device unknown",
            &[
                "--device", "tpu", "--model", "model", "t2i", "--prompt", "x",
            ],
            &["tpu"],
        ),
        case(
            "empty prompt",
            &["--model", "model", "t2i", "--prompt", "  "],
            &["prompt"],
        ),
        case(
            "bench empty prompt",
            &["--model", "model", "bench", "--prompt", " "],
            &["--prompt", "empty"],
        ),
        case(
            "empty question",
            &["--model", "model", "vqa", "--question", " ", "red.png"],
            &["question"],
        ),
        t2i_case(
            "odd unicode prompt",
            &[
                "--prompt",
                "\u{202e}\u{1F600} x \u{fffd}\u{0301}",
                "-o",
                "u.png",
            ],
            &[],
        )
        .writes(&["u.png"]),
    ];
    run_all(cases);
}

/// The `muddit-parameters` text of the PNG `rel` in the bench.
fn png_params(b: &Bench, rel: &str) -> serde_json::Value {
    let decoder = png::Decoder::new(std::io::Cursor::new(b.read(rel)));
    let reader = decoder.read_info().expect("a PNG");
    let text = reader
        .info()
        .utf8_text
        .iter()
        .find(|t| t.keyword == "muddit-parameters")
        .expect("muddit-parameters")
        .get_text()
        .expect("text");
    serde_json::from_str(&text).expect("json")
}

/// Flags that cannot act on a run say so on stderr, and a PNG records none of them: a negative
/// prompt without guidance (the default model's cfg is 1), a temperature with greedy draws.
#[test]
fn flags_without_effect_are_noted_and_not_recorded() {
    let b = Bench::new();
    let t2i_with = |extra: &[&str]| {
        let mut args = vec!["--model", "model", "t2i", "--prompt", "x", "--steps", "2"];
        args.extend_from_slice(extra);
        let o = muddit(&args, b.tmp.path());
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let err = t2i_with(&["--negative-prompt", "blue", "-o", "off.png"]);
    assert!(err.contains("--negative-prompt has no effect"), "{err}");
    assert_eq!(png_params(&b, "off.png")["negative_prompt"], "");
    let err = t2i_with(&["--negative-prompt", "blue", "--cfg", "3", "-o", "on.png"]);
    assert!(!err.contains("no effect"), "{err}");
    assert_eq!(png_params(&b, "on.png")["negative_prompt"], "blue");
    let o = muddit(
        &[
            "--model",
            "model",
            "caption",
            "--greedy",
            "--temperature",
            "3",
            "--steps",
            "2",
            "red.png",
        ],
        b.tmp.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--temperature has no effect with --greedy"),
        "{}",
        stderr(&o)
    );
}

/// `MUDDIT_ISA` that is not even text is refused as an unknown level is, not ignored.
#[cfg(unix)]
#[test]
fn isa_cap_not_in_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let b = Bench::new();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_muddit"))
        .args(t2i(&["-o", "a.png"]))
        .current_dir(b.tmp.path())
        .env_remove("MUDDIT_MODEL")
        .env(
            "XDG_CACHE_HOME",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/cache"),
        )
        .env("MUDDIT_ISA", std::ffi::OsStr::from_bytes(b"\xff"))
        .output()
        .expect("spawn muddit");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("MUDDIT_ISA") && err.contains("avx2"), "{err}");
    assert!(!b.path("a.png").exists());
}
