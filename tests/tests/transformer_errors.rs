//! Bad checkpoints and bad inputs give errors that name the file, tensor or value; never a panic.

use muddit_engine::config::TransformerConfig;
use muddit_engine::debug::transformer_forward;
use muddit_engine::model_dir::load_transformer;
use muddit_engine::random::{random_inputs, write_random_transformer, WeightDtype};
use muddit_engine::tensor_io::{HostTensor, TensorFile, Values};
use muddit_engine::{Error, Mmdit, MmditInput};
use muddit_tests::fixture;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::fs;
use std::path::{Path, PathBuf};

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// A copy of the `muddit_b2` fixture's transformer folder in a temporary directory.
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("transformer");
    fs::create_dir_all(&dir).expect("mkdir");
    let src = fixture("engine/muddit_b2/transformer");
    for f in ["config.json", WEIGHTS] {
        fs::copy(src.join(f), dir.join(f)).expect("copy");
    }
    (tmp, dir)
}

/// Rewrites the weights file, letting `edit` drop or change tensors: it receives
/// (name, dtype, shape, bytes) and returns the entry to write, or None to drop it.
fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) {
    let path = dir.join(WEIGHTS);
    let bytes = fs::read(&path).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid fixture");
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, v)| {
            edit(&name, v.dtype(), v.shape().to_vec(), v.data().to_vec())
                .map(|(d, s, b)| (name, d, s, b))
        })
        .collect();
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    safetensors::serialize_to_file(views, None, &path).expect("write");
}

fn load_err(dir: &Path) -> Error {
    match load_transformer(dir) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = copy_fixture();
    rewrite_weights(&dir, |n, d, s, b| {
        (n != "transformer_blocks.1.attn.to_k.bias").then_some((d, s, b))
    });
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::MissingWeight { name, .. } if name == "transformer_blocks.1.attn.to_k.bias"),
        "{e}"
    );
    assert!(e.to_string().contains(WEIGHTS), "{e}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let (_tmp, dir) = copy_fixture();
    rewrite_weights(&dir, |n, d, s, b| {
        Some((
            d,
            if n == "context_embedder.weight" {
                vec![s[1], s[0]]
            } else {
                s
            },
            b,
        ))
    });
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::ShapeMismatch { name, expected, got, .. } if name == "context_embedder.weight" && expected == &[64, 48] && got == &[48, 64]),
        "{e}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let (_tmp, dir) = copy_fixture();
    rewrite_weights(&dir, |n, d, s, b| {
        if n == "project_to_hidden.weight" {
            let wide: Vec<u8> = b
                .chunks_exact(4)
                .flat_map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).to_le_bytes())
                .collect();
            Some((Dtype::F64, s, wide))
        } else {
            Some((d, s, b))
        }
    });
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::UnsupportedDtype { name, dtype, .. } if name == "project_to_hidden.weight" && dtype == "F64"),
        "{e}"
    );
}

#[test]
fn truncated_file_is_reported_with_its_path() {
    let (_tmp, dir) = copy_fixture();
    let path = dir.join(WEIGHTS);
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::Safetensors { path: p, .. } if p == &path),
        "{e}"
    );
}

#[test]
fn corrupt_header_is_reported() {
    let (_tmp, dir) = copy_fixture();
    let path = dir.join(WEIGHTS);
    let mut bytes = fs::read(&path).expect("read");
    bytes[8..40].copy_from_slice(b"this is not a safetensors header");
    fs::write(&path, &bytes).expect("write");
    assert!(matches!(load_err(&dir), Error::Safetensors { .. }));
    fs::write(&path, b"abc").expect("write");
    assert!(matches!(load_err(&dir), Error::Safetensors { .. }));
}

fn edit_config(dir: &Path, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
    edit(v.as_object_mut().expect("object"));
    fs::write(&path, v.to_string()).expect("write");
}

/// Loading a copy of the fixture whose config has `edits` fails with an error `refusal`
/// accepts.
fn refused_after(edits: &[(&str, serde_json::Value)], refusal: impl Fn(&Error) -> bool) {
    let (_tmp, dir) = copy_fixture();
    edit_config(&dir, |m| {
        for (key, value) in edits {
            m.insert(key.to_string(), value.clone());
        }
    });
    let e = load_err(&dir);
    assert!(refusal(&e), "{e}");
}

