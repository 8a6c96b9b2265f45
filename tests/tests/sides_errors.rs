//! Errors of the text and image sides: each names the file or value at fault.

use muddit_engine::clip_text::load_text_encoder;
use muddit_engine::image_io::load_image;
use muddit_engine::pth::{
    mask_embedding_path, read_mask_embedding, read_pth_tensor, write_pth_vector,
};
use muddit_engine::tokenizer::{synthetic_vocab, write_tokenizer_files, ClipTokenizer};
use muddit_engine::vqvae::load_vqvae;
use muddit_engine::Error;
use muddit_tests::fixture;

/// Asserts that message `m` contains every one of `needles`.
fn says(m: &str, needles: &[&str]) {
    for needle in needles {
        assert!(m.contains(needle), "{needle:?} not in: {m}");
    }
}

/// Asserts that `$result` fails with an `Error::$kind` whose message contains every one of
/// `$needles`.
macro_rules! fails_as {
    ($result:expr, $kind:ident, $needles:expr) => {{
        let (e, m) = message($result);
        assert!(matches!(e, Error::$kind { .. }), "{m}");
        says(&m, &$needles);
    }};
}

/// A folder holding the files of a synthetic tokenizer of `size` entries, `extra_merge`
/// appended to its merges.
fn tokenizer_folder(size: usize, extra_merge: Option<(&str, &str)>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (vocab, mut merges) = synthetic_vocab(size);
    merges.extend(extra_merge.map(|(a, b)| (a.to_string(), b.to_string())));
    write_tokenizer_files(tmp.path(), &vocab, &merges, "!").expect("write");
    tmp
}

fn message<T>(r: Result<T, Error>) -> (Error, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let m = e.to_string();
            println!("{m}");
            (e, m)
        }
    }
}

#[test]
fn missing_tokenizer_files_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(tmp.path().join("tokenizer")).expect("mkdir");
    std::fs::write(tmp.path().join("tokenizer/vocab.json"), "{}").expect("write");
    fails_as!(
        ClipTokenizer::from_dir(tmp.path()),
        ModelFolder,
        ["merges.txt", "tokenizer.json"]
    );
}

#[test]
fn a_merge_outside_the_vocabulary_is_an_error() {
    let tmp = tokenizer_folder(600, Some(("q", "zz")));
    fails_as!(
        ClipTokenizer::from_dir(tmp.path()),
        Tokenizer,
        ["merges.txt", "`q zz`"]
    );
}

#[test]
fn a_vocabulary_that_does_not_fit_the_text_encoder_is_an_error() {
    let tmp = tokenizer_folder(700, None);
    let tok = ClipTokenizer::from_dir(tmp.path()).expect("tokenizer");
    assert_eq!(tok.base_vocab_size(), 700);
    let encoder = load_text_encoder(&fixture("sides/clip_gelu_eos2")).expect("text encoder");
    fails_as!(
        tok.check_text_encoder(encoder.cfg.vocab_size, encoder.vocab_rows()),
        Tokenizer,
        ["700", "600", "vocab.json"]
    );

    let tmp = tokenizer_folder(600, None);
    let tok = ClipTokenizer::from_dir(tmp.path()).expect("tokenizer");
    tok.check_text_encoder(encoder.cfg.vocab_size, encoder.vocab_rows())
        .expect("600 tokens fit a 600-row text encoder");
    tok.check_text_encoder(600, 601)
        .expect("a saved <mask> row is fine");
}

#[test]
fn unreadable_images_name_their_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fake = tmp.path().join("not-an-image.png");
    std::fs::write(&fake, b"this is text, not a PNG").expect("write");
    fails_as!(load_image(&fake, 32, 32), Image, ["not-an-image.png"]);

    let png = std::fs::read(fixture("sides/images/pattern.png")).expect("png");
    let cut = tmp.path().join("truncated.png");
    std::fs::write(&cut, &png[..png.len() / 2]).expect("write");
    fails_as!(load_image(&cut, 32, 32), Image, ["truncated.png"]);

    let missing = tmp.path().join("missing.jpg");
    fails_as!(load_image(&missing, 32, 32), Io, ["missing.jpg"]);
}

#[test]
fn corrupt_pth_files_are_errors() {
    let good =
        std::fs::read(fixture("sides/clip_gelu_eos2/mask_token_embedding.pth")).expect("pth");
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in [
        ("truncated.pth", good[..good.len() - 100].to_vec()),
        ("garbage.pth", b"PK\x03\x04 not really a zip".to_vec()),
        ("empty.pth", Vec::new()),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        fails_as!(read_mask_embedding(&path, 32), Pth, [name]);
    }
    // A storage whose length disagrees with the pickle: rewrite the data entry shorter.
    let path = tmp.path().join("short_storage.pth");
    {
        let mut src = zip::ZipArchive::new(std::io::Cursor::new(good.clone())).expect("zip");
        let mut out = zip::ZipWriter::new(std::fs::File::create(&path).expect("create"));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for i in 0..src.len() {
            let mut f = src.by_index(i).expect("entry");
            let name = f.name().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes).expect("read");
            if name.ends_with("/data/0") {
                bytes.truncate(bytes.len() - 4);
            }
            out.start_file(name, opts).expect("start");
            std::io::Write::write_all(&mut out, &bytes).expect("write");
        }
        out.finish().expect("finish");
    }
    fails_as!(read_mask_embedding(&path, 32), Pth, ["bytes"]);
}

#[test]
fn a_mask_embedding_of_the_wrong_width_is_an_error() {
    let path = fixture("sides/clip_gelu_eos2/mask_token_embedding.pth");
    let (shape, values) = read_pth_tensor(&path).expect("read");
    assert_eq!((shape, values.len()), (vec![32], 32));
    fails_as!(read_mask_embedding(&path, 1024), Pth, ["1024", "[32]"]);
}

#[test]
fn captioning_without_the_mask_embedding_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fails_as!(
        mask_embedding_path(tmp.path()),
        ModelFolder,
        ["mask_token_embedding.pth", "never replaced by a random"]
    );
}

#[test]
fn written_pth_files_read_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("m.pth");
    let values: Vec<f32> = (0..48).map(|i| i as f32 * 0.25 - 3.0).collect();
    write_pth_vector(&path, &values).expect("write");
    assert_eq!(read_mask_embedding(&path, 48).expect("read"), values);
}

#[test]
fn vq_inputs_out_of_range_are_errors() {
    let model = load_vqvae(&fixture("sides/vq_attn_3level")).expect("vqvae");
    let (_, m) = message(model.decode(&[0, 1, 32, 3], 1, 2, 2));
    says(&m, &["id 32", "0..32"]);
    let (_, m) = message(model.encode(&vec![0.5; 3 * 30 * 24], 1, 30, 24));
    says(&m, &["30 x 24", "4"]);
}

#[test]
fn text_encoder_rejects_ids_past_its_table() {
    let model = load_text_encoder(&fixture("sides/clip_gelu_eos2")).expect("text encoder");
    let (_, m) = message(model.forward(&[1, 5, 600, 2], 1));
    says(&m, &["600", "0..600"]);
}
