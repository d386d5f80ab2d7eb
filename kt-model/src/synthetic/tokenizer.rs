//! A synthetic byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`) of any size,
//! so that a synthetic GGUF carries the tokenizer keys llama.cpp requires.
//!
//! llama.cpp decodes every normal token's text through the byte-level map (each char
//! stands for one byte) and parses each merge as `left right`; both must hold for
//! every entry. The vocabulary here is built to be a consistent BPE:
//! - the 256 single "byte chars" (GPT-2's printable stand-ins for the bytes),
//! - then every two-char string `a b` → `ab` (65,536 merges),
//! - then, where more are needed, three-char strings `ab c` → `abc`,
//!
//! with the two special tokens (BOS, EOS) as control tokens at the ids the real model
//! uses. Scores are minus the merge rank (unused by a gpt2 tokenizer, but present).

use crate::error::{ModelError, Result};

/// The tokenizer metadata of a synthetic vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    /// llama.cpp's token types: 1 normal, 3 control.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
}

const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
pub(crate) const BOS_TEXT: &str = "<\u{ff5c}begin\u{2581}of\u{2581}sentence\u{ff5c}>";
pub(crate) const EOS_TEXT: &str = "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>";

/// The char byte `b` is written as in byte-level BPE: printable Latin-1 bytes (`!`..`~`,
/// `¡`..`¬`, `®`..`ÿ`) stand for themselves; the other 68 bytes take the code points from
/// U+0100 upward, in byte order.
pub(crate) fn byte_char(b: u8) -> char {
    let printable = |c: u8| matches!(c, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(0x100 + rank).expect("U+0100..U+0143 are chars")
}

/// `size` tokens with BOS at `bos` and EOS at `eos`.
pub(crate) fn build(size: usize, bos: u32, eos: u32) -> Result<Vocab> {
    let (bos, eos) = (bos as usize, eos as usize);
    let two_level = 256 + 256 * 256;
    let most = two_level + 256 * 256 * 256 + 2;
    if bos == eos || bos >= size || eos >= size || size < 258 || size > most {
        return Err(ModelError::InvalidConfig {
            origin: "synthetic tokenizer".into(),
            field: "vocab_size",
            reason: format!(
                "{size} tokens with BOS {bos} and EOS {eos}: need 258..={most} tokens and two \
                 distinct special ids inside"
            ),
        });
    }
    let chars: Vec<char> = (0..=255u8).map(byte_char).collect();
    let mut tokens = Vec::with_capacity(size);
    let mut merges = Vec::with_capacity(size.saturating_sub(256));
    // Ordinary tokens in BPE order; the specials are slotted in at their ids.
    let mut ordinary = (0..).map(|i: usize| -> (String, Option<String>) {
        if i < 256 {
            (chars[i].to_string(), None)
        } else if i < two_level {
            let j = i - 256;
            let (a, b) = (chars[j / 256], chars[j % 256]);
            (format!("{a}{b}"), Some(format!("{a} {b}")))
        } else {
            let j = i - two_level;
            let (a, b, c) = (chars[j / 65536], chars[(j / 256) % 256], chars[j % 256]);
            (format!("{a}{b}{c}"), Some(format!("{a}{b} {c}")))
        }
    });
    let mut scores = Vec::with_capacity(size);
    let mut token_types = Vec::with_capacity(size);
    for id in 0..size {
        if id == bos || id == eos {
            tokens.push(if id == bos { BOS_TEXT } else { EOS_TEXT }.to_owned());
            scores.push(0.0);
            token_types.push(TYPE_CONTROL);
            continue;
        }
        let (text, merge) = ordinary.next().expect("an endless sequence");
        scores.push(-(merges.len() as f32));
        if let Some(m) = merge {
            merges.push(m);
        }
        tokens.push(text);
        token_types.push(TYPE_NORMAL);
    }
    Ok(Vocab {
        tokens,
        scores,
        token_types,
        merges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn byte_chars_are_distinct_and_printable() {
        let chars: HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_char(b'A'), 'A');
        assert_eq!(
            byte_char(b' '),
            '\u{120}',
            "space is the 33rd unprintable byte"
        );
        assert_eq!(byte_char(b'\n'), '\u{10A}');
        assert!(chars.iter().all(|c| !c.is_whitespace() && !c.is_control()));
    }

    /// Every token is unique, every merge joins two existing tokens into one that
    /// exists and comes later, and the specials sit where asked.
    #[test]
    fn vocabulary_is_a_consistent_bpe() {
        for (size, bos, eos) in [(102_400, 100_000, 100_001), (129_280, 0, 1), (300, 5, 299)] {
            let v = build(size, bos, eos).unwrap();
            assert_eq!(v.tokens.len(), size);
            assert_eq!(v.scores.len(), size);
            assert_eq!(v.token_types.len(), size);
            assert_eq!(v.tokens[bos as usize], BOS_TEXT);
            assert_eq!(v.tokens[eos as usize], EOS_TEXT);
            assert_eq!(
                v.token_types.iter().filter(|&&t| t == TYPE_CONTROL).count(),
                2
            );
            let id: HashMap<&str, usize> = v
                .tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i))
                .collect();
            assert_eq!(id.len(), size, "tokens are unique");
            assert_eq!(v.merges.len(), size - 256 - 2);
            for m in &v.merges {
                let (a, b) = m.split_once(' ').unwrap();
                let joined = format!("{a}{b}");
                let (ia, ib, ij) = (id[a], id[b], id[joined.as_str()]);
                assert!(ia < ij && ib < ij, "merge {m:?}");
            }
        }
    }

    #[test]
    fn impossible_sizes_are_errors() {
        assert!(build(100, 0, 1).is_err());
        assert!(build(1000, 3, 3).is_err());
        assert!(build(1000, 0, 1000).is_err());
    }
}
