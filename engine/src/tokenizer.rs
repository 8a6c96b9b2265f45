//! The CLIP BPE tokenizer, as `transformers`' `CLIPTokenizer` (the slow one the pipeline loads)
//! computes it, on the `tokenizers` crate.
//!
//! Text is first cleaned as `CLIPTokenizer` does without `ftfy` (which Muddit's requirements do
//! not install), through its `BasicTokenizer(strip_accents=False, do_split_on_punc=False)`:
//! control characters and U+FFFD dropped, whitespace made plain spaces, spaces put around CJK
//! ideographs, NFC, split on whitespace, each word lower-cased, words joined by one space. The
//! `tokenizers` pipeline then splits on the CLIP regex, maps bytes to the byte-level alphabet and
//! runs the BPE with the `</w>` end-of-word suffix; special and added tokens (`<mask>`) are cut
//! out first. `<|startoftext|>` and `<|endoftext|>` frame at most 75 tokens, then the pad token
//! the files name fills the row to 77.
//!
//! Files: `vocab.json` + `merges.txt` (+ `special_tokens_map.json`, `tokenizer_config.json`) as
//! `CLIPTokenizer` reads them (only the first 48,894 merges count, as there); else
//! `tokenizer.json`, whose own normalizer and pre-tokenizer then run after the cleaning above.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};
use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

/// Tokens per row the text encoder sees.
pub const MAX_LEN: usize = 77;
/// Text tokens a sequence holds between its start and end tokens.
pub const TEXT_TOKENS: usize = MAX_LEN - 2;
/// The token Muddit adds for captioning.
pub const MASK_TOKEN: &str = "<mask>";
/// `CLIPTokenizer` keeps merges `[1 : 49152 - 256 - 2 + 1]` of `merges.txt`.
const MAX_MERGES: usize = 49152 - 256 - 2;
/// Largest BPE merges text read (OpenCLIP's is 1.4 MB unpacked).
const MAX_BPE_BYTES: u64 = 64 << 20;
/// The split `CLIPTokenizer` applies before the BPE.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The special tokens of a tokenizer folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: String,
    pub eos: String,
    pub unk: String,
    pub pad: String,
}

impl SpecialTokens {
    /// Each token with its key in `special_tokens_map.json` / `tokenizer_config.json`.
    fn slots(&mut self) -> [(&'static str, &mut String); 4] {
        [
            ("bos_token", &mut self.bos),
            ("eos_token", &mut self.eos),
            ("unk_token", &mut self.unk),
            ("pad_token", &mut self.pad),
        ]
    }
}

impl Default for SpecialTokens {
    /// `CLIPTokenizer`'s defaults.
    fn default() -> Self {
        SpecialTokens {
            bos: "<|startoftext|>".into(),
            eos: "<|endoftext|>".into(),
            unk: "<|endoftext|>".into(),
            pad: "<|endoftext|>".into(),
        }
    }
}

pub struct ClipTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pub special: SpecialTokens,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    /// Ids `decode` drops with `skip_special_tokens` (bos, eos, unk, pad).
    special_ids: HashSet<u32>,
    /// Added tokens that are not special (`<mask>`): decoded as words of their own.
    added: HashMap<u32, String>,
    /// id -> token of the BPE vocabulary.
    id_to_token: HashMap<u32, String>,
    byte_decoder: HashMap<char, u8>,
    clean_up_tokenization_spaces: bool,
    /// Tokens of the BPE vocabulary (without added tokens).
    base_vocab: usize,
}

/// GPT-2's byte -> printable character table (`bytes_to_unicode`).
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).unwrap_or('?')))
        .collect()
}

/// `BasicTokenizer._is_control`: category C*, but tab, newline and carriage return.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// `BasicTokenizer._is_whitespace`: space, tab, newline, carriage return, or category Zs.
fn is_basic_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || c.is_separator_space()
}

