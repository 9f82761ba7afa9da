/**
 * The one tokenizer interface of prepare, train and sample: character level
 * (nanoGPT's shakespeare_char) or one of tiktoken's byte-pair vocabularies
 * (gpt2, cl100k_base, o200k_base). `<|endoftext|>` written in the text is the
 * special end-of-text token, never its pieces.
 *
 * @module
 */

import { type BpeName, BytePairEncoding } from "./bpe.ts";
import { DataError } from "./errors.ts";
import type { DatasetMeta } from "./meta.ts";

/** The end-of-text marker as written in text: documents are joined with it. */
export const EOT = "<|endoftext|>";

/**
 * A tokenizer's name as written in meta.json and given to `--tokenizer`.
 *
 * @example
 * ```ts
 * const name: TokenizerName = "cl100k_base";
 * await prepareDataset({ input: "sanguo.txt", out: "data/sanguo", tokenizer: name });
 * ```
 */
export type TokenizerName = "char" | BpeName;

/** Every tokenizer, in the order the CLI lists them. */
export const TOKENIZER_NAMES: readonly TokenizerName[] = ["char", "gpt2", "cl100k_base", "o200k_base"];

/**
 * Text to token ids and back: what prepare encodes with and what sampling
 * decodes with. Get one with {@link loadTokenizer} or {@link tokenizerFromMeta}.
 *
 * @example
 * ```ts
 * const tokenizer: Tokenizer = await tokenizerFromMeta(checkpoint.tokenizer);
 * const ids = tokenizer.encode("ROMEO:");
 * const logits = await model.logits([ids]); // ids.length rows of tokenizer.vocabSize logits
 * console.log(tokenizer.decode(ids), tokenizer.eotId);
 * ```
 */
export interface Tokenizer {
  /** Which tokenizer this is: a {@link TokenizerName}, or `tokenizer.json` for a Hugging Face model's own. */
  readonly name: string;
  /** Number of ids (largest id + 1): the model's vocabulary size. */
  readonly vocabSize: number;
  /** The id of `<|endoftext|>`, or null where the vocabulary has none (character level without it). */
  readonly eotId: number | null;
  /**
   * Encodes text; `<|endoftext|>` becomes `eotId`.
   *
   * @param text Any string (character level: only characters of the vocabulary).
   * @returns The ids.
   */
  encode(text: string): number[];
  /**
   * Decodes ids; `eotId` becomes `<|endoftext|>`, and bytes that end mid-character become U+FFFD.
   *
   * @param ids Ids below `vocabSize`.
   * @returns The text.
   */
  decode(ids: ArrayLike<number>): string;
}

/**
 * Checks a `--tokenizer` value.
 *
 * @param name What the user gave.
 * @returns Whether it is one of `TOKENIZER_NAMES`.
 */
export function isTokenizerName(name: string): name is TokenizerName {
  return (TOKENIZER_NAMES as readonly string[]).includes(name);
}

/**
 * A tokenizer by name. Character level needs its vocabulary (from the first pass
 * over the text, or meta.json); the byte-pair vocabularies are fixed.
 *
 * @param name One of `TOKENIZER_NAMES`.
 * @param options `chars`: the character vocabulary (char only); `eot`: whether it has `<|endoftext|>`.
 * @returns The tokenizer.
 * @example
 * ```ts
 * const gpt2 = await loadTokenizer("gpt2");
 * gpt2.encode("Hello<|endoftext|>"); // [15496, 50256]
 * const char = await loadTokenizer("char", { chars: ["\n", " ", "a", "b"] });
 * char.decode(char.encode("ab a")); // "ab a"
 * ```
 */
export async function loadTokenizer(
  name: TokenizerName,
  options: { chars?: readonly string[]; eot?: boolean } = {},
): Promise<Tokenizer> {
  if (name === "char") {
    if (!options.chars) throw new DataError("The char tokenizer needs its character vocabulary");
    return new CharTokenizer(options.chars, options.eot ?? false);
  }
  if (!isTokenizerName(name)) {
    throw new DataError(`Unknown tokenizer "${name}"; choose from ${TOKENIZER_NAMES.join(", ")}`);
  }
  return new TiktokenTokenizer(name, await BytePairEncoding.load(name));
}

/**
 * The tokenizer a dataset was prepared with, as its meta.json describes it.
 *
 * @param meta A dataset's meta.json, as `readMeta` returns it.
 * @returns The same tokenizer prepare used.
 * @example
 * ```ts
 * const tokenizer = await tokenizerFromMeta(await readMeta("data/shakespeare_char"));
 * ```
 */
