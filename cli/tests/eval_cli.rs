//! The default model on a reduced held-out set, through the real binary: accuracy must not
//! drop more than 5 points below the values recorded in `models/shapes-eval/reference.json`
//! (written from a run of the same command when the model was committed).

mod common;

use common::{bytes, fails_with, json_output, muddit, run, stderr, succeeds};
use std::path::Path;

const TOLERANCE: f64 = 0.05;

#[test]
fn reduced_eval_of_the_default_model_keeps_its_accuracy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("models/shapes-eval/reference.json"))
            .expect("reference.json"),
    )
    .expect("reference json");
    let ci = &reference["ci"];
    let limit = ci["limit"].as_u64().expect("ci.limit").to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    // No --model: the committed default model.
    let o = muddit(&["eval", "--limit", &limit, "--json", "-q"], tmp.path());
    let got = json_output(&o);
    for metric in [
        "/t2i/full",
        "/caption/exact",
        "/caption/attributes",
        "/vqa/accuracy",
        "/edit/inpaint/correct",
        "/edit/inpaint/correct_without_paste",
        "/edit/inpaint/kept_half_unchanged",
        "/edit/img2img/correct",
        "/edit/outpaint/correct",
    ] {
        let want = ci.pointer(metric).and_then(|v| v.as_f64());
        let have = got.pointer(metric).and_then(|v| v.as_f64());
        let (want, have) = (want.expect("reference metric"), have.expect("eval metric"));
        println!(
            "{metric}: {have:.3} (recorded {want:.3}, floor {:.3})",
            want - TOLERANCE
        );
        assert!(
            have >= want - TOLERANCE - 1e-9,
            "{metric} dropped: {have:.3} < recorded {want:.3} - {TOLERANCE}"
        );
    }
    println!(
        "eval took {:.1} s",
        got["seconds"]["total"].as_f64().unwrap_or(f64::NAN)
    );
}

/// The README's first command: no --model, the committed default model, its 64 px default.
#[test]
fn default_model_t2i_writes_a_64_px_png() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = run(
        "t2i --prompt 'a red circle on the left' --seed 1 --output out.png -q",
        tmp.path(),
    );
    succeeds(&o);
    let img = image::open(tmp.path().join("out.png"))
        .expect("out.png")
        .to_rgb8();
    assert_eq!(img.dimensions(), (64, 64));
    // The left half holds clearly more red than the right half.
    let red = |x0: u32, x1: u32| {
        (0..64)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = img.get_pixel(x, y);
                p[0] > 160 && p[1] < 80 && p[2] < 80
            })
            .count()
    };
    assert!(
        red(0, 32) > 150 && red(32, 64) < 20,
        "red left {} right {}",
        red(0, 32),
        red(32, 64)
    );
}

/// An installed binary: copied away from the build, with an empty cache, it unpacks its built-in
/// model there once, says so, and writes the same image on the first and the second run; a cache
/// that cannot be written is an error naming it.
#[cfg(unix)]
#[test]
fn the_default_model_is_built_in_and_unpacked_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("muddit");
    std::fs::copy(env!("CARGO_BIN_EXE_muddit"), &bin).expect("copy the binary");
    let cache = tmp.path().join("cache");
    let t2i = |out: &str, cache: &Path| {
        std::process::Command::new(&bin)
            .args([
                "t2i",
                "--prompt",
                "a red circle on the left",
                "--seed",
                "1",
                "--output",
                out,
            ])
            .current_dir(tmp.path())
            .env_remove("MUDDIT_MODEL")
            .env("XDG_CACHE_HOME", cache)
            .output()
            .expect("spawn the copied binary")
    };
    let first = t2i("first.png", &cache);
    succeeds(&first);
    let unpacked = format!(
        "unpacked the built-in shapes-64 into {}",
        cache.join("muddit").display()
    );
    assert!(stderr(&first).contains(&unpacked), "{}", stderr(&first));
    let second = t2i("second.png", &cache);
    succeeds(&second);
    assert!(!stderr(&second).contains("unpacked"), "{}", stderr(&second));
    let read = |name: &str| std::fs::read(tmp.path().join(name)).expect(name);
    assert_eq!(read("first.png"), read("second.png"));
    let text = String::from_utf8_lossy(&read("first.png")).into_owned();
    assert!(
        text.contains("Model: shapes-64,"),
        "the model keeps its name"
    );

    let not_a_folder = tmp.path().join("a-file");
    std::fs::write(&not_a_folder, b"x").expect("write");
    let o = t2i("third.png", &not_a_folder);
    fails_with(&o, &["a-file", "--model"]);
    assert!(!tmp.path().join("third.png").exists());
}

/// A `--limit` that leaves no two-object scene: the default tasks run without the edits and say
/// so; asking for the edits is an error naming `--limit`.
#[test]
fn a_small_limit_leaves_the_edits_out_and_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = muddit(&["eval", "--limit", "1", "--json"], tmp.path());
    let got = json_output(&o);
    assert!(got.get("edit").is_none(), "{got}");
    assert!(got.pointer("/vqa/accuracy").is_some(), "{got}");
    assert!(stderr(&o).contains("no edit scores"), "{}", stderr(&o));
    let o = muddit(
        &["eval", "--limit", "1", "--tasks", "edit", "-q"],
        tmp.path(),
    );
    fails_with(&o, &["--tasks edit", "--limit"]);
}