/// `BasicTokenizer._is_chinese_char`.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// The text cleaning of `CLIPTokenizer` without ftfy (see the module comment).
pub fn basic_clean(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if is_basic_whitespace(c) {
            s.push(' ');
        } else if is_cjk(c) {
            s.push(' ');
            s.push(c);
            s.push(' ');
        } else {
            s.push(c);
        }
    }
    let s: String = s.nfc().collect();
    s.split(char::is_whitespace)
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A token entry of `special_tokens_map.json` / `tokenizer_config.json`: a string or
/// `{"content": ...}`.
fn token_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(m) => m.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    crate::limits::regular_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The `tokenizer/` folder of `dir`, which may be the model root or that folder itself.
pub fn tokenizer_dir(dir: &Path) -> Result<PathBuf> {
    let has_files = |d: &Path| {
        d.join("tokenizer.json").is_file()
            || (d.join("vocab.json").is_file() && d.join("merges.txt").is_file())
    };
    if has_files(&dir.join("tokenizer")) {
        return Ok(dir.join("tokenizer"));
    }
    if has_files(dir) {
        return Ok(dir.to_path_buf());
    }
    let missing: Vec<&str> = ["vocab.json", "merges.txt", "tokenizer.json"]
        .into_iter()
        .filter(|f| !dir.join("tokenizer").join(f).is_file() && !dir.join(f).is_file())
        .collect();
    Err(Error::ModelFolder {
        path: dir.to_path_buf(),
        message: format!(
            "no tokenizer files: need `vocab.json` and `merges.txt`, or `tokenizer.json`, in `tokenizer/` or the folder itself (missing: {})",
            missing.join(", ")
        ),
    })
}

