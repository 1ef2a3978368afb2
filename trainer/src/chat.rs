//! Chat and instruction data: rows as people have them, rendered with the model's chat template
//! and tokenized by the model's own tokenizer into language-model rows (token ids and a loss
//! mask covering the assistant's replies only). The run commits to those ids; how they were
//! made (the source file, the tokenizer, the template) is pinned in its spec.
//!
//! Rows: `{"messages": [{"role": "system" | "user" | "assistant", "content": "…"}, …]}`, or
//! Alpaca-style `{"instruction": "…", "input": "…", "output": "…"}` (a user turn of the
//! instruction, and the input after a blank line when there is one; an assistant turn of the
//! output). The template is ChatML, as SmolLM2, Qwen and others use it:
//! `<|im_start|>{role}\n{content}<|im_end|>\n` per message, with the model's default system
//! message first when the conversation has none. Targets of the loss: the tokens of every
//! assistant reply and its `<|im_end|>`.

use std::collections::BTreeMap;

use serde::Deserialize;
use snapshot_format::Hash32;
use snapshot_format::hash::DomainHasher;
use tokenizers::Tokenizer;

use crate::base::BaseWeights;
use crate::config::Conversion;
use crate::error::{Error, Result};
use crate::gguf::Value;

/// The start of a ChatML turn.
pub const IM_START: &str = "<|im_start|>";
/// The end of a ChatML turn.
pub const IM_END: &str = "<|im_end|>";
/// The system message SmolLM2's template adds to a conversation without one.
pub const SMOLLM_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// A model's tokenizer and chat template.
#[derive(Debug, Clone)]
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    /// BLAKE3 of the tokenizer's definition (its `tokenizer.json`, canonical).
    pub definition: Hash32,
    /// The template's source text (the GGUF's `tokenizer.chat_template`), hashed into specs.
    pub template: String,
    /// The system message added to conversations that have none.
    pub default_system: Option<String>,
    pub eos: u32,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Row {
    Chat {
        messages: Vec<Message>,
    },
    Alpaca {
        instruction: String,
        #[serde(default)]
        input: String,
        output: String,
    },
}

