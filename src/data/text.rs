//! Text corpora and their tokenizers. A corpus is a UTF-8 file (`.txt`, or gzip-compressed
//! `.txt.gz`), a folder of such files, or a WikiText folder (`wiki.train.tokens` and
//! `wiki.valid.tokens`). The byte tokenizer is the default; GPT-2's BPE (r50k_base ranks,
//! carried by the `tiktoken-rs` crate) serves imported GPT-2 checkpoints.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::idx::read_maybe_gzip;
use crate::{Error, Result};

/// Fraction of the token stream, taken from its end, that becomes validation data when the
/// files do not define a validation split.
pub const VALIDATION_FRACTION: f64 = 0.1;

/// Tokenizer of UTF-8 bytes: token i is byte i.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    pub const VOCAB_SIZE: usize = 256;

    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    /// Returns the bytes of `tokens`; a token above 255 is an error.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Result<Vec<u8>> {
        tokens
            .iter()
            .map(|&t| u8::try_from(t).map_err(|_| Error::invalid("token", t, "the byte tokenizer has tokens 0 to 255")))
            .collect()
    }

    /// Decodes to text, replacing invalid UTF-8 sequences (as sampled tokens may form) by U+FFFD.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(tokens)?).into_owned())
    }
}

/// GPT-2's byte-level BPE with the r50k_base ranks: 50,257 tokens, the last `<|endoftext|>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gpt2Tokenizer;

impl Gpt2Tokenizer {
    pub const VOCAB_SIZE: usize = 50257;
    /// `<|endoftext|>`, which GPT-2 places between documents.
    pub const END_OF_TEXT: u32 = 50256;

    fn bpe() -> &'static tiktoken_rs::CoreBPE {
        tiktoken_rs::r50k_base_singleton()
    }

    /// Encodes `text` as ordinary text: a literal `<|endoftext|>` in it is not the special token.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        Self::bpe().encode_ordinary(text)
    }

    /// Returns the bytes of `tokens`; a token outside the vocabulary is an error.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Result<Vec<u8>> {
        Self::bpe().decode_bytes(tokens).map_err(|e| {
            Error::invalid(
                "token",
                e.token,
                format!("GPT-2 tokens are 0 to {}", Self::VOCAB_SIZE - 1),
            )
        })
    }

    /// Decodes to text, replacing invalid UTF-8 sequences (as sampled tokens may form) by U+FFFD.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(tokens)?).into_owned())
    }
}

/// Tokenizer of a corpus or a model, written as `byte` or `gpt2` in configurations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    #[default]
    Byte,
    Gpt2,
}

impl TokenizerKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Byte => "byte",
            TokenizerKind::Gpt2 => "gpt2",
        }
    }

    pub fn vocab_size(self) -> usize {
        match self {
            TokenizerKind::Byte => ByteTokenizer::VOCAB_SIZE,
            TokenizerKind::Gpt2 => Gpt2Tokenizer::VOCAB_SIZE,
        }
    }

    /// Token placed between the documents of a folder, if the tokenizer has one.
    pub fn document_separator(self) -> Option<u32> {
        match self {
            TokenizerKind::Byte => None,
            TokenizerKind::Gpt2 => Some(Gpt2Tokenizer::END_OF_TEXT),
        }
    }

    pub fn encode(self, text: &str) -> Vec<u32> {
        match self {
            TokenizerKind::Byte => ByteTokenizer.encode(text),
            TokenizerKind::Gpt2 => Gpt2Tokenizer.encode(text),
        }
    }

    pub fn decode_bytes(self, tokens: &[u32]) -> Result<Vec<u8>> {
        match self {
            TokenizerKind::Byte => ByteTokenizer.decode_bytes(tokens),
            TokenizerKind::Gpt2 => Gpt2Tokenizer.decode_bytes(tokens),
        }
    }

    /// Decodes to text, replacing invalid UTF-8 sequences by U+FFFD.
    pub fn decode(self, tokens: &[u32]) -> Result<String> {
        match self {
            TokenizerKind::Byte => ByteTokenizer.decode(tokens),
            TokenizerKind::Gpt2 => Gpt2Tokenizer.decode(tokens),
        }
    }
}

impl fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TokenizerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<TokenizerKind> {
        match s.to_ascii_lowercase().as_str() {
            "byte" | "bytes" => Ok(TokenizerKind::Byte),
            "gpt2" | "gpt-2" | "r50k_base" => Ok(TokenizerKind::Gpt2),
            _ => Err(Error::invalid("tokenizer", s, "expected `byte` or `gpt2`")),
        }
    }
}

/// A tokenized corpus with its training and validation token streams.
#[derive(Clone, Debug, PartialEq)]
pub struct TextCorpus {
    pub train: Vec<u32>,
    pub validation: Vec<u32>,
    pub vocab_size: usize,
    pub tokenizer: TokenizerKind,
    /// The file or folder the corpus was read from, for messages.
    pub source: PathBuf,
}