impl ClipTokenizer {
    /// Loads the tokenizer of a model folder (root or `tokenizer/`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let dir = tokenizer_dir(dir)?;
        let mut special = SpecialTokens::default();
        let mut clean_up = false;
        // The file each special token was last set by, for messages.
        let mut set_by: HashMap<&'static str, PathBuf> = HashMap::new();
        for file in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(file);
            if !path.is_file() {
                continue;
            }
            let v = read_json(&path)?;
            for (key, slot) in special.slots() {
                if let Some(token) = v.get(key).and_then(token_string) {
                    *slot = token;
                    set_by.insert(key, path.clone());
                }
            }
            if let Some(b) = v
                .get("clean_up_tokenization_spaces")
                .and_then(|b| b.as_bool())
            {
                clean_up = b;
            }
        }
        let (inner, path) = if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file()
        {
            (
                Self::from_vocab_merges(&dir, &special)?,
                dir.join("vocab.json"),
            )
        } else {
            let path = dir.join("tokenizer.json");
            let t = Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
            (t, path)
        };
        let tokenizer = Self::finish(inner, path, special, clean_up)?;
        tokenizer.check_special_ids(&set_by)?;
        Ok(tokenizer)
    }

    /// Refuses special tokens outside the BPE vocabulary: `add_special_tokens` gives them ids
    /// past it, which no row of the text encoder holds. The error names the file that set the
    /// token (`set_by`), else the vocabulary's.
    fn check_special_ids(&self, set_by: &HashMap<&'static str, PathBuf>) -> Result<()> {
        let s = &self.special;
        let tokens = [
            ("bos_token", &s.bos),
            ("eos_token", &s.eos),
            ("unk_token", &s.unk),
            ("pad_token", &s.pad),
        ];
        for (key, token) in tokens {
            match self.inner.token_to_id(token) {
                Some(id) if (id as usize) < self.base_vocab => {}
                _ => {
                    return Err(Error::Tokenizer {
                        path: set_by.get(key).unwrap_or(&self.path).clone(),
                        message: format!(
                            "`{key}` `{token}` is not in the vocabulary of {} tokens",
                            self.base_vocab
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    /// The BPE of `vocab.json` + `merges.txt` with the CLIP pre-tokenizer.
    fn from_vocab_merges(dir: &Path, special: &SpecialTokens) -> Result<Tokenizer> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let bad = |path: &Path, message: String| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let vocab: HashMap<String, u32> = serde_json::from_value(read_json(&vocab_path)?)
            .map_err(|e| bad(&vocab_path, format!("not a token -> id map: {e}")))?;
        crate::limits::regular_file(&merges_path)?;
        let text = std::fs::read_to_string(&merges_path).map_err(|e| Error::io(&merges_path, e))?;
        let mut merges = Vec::new();
        for (i, line) in text.trim().split('\n').skip(1).take(MAX_MERGES).enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
                _ => {
                    return Err(bad(
                        &merges_path,
                        format!("line {}: expected two tokens, found {line:?}", i + 2),
                    ))
                }
            }
        }
        for (a, b) in &merges {
            for t in [a, b, &format!("{a}{b}")] {
                if !vocab.contains_key(t) {
                    return Err(bad(
                        &merges_path,
                        format!("merge `{a} {b}` uses `{t}`, which vocab.json does not have"),
                    ));
                }
            }
        }
        if !vocab.contains_key(&special.unk) {
            return Err(bad(
                &vocab_path,
                format!(
                    "the unknown token `{}` is not in the vocabulary",
                    special.unk
                ),
            ));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            .unk_token(special.unk.clone())
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(|e| bad(&merges_path, e.to_string()))?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| bad(&merges_path, e.to_string()))?;
        let pre = Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ]);
        let mut t = Tokenizer::new(bpe);
        t.with_pre_tokenizer(Some(pre));
        Ok(t)
    }

    fn finish(
        mut inner: Tokenizer,
        path: PathBuf,
        special: SpecialTokens,
        clean_up_tokenization_spaces: bool,
    ) -> Result<Self> {
        // Framing, truncation and padding are ours (`encode_padded`), whatever a tokenizer.json says.
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?
            .with_padding(None);
        let base_vocab = inner.get_vocab_size(false);
        let names = [&special.bos, &special.eos, &special.unk, &special.pad];
        let tokens: Vec<AddedToken> = names
            .iter()
            .map(|s| AddedToken::from(s.to_string(), true))
            .collect();
        inner.add_special_tokens(&tokens);
        let id = |name: &String| {
            inner.token_to_id(name).ok_or_else(|| Error::Tokenizer {
                path: path.clone(),
                message: format!("special token `{name}` is not in the vocabulary"),
            })
        };
        let (bos_id, eos_id, unk_id, pad_id) = (
            id(&special.bos)?,
            id(&special.eos)?,
            id(&special.unk)?,
            id(&special.pad)?,
        );
        let id_to_token = inner
            .get_vocab(true)
            .into_iter()
            .map(|(t, i)| (i, t))
            .collect();
        let added = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| !t.special)
            .map(|(i, t)| (i, t.content))
            .collect();
        Ok(ClipTokenizer {
            inner,
            path,
            special,
            bos_id,
            eos_id,
            pad_id,
            special_ids: [bos_id, eos_id, unk_id, pad_id].into_iter().collect(),
            added,
            id_to_token,
            byte_decoder: bytes_to_unicode()
                .into_iter()
                .map(|(b, c)| (c, b))
                .collect(),
            clean_up_tokenization_spaces,
            base_vocab,
        })
    }

    /// The tokenizer as a `tokenizer.json` (BPE, CLIP pre-tokenizer, special tokens; the text
    /// cleaning of `basic_clean` is not part of it and still runs first when it is loaded back).
    pub fn to_tokenizer_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// Tokens of the vocabulary files (what the text encoder's config must count).
    pub fn base_vocab_size(&self) -> usize {
        self.base_vocab
    }

    /// Tokens including added ones (`<mask>` once added).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id of `token`, if the vocabulary or the added tokens hold it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Adds `<mask>` as a (non-special) token with the next free id, as the pipeline's
    /// `tokenizer.add_tokens("<mask>")`, and returns its id.
    pub fn add_mask_token(&mut self) -> u32 {
        if let Some(id) = self.inner.token_to_id(MASK_TOKEN) {
            return id;
        }
        self.inner
            .add_tokens(&[AddedToken::from(MASK_TOKEN, false)]);
        let id = self
            .inner
            .token_to_id(MASK_TOKEN)
            .unwrap_or(self.vocab_size() as u32 - 1);
        self.added.insert(id, MASK_TOKEN.into());
        self.id_to_token.insert(id, MASK_TOKEN.into());
        id
    }

    /// The BPE ids of `text`, without start/end tokens, not truncated.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(basic_clean(text), false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot encode {text:?}: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `tokenizer.encode(text)`: `<|startoftext|> ids <|endoftext|>`, not truncated or padded
    /// (how the pipeline frames a VQA question).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let ids = self.tokenize(text)?;
        let mut out = Vec::with_capacity(ids.len() + 2);
        out.push(self.bos_id as i64);
        out.extend(ids.iter().map(|&i| i as i64));
        out.push(self.eos_id as i64);
        Ok(out)
    }

    /// `tokenizer(text, padding="max_length", truncation=True, max_length=77)`: start token, at
    /// most 75 text tokens, end token, pad tokens up to 77.
    pub fn encode_padded(&self, text: &str) -> Result<Vec<i64>> {
        let ids = self.tokenize(text)?;
        let mut out = Vec::with_capacity(MAX_LEN);
        out.push(self.bos_id as i64);
        out.extend(ids.iter().take(TEXT_TOKENS).map(|&i| i as i64));
        out.push(self.eos_id as i64);
        out.resize(MAX_LEN, self.pad_id as i64);
        Ok(out)
    }

    /// What [`Self::encode_padded`] cuts from `text`: its token count and the cut tokens as
    /// text, or `None` when the text fits the [`TEXT_TOKENS`] of the window.
    pub fn truncated_tail(&self, text: &str) -> Result<Option<(usize, String)>> {
        let ids = self.tokenize(text)?;
        let Some(tail) = ids.get(TEXT_TOKENS..).filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let tail: Vec<i64> = tail.iter().map(|&i| i as i64).collect();
        Ok(Some((ids.len(), self.decode(&tail, true))))
    }

    /// Byte-level tokens to text: bytes back through the alphabet, UTF-8 with replacement,
    /// `</w>` to spaces, trimmed (`convert_tokens_to_string`).
    fn tokens_to_string(&self, tokens: &[&str]) -> String {
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|t| t.chars())
            .filter_map(|c| self.byte_decoder.get(&c).copied())
            .collect();
        String::from_utf8_lossy(&bytes)
            .replace("</w>", " ")
            .trim()
            .to_string()
    }

    /// `tokenizer.decode(ids, skip_special_tokens)`: added tokens stand as words of their own,
    /// joined by single spaces; unknown ids are skipped.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut run: Vec<&str> = Vec::new();
        for &id in ids {
            let Ok(id) = u32::try_from(id) else { continue };
            if skip_special_tokens && self.special_ids.contains(&id) {
                continue;
            }
            if let Some(word) = self.added.get(&id) {
                if !run.is_empty() {
                    let s = self.tokens_to_string(&run);
                    if !s.is_empty() {
                        parts.push(s);
                    }
                    run.clear();
                }
                parts.push(word.clone());
            } else if let Some(t) = self.id_to_token.get(&id) {
                run.push(t);
            }
        }
        if !run.is_empty() {
            parts.push(self.tokens_to_string(&run));
        }
        let text = parts.join(" ");
        if self.clean_up_tokenization_spaces {
            text.replace(" .", ".")
                .replace(" ?", "?")
                .replace(" !", "!")
                .replace(" ,", ",")
                .replace(" ' ", "'")
                .replace(" n't", "n't")
                .replace(" 'm", "'m")
                .replace(" 's", "'s")
                .replace(" 've", "'ve")
                .replace(" 're", "'re")
        } else {
            text
        }
    }

    /// Checks that this vocabulary belongs to a text encoder with `rows` embedding rows and
    /// config `vocab_size`: the files' vocabulary must equal `vocab_size`, and the table may
    /// hold one more row (a saved `<mask>` row).
    pub fn check_text_encoder(&self, vocab_size: usize, rows: usize) -> Result<()> {
        let v = self.base_vocab;
        if v != vocab_size || (rows != vocab_size && rows != vocab_size + 1) {
            return Err(Error::Tokenizer {
                path: self.path.clone(),
                message: format!(
                    "the vocabulary has {v} tokens but the text encoder's `vocab_size` is {vocab_size} ({rows} embedding rows): they do not belong together"
                ),
            });
        }
        Ok(())
    }
}