impl ChatTokenizer {
    /// The tokenizer a GGUF file carries (`tokenizer.ggml.model = "gpt2"`: byte-level BPE, its
    /// tokens, merges and token types), with the pre-tokenizer of its `tokenizer.ggml.pre`
    /// (`smollm`: digits one by one, then GPT-2's byte-level split), and its chat template.
    pub fn from_gguf(base: &BaseWeights) -> Result<Self> {
        let bad = |detail: String| Error::BaseModel {
            path: base.source.clone(),
            detail,
        };
        let m = &base.metadata;
        let text = |k: &str| m.get(k).and_then(Value::as_str);
        let model = text("tokenizer.ggml.model").unwrap_or("none");
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer.ggml.model = {model:?}: only byte-level BPE (\"gpt2\") tokenizers are read from GGUF; give a tokenizer.json instead"
            )));
        }
        let strings = |k: &str| -> Result<Vec<&str>> {
            m.get(k)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("{k} is missing")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| bad(format!("{k} holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = m
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let pre = text("tokenizer.ggml.pre").unwrap_or("default");
        let pre_tokenizer = match pre {
            "smollm" => serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]}),
            "default" | "gpt-2" | "gpt2" => {
                serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
            }
            other => {
                return Err(bad(format!(
                    "tokenizer.ggml.pre = {other:?}: this engine knows the pre-tokenizers \"smollm\" and \"gpt2\"; give a tokenizer.json instead"
                )));
            }
        };
        let vocab: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), serde_json::Value::from(i as u64)))
            .collect();
        // Control tokens (type 3) are special: split out before the byte-level split.
        let added: Vec<serde_json::Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| types.get(*i) == Some(&3))
            .map(|(i, t)| {
                serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        });
        let eos = m
            .get("tokenizer.ggml.eos_token_id")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        let template = text("tokenizer.chat_template")
            .unwrap_or_default()
            .to_string();
        let default_system = template
            .contains(SMOLLM_SYSTEM)
            .then(|| SMOLLM_SYSTEM.to_string());
        Self::from_json(
            &json.to_string(),
            &base.source,
            template,
            default_system,
            eos,
        )
    }

    /// A tokenizer from a Hugging Face `tokenizer.json` (its text), with a ChatML template.
    pub fn from_json(
        json: &str,
        source: &str,
        template: String,
        default_system: Option<String>,
        eos: u32,
    ) -> Result<Self> {
        let tokenizer: Tokenizer = json.parse().map_err(|e| Error::BaseModel {
            path: source.to_string(),
            detail: format!("not a tokenizer: {e}"),
        })?;
        // The definition as the tokenizer itself writes it back: its identity for the spec.
        let canonical = tokenizer.to_string(false).map_err(|e| Error::BaseModel {
            path: source.to_string(),
            detail: e.to_string(),
        })?;
        let mut h = DomainHasher::new("training-replay-verifier v1 tokenizer");
        h.bytes(canonical.as_bytes());
        let t = ChatTokenizer {
            tokenizer,
            definition: h.finish(),
            template,
            default_system,
            eos,
        };
        for special in [IM_START, IM_END] {
            if t.tokenizer.token_to_id(special).is_none() {
                return Err(Error::BaseModel {
                    path: source.to_string(),
                    detail: format!("the tokenizer has no {special} token: not a ChatML model"),
                });
            }
        }
        Ok(t)
    }

    /// Token ids of `text`, control tokens written in it included.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Dataset {
                path: "tokenizer".into(),
                detail: e.to_string(),
            })
    }

    /// The id of a token given by its text (a control token such as `<|im_end|>`).
    pub fn token(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_to_id(text)
    }

    /// The text of token ids.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, false).unwrap_or_default()
    }

    /// The contents of the ChatML messages that token ids hold (as [`Self::render`] writes
    /// them), one a line: role lines and control tokens left out. Text outside any message is
    /// kept as it is.
    pub fn contents(&self, ids: &[u32]) -> String {
        let text = self.decode(ids);
        let mut out: Vec<&str> = Vec::new();
        for (i, chunk) in text.split(IM_START).enumerate() {
            let chunk = chunk.split(IM_END).next().unwrap_or_default();
            let content = if i == 0 {
                chunk
            } else {
                chunk.split_once('\n').map_or("", |(_, c)| c)
            };
            if !content.trim().is_empty() {
                out.push(content.trim());
            }
        }
        out.join("\n")
    }

    /// The contents of the messages, as [`Self::contents`], without the template's default
    /// system message where the conversation starts with it: what tells one row from another.
    pub fn messages(&self, ids: &[u32]) -> String {
        let all = self.contents(ids);
        let Some(system) = self.default_system.as_deref().map(str::trim) else {
            return all;
        };
        match all.split_once('\n') {
            Some((first, rest)) if first == system => rest.to_string(),
            None if all == system => String::new(),
            _ => all,
        }
    }

    /// The token ids of a conversation rendered with the template, and the loss mask: the
    /// tokens of each assistant reply and its `<|im_end|>`. The whole rendered text is
    /// tokenized at once, as the model saw its training text; a token is a target when it lies
    /// within a reply (its content and its `<|im_end|>`). With `generation_prompt`, the text
    /// ends with the start of an assistant turn (for generating the reply).
    pub fn render(
        &self,
        messages: &[Message],
        generation_prompt: bool,
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        let mut turns: Vec<(&str, &str)> = Vec::new();
        if messages.first().is_none_or(|m| m.role != "system")
            && let Some(s) = &self.default_system
        {
            turns.push(("system", s));
        }
        turns.extend(
            messages
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str())),
        );
        let mut text = String::new();
        let mut replies: Vec<std::ops::Range<usize>> = Vec::new();
        for (role, content) in turns {
            text.push_str(IM_START);
            text.push_str(role);
            text.push('\n');
            let start = text.len();
            text.push_str(content);
            text.push_str(IM_END);
            if role == "assistant" {
                replies.push(start..text.len());
            }
            text.push('\n');
        }
        if generation_prompt {
            text.push_str(IM_START);
            text.push_str("assistant\n");
        }
        let encoding = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| Error::Dataset {
                path: "tokenizer".into(),
                detail: e.to_string(),
            })?;
        let mask = encoding
            .get_offsets()
            .iter()
            .map(|&(a, b)| replies.iter().any(|r| r.start <= a && b <= r.end && a < b))
            .collect();
        Ok((encoding.get_ids().to_vec(), mask))
    }
}

/// Chat or Alpaca rows rendered as language-model rows with the tokenizer and chat template of
/// the GGUF base `base`, cut to `max_len` tokens (none: uncut), as [`convert`] renders them.
pub fn convert_with_base(
    bytes: &[u8],
    source: &str,
    base: &BaseWeights,
    max_len: Option<u64>,
) -> Result<(Vec<u8>, Conversion)> {
    let tok = ChatTokenizer::from_gguf(base)?;
    convert(bytes, source, &tok, max_len.unwrap_or(u64::MAX) as usize)
}