#[test]
fn config_with_fewer_blocks_than_the_weights_is_refused() {
    refused_after(
        &[("num_layers", serde_json::json!(1))],
        |e| matches!(e, Error::UnexpectedWeights { example, .. } if example.starts_with("transformer_blocks.1.")),
    );
}

#[test]
fn config_with_more_blocks_than_the_weights_is_refused() {
    refused_after(
        &[("num_single_layers", serde_json::json!(3))],
        |e| matches!(e, Error::MissingWeight { name, .. } if name.starts_with("single_transformer_blocks.2.")),
    );
}

#[test]
fn config_with_a_different_head_split_is_refused() {
    // 4 heads x 16 keeps D = 64, so only the per-head norm weights show the mismatch.
    refused_after(
        &[
            ("num_attention_heads", serde_json::json!(4)),
            ("attention_head_dim", serde_json::json!(16)),
            ("axes_dims_rope", serde_json::json!([4, 6, 6])),
        ],
        |e| matches!(e, Error::ShapeMismatch { name, .. } if name.ends_with("norm_q.weight")),
    );
}

#[test]
fn unknown_or_unsupported_config_keys_are_named() {
    for (key, value, needle) in [
        ("use_swiglu", serde_json::json!(true), "use_swiglu"),
        (
            "guidance_embeds",
            serde_json::json!(true),
            "guidance_embeds",
        ),
        ("t5_dim", serde_json::json!(4096), "t5_dim"),
        (
            "axes_dims_rope",
            serde_json::json!([8, 8, 8]),
            "axes_dims_rope",
        ),
        (
            "_class_name",
            serde_json::json!("UNet2DModel"),
            "UNet2DModel",
        ),
        ("num_layers", serde_json::json!("two"), "two"),
    ] {
        let (_tmp, dir) = copy_fixture();
        edit_config(&dir, |m| {
            m.insert(key.into(), value.clone());
        });
        let e = load_err(&dir);
        assert!(matches!(e, Error::Config { .. }), "{key}: {e}");
        assert!(
            e.to_string().contains(needle) && e.to_string().contains("config.json"),
            "{key}: {e}"
        );
    }
}

#[test]
fn missing_folder_and_missing_weights_are_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        load_err(&tmp.path().join("nowhere")),
        Error::ModelFolder { .. }
    ));
    let (_tmp, dir) = copy_fixture();
    fs::remove_file(dir.join(WEIGHTS)).expect("rm");
    let e = load_err(&dir);
    assert!(matches!(e, Error::ModelFolder { .. }), "{e}");
}

fn tiny_model() -> (tempfile::TempDir, Mmdit) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = TransformerConfig::preset("tiny").expect("preset");
    write_random_transformer(
        &cfg,
        &tmp.path().join("transformer"),
        WeightDtype::F32,
        7,
        None,
    )
    .expect("write");
    let model = load_transformer(tmp.path()).expect("load");
    (tmp, model)
}

fn input<'a>(
    ids: &'a [i64],
    h: usize,
    w: usize,
    text: &'a [f32],
    pooled: &'a [f32],
    micro: &'a [f32],
) -> MmditInput<'a> {
    MmditInput {
        image_tokens: ids,
        batch: 1,
        height: h,
        width: w,
        encoder_hidden_states: text,
        text_len: 77,
        pooled_projections: pooled,
        timestep: 0.5,
        micro_conds: micro,
    }
}

#[test]
fn bad_forward_inputs_are_named() {
    let (_tmp, model) = tiny_model();
    let cfg = &model.cfg;
    let text = vec![0.1; 77 * cfg.joint_attention_dim];
    let pooled = vec![0.1; cfg.pooled_projection_dim];
    let micro = [64.0, 64.0, 0.0, 0.0, 6.0];

    let odd = vec![0i64; 11 * 12];
    let e = model
        .forward(&input(&odd, 11, 12, &text, &pooled, &micro))
        .err()
        .expect("odd grid must fail");
    assert!(
        e.to_string().contains("11x12") && e.to_string().contains("image_tokens"),
        "{e}"
    );

    let mut ids = vec![0i64; 12 * 12];
    ids[5] = cfg.vocab_size as i64;
    let e = model
        .forward(&input(&ids, 12, 12, &text, &pooled, &micro))
        .err()
        .expect("id out of range must fail");
    assert!(
        e.to_string().contains(&format!("id {}", cfg.vocab_size)),
        "{e}"
    );
    ids[5] = -1;
    assert!(model
        .forward(&input(&ids, 12, 12, &text, &pooled, &micro))
        .is_err());

    ids[5] = 0;
    let e = model
        .forward(&input(&ids, 12, 12, &text[1..], &pooled, &micro))
        .err()
        .expect("short text must fail");
    assert!(e.to_string().contains("encoder_hidden_states"), "{e}");
    let e = model
        .forward(&input(&ids, 12, 12, &text, &pooled[1..], &micro))
        .err()
        .expect("short pooled must fail");
    assert!(e.to_string().contains("pooled_projections"), "{e}");
    let e = model
        .forward(&input(&ids, 12, 12, &text, &pooled, &micro[..4]))
        .err()
        .expect("short micro_conds must fail");
    assert!(e.to_string().contains("micro_conds"), "{e}");
    let mut nan_t = input(&ids, 12, 12, &text, &pooled, &micro);
    nan_t.timestep = f32::NAN;
    assert!(model
        .forward(&nan_t)
        .err()
        .expect("NaN timestep must fail")
        .to_string()
        .contains("timestep"));
}