impl TextCorpus {
    /// Checks that both splits hold at least `context + 1` tokens, the length of one training
    /// window (inputs and targets shifted by one).
    pub fn check_context(&self, context: usize) -> Result<()> {
        for (split, tokens) in [("training", &self.train), ("validation", &self.validation)] {
            if tokens.len() < context + 1 {
                return Err(Error::file(
                    &self.source,
                    format!(
                        "corpus too short: its {split} split has {} {} tokens, but a context of {context} \
                         needs at least {} (context + 1); use a shorter context or a longer corpus",
                        tokens.len(),
                        self.tokenizer,
                        context + 1
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Reads a UTF-8 text file, decompressing gzip; invalid UTF-8 is an error naming the byte offset.
pub fn read_text_file(path: &Path) -> Result<String> {
    let bytes = read_maybe_gzip(path)?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        Error::file(
            path,
            format!("invalid UTF-8 at byte offset {offset} (of the decompressed text, for a .gz file)"),
        )
    })
}

/// Checks whether the file name ends in `.txt` or `.txt.gz`.
fn is_text_file(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    !name.starts_with('.') && (name.ends_with(".txt") || name.ends_with(".txt.gz"))
}

/// Tokenizes `files` in order, with the tokenizer's document separator between them.
fn tokenize_files(files: &[PathBuf], tokenizer: TokenizerKind) -> Result<Vec<u32>> {
    let mut tokens = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            tokens.extend(tokenizer.document_separator());
        }
        tokens.extend(tokenizer.encode(&read_text_file(file)?));
    }
    Ok(tokens)
}

/// Splits off the last `VALIDATION_FRACTION` of the stream as validation data.
fn split_tail(mut tokens: Vec<u32>) -> (Vec<u32>, Vec<u32>) {
    let validation_len = (tokens.len() as f64 * VALIDATION_FRACTION) as usize;
    let validation = tokens.split_off(tokens.len() - validation_len);
    (tokens, validation)
}

/// Returns the path of the bundled corpus, Herman Melville's "Moby-Dick" (public domain).
pub fn bundled_text_path() -> PathBuf {
    super::assets_dir().join("text").join("moby-dick.txt.gz")
}

/// Loads and tokenizes a corpus: a text file, a folder of `.txt`/`.txt.gz` files (read in name
/// order), or a WikiText folder. `None` loads the bundled "Moby-Dick". Unless the files define
/// the split (WikiText's `wiki.valid.tokens`), the last 10% of the token stream is validation.
pub fn load_text(path: Option<&Path>, tokenizer: TokenizerKind) -> Result<TextCorpus> {
    let source = path.map_or_else(bundled_text_path, Path::to_path_buf);
    if !source.exists() {
        return Err(Error::file(
            &source,
            "not found: expected a text file or a folder of text files",
        ));
    }

    let (train, validation) = if source.is_dir() {
        load_dir(&source, tokenizer)?
    } else {
        let tokens = tokenize_files(std::slice::from_ref(&source), tokenizer)?;
        let (train, validation) = split_tail(tokens);
        log::info!(
            "{}: {} {tokenizer} tokens, the last 10% ({} tokens) held out for validation",
            source.display(),
            train.len() + validation.len(),
            validation.len()
        );
        (train, validation)
    };

    if train.is_empty() {
        return Err(Error::file(&source, "empty corpus: the text has no tokens"));
    }
    Ok(TextCorpus {
        train,
        validation,
        vocab_size: tokenizer.vocab_size(),
        tokenizer,
        source,
    })
}

/// Loads a WikiText folder, or a folder of text files split 90/10.
fn load_dir(dir: &Path, tokenizer: TokenizerKind) -> Result<(Vec<u32>, Vec<u32>)> {
    for extension in ["tokens", "raw"] {
        let train_file = dir.join(format!("wiki.train.{extension}"));
        if !train_file.is_file() {
            continue;
        }
        let valid_file = dir.join(format!("wiki.valid.{extension}"));
        if !valid_file.is_file() {
            return Err(Error::file(
                &valid_file,
                format!("not found: a WikiText folder with {} needs it", train_file.display()),
            ));
        }
        let train = tokenize_files(&[train_file], tokenizer)?;
        let validation = tokenize_files(&[valid_file], tokenizer)?;
        log::info!(
            "{}: WikiText with {} training and {} validation {tokenizer} tokens",
            dir.display(),
            train.len(),
            validation.len()
        );
        return Ok((train, validation));
    }

    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::file(dir, format!("cannot list directory: {e}")))?
            .path();
        if path.is_file() && is_text_file(&path) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::file(
            dir,
            "no text found: expected .txt or .txt.gz files, or wiki.train.tokens and wiki.valid.tokens",
        ));
    }
    files.sort();

    let (train, validation) = split_tail(tokenize_files(&files, tokenizer)?);
    log::info!(
        "{}: {} files, {} {tokenizer} tokens, the last 10% ({} tokens) held out for validation",
        dir.display(),
        files.len(),
        train.len() + validation.len(),
        validation.len()
    );
    Ok((train, validation))
}