/// Convert chat or Alpaca rows (JSON Lines in `bytes`, named `source` in errors) into language
/// model rows (`{"tokens": […], "loss_mask": […]}`, one per input row, blank lines skipped),
/// cut to `max_len` tokens. A row that does not parse, has no assistant reply, or whose reply
/// starts after `max_len` is an error naming its line.
pub fn convert(
    bytes: &[u8],
    source: &str,
    tok: &ChatTokenizer,
    max_len: usize,
) -> Result<(Vec<u8>, Conversion)> {
    let mut out = String::new();
    crate::data::each_row(bytes, source, |line, row_err| {
        let row: Row = serde_json::from_str(line).map_err(|_| {
            row_err(
                "expected {\"messages\": [{\"role\", \"content\"}, …]} or {\"instruction\", \"input\", \"output\"}"
                    .into(),
            )
        })?;
        let messages = match row {
            Row::Chat { messages } => messages,
            Row::Alpaca {
                instruction,
                input,
                output,
            } => vec![
                Message {
                    role: "user".into(),
                    content: if input.is_empty() {
                        instruction
                    } else {
                        format!("{instruction}\n\n{input}")
                    },
                },
                Message {
                    role: "assistant".into(),
                    content: output,
                },
            ],
        };
        if let Some(m) = messages
            .iter()
            .find(|m| !["system", "user", "assistant"].contains(&m.role.as_str()))
        {
            return Err(row_err(format!(
                "role {:?} is not system, user or assistant",
                m.role
            )));
        }
        if !messages.iter().any(|m| m.role == "assistant") {
            return Err(row_err("no assistant message: nothing to learn".into()));
        }
        let (mut ids, mut mask) = tok
            .render(&messages, false)
            .map_err(|e| row_err(e.to_string()))?;
        ids.truncate(max_len);
        mask.truncate(max_len);
        if !mask.iter().any(|&m| m) {
            return Err(row_err(format!(
                "the assistant's reply starts after the first {max_len} tokens (data.max_len)"
            )));
        }
        let mask: Vec<u8> = mask.iter().map(|&m| u8::from(m)).collect();
        out.push_str(&serde_json::json!({ "tokens": ids, "loss_mask": mask }).to_string());
        out.push('\n');
        Ok(())
    })?;
    let conversion = Conversion {
        from: "chat".into(),
        source_blake3: snapshot_format::hash::file_hash(bytes),
        tokenizer: tok.definition,
        template: snapshot_format::hash::file_hash(tok.template.as_bytes()),
        targets: "assistant replies and their <|im_end|>".into(),
    };
    Ok((out.into_bytes(), conversion))
}

/// Messages of a prompt given on the command line: one user message.
pub fn user_prompt(prompt: &str) -> Vec<Message> {
    vec![Message {
        role: "user".into(),
        content: prompt.to_string(),
    }]
}