#[test]
fn bad_input_files_are_named() {
    let (tmp, model) = tiny_model();
    let path = tmp.path().join("in.safetensors");
    let mut tensors = random_inputs(&model.cfg, 1, 8, 77, 1);
    tensors.insert(
        "image_tokens".into(),
        HostTensor::f32(vec![1, 8, 8], vec![0.0; 64]),
    );
    muddit_engine::tensor_io::write(&path, &tensors).expect("write");
    let e = transformer_forward(&model, &TensorFile::read(&path).expect("read"))
        .err()
        .expect("float ids must fail");
    assert!(
        e.to_string().contains("image_tokens") && e.to_string().contains("integer"),
        "{e}"
    );

    tensors.remove("image_tokens");
    muddit_engine::tensor_io::write(&path, &tensors).expect("write");
    let e = transformer_forward(&model, &TensorFile::read(&path).expect("read"))
        .err()
        .expect("missing ids must fail");
    assert!(e.to_string().contains("image_tokens"), "{e}");
}

#[test]
fn sharded_bf16_and_single_file_checkpoints_agree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = TransformerConfig::preset("tiny").expect("preset");
    let (single, sharded) = (tmp.path().join("single"), tmp.path().join("sharded"));
    write_random_transformer(
        &cfg,
        &single.join("transformer"),
        WeightDtype::Bf16,
        3,
        None,
    )
    .expect("write");
    write_random_transformer(
        &cfg,
        &sharded.join("transformer"),
        WeightDtype::Bf16,
        3,
        Some(200_000),
    )
    .expect("write");
    let shards = fs::read_dir(sharded.join("transformer"))
        .expect("ls")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains("-of-"))
        })
        .count();
    assert!(shards >= 3, "expected several shards, got {shards}");
    assert!(sharded
        .join("transformer")
        .join("diffusion_pytorch_model.safetensors.index.json")
        .is_file());

    let inputs = random_inputs(&cfg, 2, 8, 77, 5);
    let run = |dir: &Path| {
        // The model root and the transformer folder itself both load.
        let model = load_transformer(dir).expect("load");
        let path = dir.join("in.safetensors");
        muddit_engine::tensor_io::write(&path, &inputs).expect("write");
        let out =
            transformer_forward(&model, &TensorFile::read(&path).expect("read")).expect("forward");
        match &out["image_logits"].values {
            Values::F32(v) => v.clone(),
            Values::I64(_) => panic!("logits must be floats"),
        }
    };
    let a = run(&single);
    let b = run(&sharded.join("transformer"));
    assert!(a.iter().all(|v| v.is_finite()));
    assert_eq!(
        a, b,
        "a sharded checkpoint must give exactly the single-file result"
    );
}

#[test]
fn index_naming_a_missing_shard_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = TransformerConfig::preset("tiny").expect("preset");
    let dir = tmp.path().join("transformer");
    write_random_transformer(&cfg, &dir, WeightDtype::F32, 3, Some(200_000)).expect("write");
    let victim = fs::read_dir(&dir)
        .expect("ls")
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().contains("-00002-of-"))
        .expect("shard 2");
    fs::remove_file(victim.path()).expect("rm");
    let e = load_err(tmp.path());
    assert!(
        matches!(&e, Error::Io { path, .. } if path == &victim.path()),
        "{e}"
    );
}