#[test]
fn eval_errors_name_the_argument() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = muddit(&["eval", "--set", "no-such-set", "-q"], tmp.path());
    fails_with(&o, &["--set", "no-such-set"]);
    let o = muddit(&["eval", "--limit", "0", "-q"], tmp.path());
    fails_with(&o, &["--limit"]);
}

/// A model whose `muddit.json` asks for greedy draws: the default model's files linked beside a
/// `muddit.json` with `"greedy": true`.
#[cfg(unix)]
fn greedy_default_model(dir: &Path) -> std::path::PathBuf {
    let shapes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-64");
    let model = dir.join("greedy-model");
    std::fs::create_dir(&model).expect("model dir");
    for entry in std::fs::read_dir(&shapes).expect("models/shapes-64") {
        let entry = entry.expect("entry");
        if entry.file_name() != "muddit.json" {
            std::os::unix::fs::symlink(entry.path(), model.join(entry.file_name())).expect("link");
        }
    }
    let mut defaults: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shapes.join("muddit.json")).expect("muddit.json"),
    )
    .expect("muddit.json is json");
    defaults["greedy"] = serde_json::Value::Bool(true);
    std::fs::write(model.join("muddit.json"), defaults.to_string()).expect("write muddit.json");
    model
}

/// `--sample` takes back the sampled draws a model's `muddit.json` turned off, and cannot be
/// given with `--greedy`.
#[cfg(unix)]
#[test]
fn sample_overrides_a_greedy_model_default() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = greedy_default_model(tmp.path());
    let model = model.to_str().expect("utf-8 path");
    let greedy_of = |extra: &[&str]| {
        let mut args = vec![
            "eval", "--model", model, "--limit", "1", "--tasks", "caption", "--json", "-q",
        ];
        args.extend_from_slice(extra);
        let o = muddit(&args, tmp.path());
        let got = json_output(&o);
        got["greedy"].as_bool().expect("greedy field")
    };
    assert!(
        greedy_of(&[]),
        "muddit.json's greedy default was not applied"
    );
    assert!(!greedy_of(&["--sample"]), "--sample did not override it");

    let t2i = |extra: &[&str]| {
        let mut args = vec![
            "t2i",
            "--model",
            model,
            "--prompt",
            "a red circle on the left",
            "--seed",
            "1",
            "--steps",
            "2",
            "--overwrite",
            "--output",
            "out.png",
        ];
        args.extend_from_slice(extra);
        let o = muddit(&args, tmp.path());
        succeeds(&o);
        stderr(&o)
    };
    let seed_note = "--seed has no effect with --greedy";
    assert!(
        t2i(&[]).contains(seed_note),
        "t2i did not take the greedy default"
    );
    assert!(
        !t2i(&["--sample"]).contains(seed_note),
        "t2i --sample stayed greedy"
    );

    let o = muddit(
        &["eval", "--model", model, "--greedy", "--sample"],
        tmp.path(),
    );
    fails_with(&o, &["--sample"]);
}

/// `--save-images` refuses up front to replace any image the run would write there, the edit
/// task's included; with `--overwrite` it replaces them with the run's PNGs. A run of tasks that
/// make no image says that nothing is saved.
#[test]
fn save_images_replaces_no_edit_image_unasked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let saved = tmp.path().join("saved");
    std::fs::create_dir(&saved).expect("mkdir");
    let edit = "eval --limit 4 --tasks edit --steps 2 --save-images saved -q";
    for part in ["inpaint", "img2img", "outpaint"] {
        let name = format!("{part}-000.png");
        std::fs::write(saved.join(&name), b"precious").expect("write");
        let o = run(edit, tmp.path());
        fails_with(&o, &[&name, "--overwrite"]);
        let names: Vec<_> = std::fs::read_dir(&saved).expect("ls").flatten().collect();
        assert_eq!(names.len(), 1, "nothing written beside {name}: {names:?}");
        assert_eq!(bytes(&saved, &name), b"precious");
        std::fs::remove_file(saved.join(&name)).expect("rm");
    }
    for part in ["inpaint", "img2img", "outpaint"] {
        std::fs::write(saved.join(format!("{part}-000.png")), b"precious").expect("write");
    }
    succeeds(&run(&format!("{edit} --overwrite"), tmp.path()));
    for part in ["inpaint", "img2img", "outpaint"] {
        let img = image::open(saved.join(format!("{part}-000.png"))).expect("a PNG");
        assert_eq!((img.width(), img.height()), (64, 64), "{part}");
    }
    let o = run(
        "eval --limit 1 --tasks caption --i2t-steps 2 --save-images none",
        tmp.path(),
    );
    succeeds(&o);
    assert!(stderr(&o).contains("nothing saved"), "{}", stderr(&o));
    assert!(!tmp.path().join("none").exists());
}

/// `--dtype bf16` runs the eval in bf16 arithmetic (its images differ from f32's) and the report
/// says which arithmetic ran.
#[test]
fn eval_honours_the_dtype_and_reports_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut images = Vec::new();
    for dtype in ["f32", "bf16"] {
        let o = run(
            &format!("--dtype {dtype} eval --limit 1 --tasks t2i --steps 2 --save-images {dtype} --json -q"),
            tmp.path(),
        );
        let got = json_output(&o);
        assert_eq!(got["dtype"], dtype, "{got}");
        assert!(got.pointer("/cpu_kernels/isa").is_some(), "{got}");
        images.push(bytes(&tmp.path().join(dtype), "t2i-000.png"));
    }
    assert_ne!(images[0], images[1], "--dtype bf16 gave the f32 image");
}