/// Metadata of a GGUF base model that describes its architecture, as a Llama configuration's
/// fields (for `trainer` to fill a `[model]` section from a GGUF file).
pub fn gguf_hyperparameters(base: &BaseWeights) -> BTreeMap<&'static str, f64> {
    let m = &base.metadata;
    let mut out = BTreeMap::new();
    for (field, key) in [
        ("num_layers", "llama.block_count"),
        ("hidden_size", "llama.embedding_length"),
        ("intermediate_size", "llama.feed_forward_length"),
        ("num_heads", "llama.attention.head_count"),
        ("num_kv_heads", "llama.attention.head_count_kv"),
        ("rope_theta", "llama.rope.freq_base"),
        ("rms_norm_eps", "llama.attention.layer_norm_rms_epsilon"),
        ("max_position", "llama.context_length"),
    ] {
        if let Some(v) = m.get(key).and_then(Value::as_f64) {
            out.insert(field, v);
        }
    }
    if let Some(n) = m
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(<[Value]>::len)
    {
        out.insert("vocab_size", n as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level tokenizer without merges (one token per byte) with ChatML's control tokens:
    /// every token's offsets are one byte, so the mask can be checked against the text.
    fn bytes_tokenizer() -> ChatTokenizer {
        let mut alphabet: Vec<String> =
            tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
                .into_iter()
                .map(String::from)
                .collect();
        alphabet.sort();
        let mut vocab = serde_json::Map::new();
        for (i, c) in alphabet.iter().enumerate() {
            vocab.insert(c.clone(), i.into());
        }
        let n = alphabet.len();
        vocab.insert(IM_START.into(), n.into());
        vocab.insert(IM_END.into(), (n + 1).into());
        let special = |id: usize, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(n, IM_START), special(n + 1, IM_END)],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": []},
        });
        ChatTokenizer::from_json(
            &json.to_string(),
            "test",
            "chatml".into(),
            Some("sys".into()),
            n as u32 + 1,
        )
        .expect("tokenizer")
    }

    #[test]
    fn the_loss_covers_exactly_the_replies_and_their_end_tokens() {
        let tok = bytes_tokenizer();
        let messages = vec![
            Message {
                role: "user".into(),
                content: "hi".into(),
            },
            Message {
                role: "assistant".into(),
                content: "yo!".into(),
            },
            Message {
                role: "user".into(),
                content: "again".into(),
            },
            Message {
                role: "assistant".into(),
                content: "ok".into(),
            },
        ];
        let (ids, mask) = tok.render(&messages, false).expect("render");
        assert_eq!(
            tok.decode(&ids),
            "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo!<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
        );
        let targets: Vec<u32> = ids
            .iter()
            .zip(&mask)
            .filter(|(_, m)| **m)
            .map(|(i, _)| *i)
            .collect();
        let end = tok.eos;
        let expected: Vec<u32> = [
            tok.encode("yo!").expect("test data"),
            vec![end],
            tok.encode("ok").expect("test data"),
            vec![end],
        ]
        .concat();
        assert_eq!(targets, expected);
        let (prompt, _) = tok.render(&messages[..1], true).expect("render");
        assert!(tok.decode(&prompt).ends_with("<|im_start|>assistant\n"));
        // What the model reads: the messages' contents without the replies it is taught.
        let read: Vec<u32> = ids
            .iter()
            .zip(&mask)
            .filter(|(_, m)| !**m)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(tok.contents(&read), "sys\nhi\nagain");
        assert_eq!(tok.contents(&ids), "sys\nhi\nyo!\nagain\nok");
        // What tells rows apart: the template's default system message left out, a
        // conversation's own system message kept.
        assert_eq!(tok.messages(&ids), "hi\nyo!\nagain\nok");
        let own = [
            Message {
                role: "system".into(),
                content: "system of its own".into(),
            },
            messages[0].clone(),
        ];
        let (ids, _) = tok.render(&own, false).expect("render");
        assert_eq!(tok.messages(&ids), "system of its own\nhi");
    }

    #[test]
    fn alpaca_and_chat_rows_convert_and_bad_rows_name_their_line() {
        let tok = bytes_tokenizer();
        let data = b"{\"instruction\": \"add\", \"input\": \"1 2\", \"output\": \"3\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n";
        let (rows, conversion) = convert(data, "d.jsonl", &tok, 1000).expect("convert");
        let rows: Vec<serde_json::Value> = std::str::from_utf8(&rows)
            .expect("test data")
            .lines()
            .map(|l| serde_json::from_str(l).expect("test data"))
            .collect();
        assert_eq!(rows.len(), 2);
        let ids: Vec<u32> = serde_json::from_value(rows[0]["tokens"].clone()).expect("test data");
        assert!(tok.decode(&ids).contains("user\nadd\n\n1 2<|im_end|>"));
        let mask: Vec<u8> =
            serde_json::from_value(rows[1]["loss_mask"].clone()).expect("test data");
        assert_eq!(
            mask.iter().filter(|&&m| m == 1).count(),
            2,
            "\"a\" and <|im_end|>"
        );
        assert_eq!(
            conversion.source_blake3,
            snapshot_format::hash::file_hash(data)
        );

        for (row, why) in [
            (
                &b"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}"[..],
                "no assistant",
            ),
            (
                b"{\"messages\": [{\"role\": \"tool\", \"content\": \"q\"}]}",
                "role \"tool\"",
            ),
            (b"{\"text\": 1}", "expected"),
            (
                b"{\"instruction\": \"a long question\", \"output\": \"x\"}",
                "starts after",
            ),
        ] {
            let bytes = [&b"{\"instruction\": \"i\", \"output\": \"o\"}\n"[..], row].concat();
            let e = convert(&bytes, "d.jsonl", &tok, 40)
                .expect_err("a bad row")
                .to_string();
            assert!(e.contains("d.jsonl:2:") && e.contains(why), "{e}");
        }
    }
}