/// `vocab.json` order and merges of a CLIP BPE built from an OpenCLIP `bpe_simple_vocab` text
/// (its first line a header, then merges): 256 byte tokens, the same with `</w>`, one token per
/// merge (the first 48,894), then `<|startoftext|>`, `<|endoftext|>`.
pub fn clip_vocab_from_bpe(bpe_text: &str) -> (Vec<String>, Vec<(String, String)>) {
    let merges: Vec<(String, String)> = bpe_text
        .split('\n')
        .skip(1)
        .take(MAX_MERGES)
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?.to_string(), p.next()?.to_string()))
        })
        .collect();
    let mut vocab = byte_tokens();
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    (vocab, merges)
}

/// A BPE's tokens in `vocab.json` order and its merges.
pub type VocabMerges = (Vec<String>, Vec<(String, String)>);

/// [`clip_vocab_from_bpe`] of the OpenCLIP BPE file `path` (gzipped or not), which must give
/// exactly `vocab_size` tokens.
pub fn clip_vocab_from_bpe_file(path: &Path, vocab_size: usize) -> Result<VocabMerges> {
    let (vocab, merges) = clip_vocab_from_bpe(&read_bpe(path)?);
    if vocab.len() != vocab_size {
        return Err(Error::Tokenizer {
            path: path.to_path_buf(),
            message: format!(
                "this BPE gives {} tokens, but the text encoder needs {vocab_size}",
                vocab.len()
            ),
        });
    }
    Ok((vocab, merges))
}

