//! The CLIP tokenizer against `transformers` 4.48 `CLIPTokenizer` (the slow one the pipeline
//! loads, without ftfy), on the prompts of `tools/fixtures/make_sides_fixtures.py`.
//!
//! The CLIP vocabulary is rebuilt at test time from OpenCLIP's committed
//! `bpe_simple_vocab_16e6.txt.gz`, as the fixture script rebuilt it for the reference.

use muddit_engine::tokenizer::{clip_vocab_from_bpe, write_tokenizer_files, ClipTokenizer};
use muddit_tests::fixture;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("sides/tokenizer/cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json is JSON")
}

/// A tokenizer folder with the real CLIP vocabulary and pad token `pad`.
fn clip_folder(dir: &Path, pad: &str) {
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(fixture("sides/tokenizer/bpe_simple_vocab_16e6.txt.gz")).expect("gz"),
    )
    .read_to_string(&mut text)
    .expect("gunzip");
    let (vocab, merges) = clip_vocab_from_bpe(&text);
    assert_eq!(vocab.len(), 49408);
    write_tokenizer_files(dir, &vocab, &merges, pad).expect("write tokenizer files");
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_i64().expect("id"))
        .collect()
}

/// Compares every case; returns the number of prompts checked.
fn check(tok: &ClipTokenizer, rows: &Value) -> usize {
    let mut failures = Vec::new();
    let rows = rows.as_array().expect("rows");
    for row in rows {
        let prompt = row["prompt"].as_str().expect("prompt");
        let want = ids(&row["ids"]);
        let got = tok.encode_padded(prompt).expect("encode");
        if got != want {
            failures.push(format!(
                "{prompt:?}: padded ids\n  got  {got:?}\n  want {want:?}"
            ));
        }
        let full = tok.encode(prompt).expect("encode");
        if full != ids(&row["full"]) {
            failures.push(format!("{prompt:?}: unpadded ids differ"));
        }
        let decoded = tok.decode(&want, true);
        if decoded != row["decoded"].as_str().expect("decoded") {
            failures.push(format!(
                "{prompt:?}: decoded {decoded:?}, want {:?}",
                row["decoded"]
            ));
        }
    }
    println!("{} prompts, {} mismatches", rows.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    rows.len()
}

#[test]
fn ids_and_decoding_match_clip_tokenizer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cases();
    clip_folder(tmp.path(), c["pad_token"].as_str().expect("pad"));
    let tok = ClipTokenizer::from_dir(tmp.path()).expect("tokenizer");
    assert_eq!(tok.base_vocab_size(), 49408);
    assert_eq!(tok.pad_id(), 0, "pad `!` is id 0");
    let n = check(&tok, &c["cases"]);
    assert!(n >= 60, "only {n} prompts");
}

#[test]
fn mask_token_takes_the_next_id_and_decodes_as_a_word() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cases();
    clip_folder(tmp.path(), "!");
    let mut tok = ClipTokenizer::from_dir(tmp.path()).expect("tokenizer");
    let id = tok.add_mask_token();
    assert_eq!(id as i64, c["mask_id"].as_i64().expect("mask id"));
    assert_eq!(tok.add_mask_token(), id, "adding twice keeps one id");
    check(&tok, &c["mask_cases"]);
}

#[test]
fn pad_token_comes_from_the_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    clip_folder(tmp.path(), "<|endoftext|>");
    let tok = ClipTokenizer::from_dir(tmp.path()).expect("tokenizer");
    assert_eq!(tok.pad_id(), 49407);
    check(&tok, &cases()["eot_pad"]);
}

#[test]
fn a_tokenizer_json_folder_gives_the_same_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    clip_folder(tmp.path(), "!");
    let json = ClipTokenizer::from_dir(tmp.path())
        .expect("tokenizer")
        .to_tokenizer_json()
        .expect("tokenizer.json");
    let only_json = tempfile::tempdir().expect("tempdir");
    std::fs::write(only_json.path().join("tokenizer.json"), json).expect("write");
    for f in ["special_tokens_map.json", "tokenizer_config.json"] {
        std::fs::copy(tmp.path().join(f), only_json.path().join(f)).expect("copy");
    }
    let tok = ClipTokenizer::from_dir(only_json.path()).expect("tokenizer from tokenizer.json");
    check(&tok, &cases()["cases"]);
}
