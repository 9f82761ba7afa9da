/**
 * Fine-tuning data must be in the base model's tokenizer: for a character-level
 * base that means the base's own character vocabulary (ids come from its
 * meta.json, not from the new text). Two ways in: a plain text file, encoded
 * here with the base's tokenizer and split like prepare splits (the last
 * val_fraction of the characters is val), or a prepared folder whose meta.json
 * must match the base's.
 *
 * @module
 */

import { ConfigError } from "./config.ts";
import { type DatasetMeta, type TokenArray, tokenizerMismatch } from "./meta.ts";
import { type Tokenizer, tokenizerFromMeta } from "./tokenizer.ts";
import type { TrainingData } from "./trainer.ts";

/**
 * Encodes a text with the base's tokenizer into train and val tokens.
 *
 * @param text The corpus.
 * @param base The base checkpoint's tokenizer (its meta.json).
 * @param options `source` names the text in messages; `valFraction` (default 0.1) goes to val.
 * @returns Tokens and a meta.json for them (the base's vocabulary).
 * @throws {ConfigError} When the text has a character the base's vocabulary lacks.
 * @example
 * ```ts
 * const data = await encodeWithBase(await Deno.readTextFile("shout.txt"), checkpoint.tokenizer);
 * ```
 */
export async function encodeWithBase(
  text: string,
  base: DatasetMeta,
  options: { source?: string; valFraction?: number } = {},
): Promise<TrainingData> {
  const { train, val } = encodeText(text, await tokenizerFromMeta(base), options);
  return { train, val, meta: { ...base, train_tokens: train.length, val_tokens: val.length } };
}

/**
 * Encodes a text with a model's tokenizer and splits it as prepare does (the
 * last `valFraction` of the characters is val).
 *
 * @param text The corpus.
 * @param tokenizer The model's tokenizer (a checkpoint's, or a Hugging Face folder's).
 * @param options `source` names the text in messages; `valFraction` (default 0.1) goes to val.
 * @returns Train and val token ids.
 * @throws {ConfigError} When the tokenizer cannot encode the text.
 * @example
 * ```ts
 * const { train, val } = encodeText(await Deno.readTextFile("notes.txt"), (await loadHfModel("models/tiny")).tokenizer);
 * ```
 */
export function encodeText(
  text: string,
  tokenizer: Tokenizer,
  options: { source?: string; valFraction?: number } = {},
): { train: TokenArray; val: TokenArray } {
  const source = options.source ?? "the text";
  const characters = Array.from(text);
  const cut = Math.floor(characters.length * (1 - (options.valFraction ?? 0.1)));
  const encode = (part: string): TokenArray => {
    let ids: number[];
    try {
      ids = tokenizer.encode(part);
    } catch (error) {
      throw new ConfigError(
        `${source} cannot be encoded with the base model's ${tokenizer.name} tokenizer: ${
          (error as Error).message
        } (remove such characters, e.g. with tr -d, or pick a text in the base's vocabulary)`,
      );
    }
    return tokenizer.vocabSize <= 65536 ? Uint16Array.from(ids) : Uint32Array.from(ids);
  };
  return { train: encode(characters.slice(0, cut).join("")), val: encode(characters.slice(cut).join("")) };
}

/**
 * Refuses a prepared dataset whose ids do not mean what the base's ids mean.
 *
 * @param meta The dataset's meta.json.
 * @param base The base checkpoint's tokenizer.
 * @param dir The dataset, for the message.
 * @throws {ConfigError} Saying how to fine-tune on that text instead.
 * @example
 * ```ts
 * checkSameTokenizer(await readMeta("data/sanguo"), checkpoint.tokenizer, "data/sanguo"); // throws for a Shakespeare base
 * ```
 */
export function checkSameTokenizer(meta: DatasetMeta, base: DatasetMeta, dir: string): void {
  const mismatch = tokenizerMismatch(base, meta);
  if (mismatch) {
    throw new ConfigError(
      `${dir} was prepared with another vocabulary than the base model (${mismatch}); pass its input text ` +
        "file as --dataset to encode it with the base's tokenizer",
    );
  }
}