/// The text of an OpenCLIP BPE merges file, gzipped or not.
fn read_bpe(path: &Path) -> Result<String> {
    use std::io::Read;
    crate::limits::regular_file(path)?;
    let read_up_to = |from: &mut dyn Read| {
        let mut out = Vec::new();
        from.take(MAX_BPE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(path, e))?;
        Ok::<_, Error>(out)
    };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let bytes = read_up_to(&mut file)?;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        read_up_to(&mut flate2::read::GzDecoder::new(bytes.as_slice()))?
    } else {
        bytes
    };
    if bytes.len() as u64 > MAX_BPE_BYTES {
        return Err(Error::Tokenizer {
            path: path.to_path_buf(),
            message: format!("more than {MAX_BPE_BYTES} bytes of text: not a BPE merges file"),
        });
    }
    String::from_utf8(bytes).map_err(|e| Error::Tokenizer {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text: {e}"),
    })
}

/// The 512 byte-level tokens: every byte's character, then each with `</w>`.
fn byte_tokens() -> Vec<String> {
    let chars: Vec<String> = bytes_to_unicode()
        .into_iter()
        .map(|(_, c)| c.to_string())
        .collect();
    let mut v = chars.clone();
    v.extend(chars.iter().map(|c| format!("{c}</w>")));
    v
}

/// A made-up but valid CLIP-style BPE of exactly `size` tokens (at least 514): the 512 byte
/// tokens, merges of lower-case letters (`a b`, then `ab c`, ... with and without `</w>`), and
/// the two special tokens. For random checkpoints, whose text encoders need a vocabulary of a
/// given size; it tokenizes any text, though not as CLIP would.
pub fn synthetic_vocab(size: usize) -> (Vec<String>, Vec<(String, String)>) {
    let mut vocab = byte_tokens();
    let mut merges = Vec::new();
    let want = size.saturating_sub(vocab.len() + 2);
    let letters: Vec<String> = ('a'..='z').map(String::from).collect();
    let mut frontier: Vec<String> = letters.clone();
    'outer: while merges.len() < want {
        let mut next = Vec::new();
        for stem in &frontier {
            for l in &letters {
                for suffix in ["", "</w>"] {
                    if merges.len() >= want {
                        break 'outer;
                    }
                    let right = format!("{l}{suffix}");
                    merges.push((stem.clone(), right.clone()));
                    vocab.push(format!("{stem}{right}"));
                    if suffix.is_empty() {
                        next.push(format!("{stem}{l}"));
                    }
                }
            }
        }
        frontier = next;
    }
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    (vocab, merges)
}

/// Writes `vocab.json`, `merges.txt`, `special_tokens_map.json` and `tokenizer_config.json` in
/// the layout of the public Muddit `tokenizer/` folder (`pad` is its pad token, `!` there).
pub fn write_tokenizer_files(
    dir: &Path,
    vocab: &[String],
    merges: &[(String, String)],
    pad: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let map: BTreeMap<&str, usize> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges_txt = String::from("#version: 0.2\n");
    for (a, b) in merges {
        merges_txt.push_str(&format!("{a} {b}\n"));
    }
    let special = serde_json::json!({
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad,
    });
    let config = serde_json::json!({
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LEN,
        "do_lower_case": true,
        "errors": "replace",
        "add_prefix_space": false,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad,
    });
    let files = [
        (
            "vocab.json",
            serde_json::to_string(&map).unwrap_or_default(),
        ),
        ("merges.txt", merges_txt),
        (
            "special_tokens_map.json",
            serde_json::to_string_pretty(&special).unwrap_or_default(),
        ),
        (
            "tokenizer_config.json",
            serde_json::to_string_pretty(&config).unwrap_or_default(),
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}
