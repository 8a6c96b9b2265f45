//! Fuzz targets: each takes arbitrary bytes, hands them to one of the engine's readers of
//! untrusted input and must come back with a value or an error: never a panic, an abort, a hang
//! or an allocation the input's size does not justify. The same bodies run as bounded, seeded
//! property tests on stable Rust (`tests/tests/fuzz_props.rs`, in CI) and under `cargo fuzz`
//! where a nightly toolchain exists (`fuzz/`, outside the workspace).

use muddit_engine::config::TransformerConfig;
use muddit_engine::tokenizer::ClipTokenizer;
use muddit_engine::vqvae::VqConfig;
use muddit_engine::weights::Weights;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The committed default model.
pub fn default_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-64")
}

/// `bytes` written as `name` in a fresh temporary folder, then `read` on that path.
fn with_file<T>(name: &str, bytes: &[u8], read: impl FnOnce(&Path) -> T) -> T {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write the fuzz input");
    read(&path)
}

/// A safetensors file: header, offsets, shapes, dtypes; every tensor read back on success.
pub fn safetensors_file(bytes: &[u8]) {
    with_file("x.safetensors", bytes, |path| {
        if let Ok(w) = Weights::open_files(&[path.to_path_buf()]) {
            let _ = w.ensure_all_used();
        }
    });
}

/// A sharded checkpoint's `*.safetensors.index.json` beside one valid shard (`a.safetensors`,
/// holding tensor `t`) and a folder (`sub/`).
pub fn shard_index(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = crate::fuzz::tiny_safetensors();
    std::fs::write(dir.path().join("a.safetensors"), shard).expect("shard");
    std::fs::create_dir(dir.path().join("sub")).expect("sub");
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index, bytes).expect("index");
    if Weights::open_index(&index).is_ok() {
        let parsed: serde_json::Value =
            serde_json::from_slice(bytes).expect("an index that opened");
        for shard in parsed["weight_map"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            let name = shard.as_str().unwrap_or_default();
            assert!(
                Path::new(name)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "the index opened a shard outside its folder: {name:?}"
            );
        }
    }
}

/// A safetensors file holding one f32 tensor `t` of shape `[2]`.
pub fn tiny_safetensors() -> Vec<u8> {
    let header = br#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
    out
}

/// `mask_token_embedding.pth`: the zip container, the pickle, the storage.
pub fn pth_file(bytes: &[u8]) {
    with_file("mask_token_embedding.pth", bytes, |path| {
        let _ = muddit_engine::pth::read_mask_embedding(path, 48);
    });
}

/// A component's `config.json`, read as each of the configs.
pub fn config_json(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let _ = TransformerConfig::from_json(&text);
    let _ = VqConfig::from_json(&text);
    let _ = muddit_engine::clip_text::ClipTextConfig::from_json(&text);
}

/// A prompt through the default model's tokenizer (loaded once), plain and padded.
pub fn tokenizer_input(bytes: &[u8]) {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    let tok = TOKENIZER.get_or_init(|| {
        ClipTokenizer::from_dir(&default_model().join("tokenizer")).expect("default tokenizer")
    });
    let text = String::from_utf8_lossy(bytes);
    if let Ok(ids) = tok.encode_padded(&text) {
        assert_eq!(ids.len(), muddit_engine::tokenizer::MAX_LEN, "padded to 77");
    }
    let _ = tok.encode(&text);
}

/// The seeds each target starts from: valid inputs the mutations are applied to.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let model = default_model();
    let read = |rel: &str| std::fs::read(model.join(rel)).expect("seed file");
    match target {
        "safetensors_file" => vec![
            tiny_safetensors(),
            read("vqvae/diffusion_pytorch_model.safetensors"),
        ],
        "shard_index" => vec![
            br#"{"weight_map":{"t":"a.safetensors"}}"#.to_vec(),
            br#"{"metadata":{},"weight_map":{"t":"sub/../a.safetensors"}}"#.to_vec(),
        ],
        "pth_file" => vec![read("mask_token_embedding.pth")],
        "config_json" => vec![
            read("transformer/config.json"),
            read("vqvae/config.json"),
            read("text_encoder/config.json"),
        ],
        "tokenizer_input" => vec![
            b"a red circle above a blue square".to_vec(),
            "\u{202e}caf\u{e9} \u{1F600}<|endoftext|> "
                .as_bytes()
                .to_vec(),
        ],
        other => panic!("unknown fuzz target {other}"),
    }
}
