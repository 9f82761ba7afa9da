/**
 * Our tiktoken vocabularies (gpt2, cl100k_base, o200k_base) as a Hugging Face
 * tokenizer.json (a byte-level BPE: vocab, merges in rank order, the split
 * regex, `<|endoftext|>` as an added token) and tokenizer_config.json, so an
 * exported model's folder carries its tokenizer for `AutoTokenizer` and for our
 * own `--init_from hf:DIR`. `ignore_merges` makes a piece that is a whole token
 * one id, as tiktoken does. Character vocabularies are not byte-level and get none.
 *
 * @module
 */

import { BytePairEncoding } from "./bpe.ts";
import { byteLevelAlphabet } from "./hf_tokenizer.ts";
import type { DatasetMeta } from "./meta.ts";
import { EOT } from "./tokenizer.ts";

/**
 * The two tokenizer files of a Hugging Face folder, as JSON values.
 *
 * @example
 * ```ts
 * const files: HfTokenizerFiles | null = await hfTokenizerFiles(meta, 1024);
 * ```
 */
export interface HfTokenizerFiles {
  /** tokenizer.json. */
  tokenizer: Record<string, unknown>;
  /** tokenizer_config.json. */
  tokenizerConfig: Record<string, unknown>;
}

/**
 * The tokenizer files for a dataset's tokenizer.
 *
 * @param meta The dataset's meta.json (a checkpoint's `tokenizer`).
 * @param maxLength The model's context length (tokenizer_config's model_max_length).
 * @returns The files, or null for a character-level vocabulary.
 * @example
 * ```ts
 * const files = await hfTokenizerFiles(checkpoint.tokenizer, checkpoint.config.block_size);
 * if (files) await Deno.writeTextFile("out/hf/tokenizer.json", JSON.stringify(files.tokenizer));
 * ```
 */
export async function hfTokenizerFiles(
  meta: DatasetMeta,
  maxLength: number,
): Promise<HfTokenizerFiles | null> {
  if (meta.tokenizer === "char") return null;
  const bpe = await BytePairEncoding.load(meta.tokenizer);
  const { pattern, tokens, merges } = bpe.toMerges();
  const alphabet = byteLevelAlphabet();
  const byteLevel = (bytes: string) => Array.from(bytes, (char) => alphabet[char.charCodeAt(0)]).join("");
  const vocab: Record<string, number> = {};
  for (const [bytes, id] of tokens) vocab[byteLevel(bytes)] = id;
  const byteLevelStep = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true };
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [...bpe.specials].map(([content, id]) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    // GPT-2's pattern is the one ByteLevel applies itself; the others split first.
    pre_tokenizer: meta.tokenizer === "gpt2" ? { ...byteLevelStep, use_regex: true } : {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: pattern }, behavior: "Isolated", invert: false },
        { ...byteLevelStep, use_regex: false },
      ],
    },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: true,
      vocab,
      // Byte-level strings have no spaces (a space is "Ġ"), so the classic "left right" form is unambiguous.
      merges: merges.map(([left, right]) => `${byteLevel(left)} ${byteLevel(right)}`),
    },
  };
  const tokenizerConfig = {
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: EOT,
    eos_token: EOT,
    add_bos_token: false,
    add_eos_token: false,
    model_max_length: maxLength,
    clean_up_tokenization_spaces: false,
  };
  return { tokenizer, tokenizerConfig };
}