export function tokenizerFromMeta(meta: DatasetMeta): Promise<Tokenizer> {
  return loadTokenizer(meta.tokenizer, { chars: meta.chars, eot: meta.eot_id !== null });
}

/**
 * One id per Unicode code point, ids in code point order (nanoGPT's `sorted(set(text))`),
 * then `<|endoftext|>` last when the vocabulary has it.
 */
export class CharTokenizer implements Tokenizer {
  /** Always `"char"`. */
  readonly name = "char" as const;
  /** Characters plus the end-of-text token when present. */
  readonly vocabSize: number;
  /** `chars.length` when the vocabulary has `<|endoftext|>`, else null. */
  readonly eotId: number | null;
  /** The characters by id. */
  readonly chars: readonly string[];
  // Code point -> id: a flat table for the Basic Multilingual Plane, a map above it.
  #bmp = new Int32Array(0x10000).fill(-1);
  #astral = new Map<number, number>();

  /**
   * Creates the tokenizer.
   *
   * @param chars Distinct single code points, sorted by code point.
   * @param eot Whether `<|endoftext|>` is a token (id `chars.length`).
   */
  constructor(chars: readonly string[], eot: boolean) {
    this.chars = chars;
    chars.forEach((char, id) => {
      const code = char.codePointAt(0)!;
      if (code < 0x10000) this.#bmp[code] = id;
      else this.#astral.set(code, id);
    });
    this.eotId = eot ? chars.length : null;
    this.vocabSize = chars.length + (eot ? 1 : 0);
  }

  /**
   * Encodes text; a character outside the vocabulary is an error.
   *
   * @param text The text.
   * @returns One id per code point (and per `<|endoftext|>`).
   */
  encode(text: string): number[] {
    const ids: number[] = [];
    if (this.eotId === null) {
      this.#encodeChars(text, ids);
      return ids;
    }
    let start = 0;
    for (let at = text.indexOf(EOT); at >= 0; at = text.indexOf(EOT, start)) {
      this.#encodeChars(text.slice(start, at), ids);
      ids.push(this.eotId);
      start = at + EOT.length;
    }
    this.#encodeChars(text.slice(start), ids);
    return ids;
  }

  #encodeChars(text: string, ids: number[]): void {
    for (let i = 0; i < text.length; i++) {
      let code = text.charCodeAt(i);
      let id = this.#bmp[code];
      if (code >= 0xd800 && code < 0xdc00 && i + 1 < text.length) {
        code = text.codePointAt(i)!;
        if (code >= 0x10000) {
          id = this.#astral.get(code) ?? -1;
          i++;
        }
      }
      if (id < 0) {
        const shown = String.fromCodePoint(code).replace(/\s/u, " ");
        throw new DataError(
          `Character "${shown}" (U+${code.toString(16).toUpperCase().padStart(4, "0")}) is not in the ` +
            `character vocabulary of ${this.chars.length}; use only characters of the training text`,
        );
      }
      ids.push(id);
    }
  }

  /**
   * Decodes ids to text.
   *
   * @param ids Ids below `vocabSize`.
   * @returns The characters joined.
   */
  decode(ids: ArrayLike<number>): string {
    let text = "";
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id === this.eotId) text += EOT;
      else if (Number.isInteger(id) && id >= 0 && id < this.chars.length) text += this.chars[id];
      else throw new RangeError(`Token id ${id} is not in the character vocabulary of ${this.vocabSize}`);
    }
    return text;
  }
}

/** A tiktoken vocabulary with `<|endoftext|>` as its only special token. */
class TiktokenTokenizer implements Tokenizer {
  readonly name: BpeName;
  readonly vocabSize: number;
  readonly eotId: number;
  #bpe: BytePairEncoding;
  #utf8 = new TextDecoder("utf-8", { ignoreBOM: true });

  constructor(name: BpeName, bpe: BytePairEncoding) {
    this.#bpe = bpe;
    this.name = name;
    this.vocabSize = bpe.vocabSize;
    this.eotId = bpe.specials.get(EOT)!;
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    let start = 0;
    for (let at = text.indexOf(EOT); at >= 0; at = text.indexOf(EOT, start)) {
      this.#bpe.encodeOrdinary(text.slice(start, at), ids);
      ids.push(this.eotId);
      start = at + EOT.length;
    }
    return this.#bpe.encodeOrdinary(text.slice(start), ids);
  }

  decode(ids: ArrayLike<number>): string {
    return this.#utf8.decode(this.#bpe.decodeBytes(ids));
  }
}
