/**
 * A Hugging Face tokenizer.json that is a byte-level BPE (GPT-2 style: a vocab
 * of byte-level strings and a list of merges), run by our own merge loop
 * ({@link BytePairEncoding}). What is supported is what GPT-2, Llama 3 and most
 * byte-level BPEs use: no normalizer, a ByteLevel pre-tokenizer (optionally after
 * a regex Split, isolated), added tokens split out first. Anything else is
 * refused with its type named and `--tokenizer` offered instead.
 *
 * @module
 */

import { join } from "node:path";
import { BytePairEncoding } from "./bpe.ts";
import { DataError } from "./errors.ts";
import { EOT, type Tokenizer, TOKENIZER_NAMES } from "./tokenizer.ts";

/** The GPT-2 split pattern, which a ByteLevel pre-tokenizer with use_regex applies. */
const GPT2_PATTERN = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;

/** The whole text as one piece: a ByteLevel pre-tokenizer without its regex. */
const WHOLE_TEXT = String.raw`[\s\S]+`;

const INSTEAD = `pass --tokenizer NAME instead if the model's vocabulary is one of ${
  TOKENIZER_NAMES.filter((name) => name !== "char").join(", ")
}`;

/**
 * GPT-2's bytes_to_unicode: every byte as a printable character (printable
 * Latin-1 bytes as themselves, the rest from U+0100 up), the alphabet of
 * byte-level vocabularies.
 *
 * @returns Character for each byte 0..255.
 * @example
 * ```ts
 * byteLevelAlphabet()[32]; // "Ġ", the space
 * ```
 */
export function byteLevelAlphabet(): string[] {
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const chars: string[] = [];
  let next = 256;
  for (let b = 0; b < 256; b++) chars[b] = String.fromCharCode(printable(b) ? b : next++);
  return chars;
}

/**
 * A byte-level BPE tokenizer read from tokenizer.json.
 *
 * @example
 * ```ts
 * const tokenizer = await HfTokenizer.load("models/tiny-llama");
 * tokenizer.decode(tokenizer.encode("Hello world")); // "Hello world"
 * ```
 */
export class HfTokenizer implements Tokenizer {
  /** `tokenizer.json`, naming it in messages. */
  readonly name = "tokenizer.json";
  /** Largest id + 1, added tokens included. */
  readonly vocabSize: number;
  /** The end-of-text id: the model's eos, else `<|endoftext|>` when it is an added token, else null. */
  readonly eotId: number | null;
  #bpe: BytePairEncoding;
  #added: RegExp | null; // every added token, longest first so that one containing another wins
  #addPrefixSpace: boolean;
  #utf8 = new TextDecoder("utf-8", { ignoreBOM: true });

  private constructor(bpe: BytePairEncoding, addPrefixSpace: boolean, eotId: number | null) {
    this.#bpe = bpe;
    this.#addPrefixSpace = addPrefixSpace;
    const added = [...bpe.specials.keys()].sort((a, b) => b.length - a.length);
    const escape = (token: string) => token.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    this.#added = added.length > 0 ? new RegExp(added.map(escape).join("|"), "gu") : null;
    this.vocabSize = bpe.vocabSize;
    this.eotId = eotId ?? bpe.specials.get(EOT) ?? null;
  }

  /**
   * Reads `dir/tokenizer.json`.
   *
   * @param dir A Hugging Face model folder.
   * @param eosTokenId The model's eos id (from its config), used as the end-of-text token.
   * @returns The tokenizer.
   * @throws {DataError} When the file is missing or is not a byte-level BPE; the message names what it is.
   * @example
   * ```ts
   * const tokenizer = await HfTokenizer.load("models/tiny-llama", 2);
   * tokenizer.decode(tokenizer.encode("Hello")); // "Hello"
   * ```
   */
  static async load(dir: string, eosTokenId: number | null = null): Promise<HfTokenizer> {
    const path = join(dir, "tokenizer.json");
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) throw new DataError(`"${path}" not found; ${INSTEAD}`);
      throw error;
    }
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(text);
    } catch {
      throw new DataError(`"${path}" is not valid JSON`);
    }
    return HfTokenizer.fromJson(json, path, eosTokenId);
  }

  /**
   * Builds the tokenizer from parsed tokenizer.json.
   *
   * @param json The parsed file.
   * @param path Where it came from, for messages.
   * @param eosTokenId The model's eos id, or null.
   * @returns The tokenizer.
   * @throws {DataError} When it is not a byte-level BPE.
   */
  static fromJson(json: Record<string, unknown>, path: string, eosTokenId: number | null): HfTokenizer {
    const unsupported = (what: string) =>
      new DataError(
        `"${path}" ${what}; only byte-level BPE tokenizers (GPT-2 style) are implemented; ${INSTEAD}`,
      );
    const model = (json.model ?? {}) as Record<string, unknown>;
    const type = model.type ?? (model.merges ? "BPE" : "unknown");
    if (type !== "BPE") throw unsupported(`is a ${JSON.stringify(type)} tokenizer`);
    if (model.byte_fallback === true) throw unsupported("is a SentencePiece-style BPE (byte_fallback)");
    if (model.continuing_subword_prefix || model.end_of_word_suffix) {
      throw unsupported("marks subwords with a prefix or suffix");
    }
    if (json.normalizer) throw unsupported(`has a ${describe(json.normalizer)} normalizer`);
    const { pattern, addPrefixSpace } = splitting(json.pre_tokenizer, unsupported);
    try {
      new RegExp(pattern, "gu");
    } catch {
      throw unsupported(`splits with a regex JavaScript cannot run: ${JSON.stringify(pattern)}`);
    }

    const toBytes = new Map(byteLevelAlphabet().map((char, byte) => [char, String.fromCharCode(byte)]));
    const latin1 = (token: string) => {
      let bytes = "";
      for (const char of token) {
        const byte = toBytes.get(char);
        if (byte === undefined) throw unsupported(`has the token ${JSON.stringify(token)}, not byte-level`);
        bytes += byte;
      }
      return bytes;
    };
    if (typeof model.vocab !== "object" || model.vocab === null || !Array.isArray(model.merges)) {
      throw new DataError(`"${path}" has no BPE vocab and merges`);
    }
    const tokens = new Map<string, number>();
    for (const [token, id] of Object.entries(model.vocab as Record<string, unknown>)) {
      if (!Number.isInteger(id) || (id as number) < 0) {
        throw new DataError(`"${path}" gives token ${JSON.stringify(token)} the id ${JSON.stringify(id)}`);
      }
      tokens.set(latin1(token), id as number);
    }
    const merges = (model.merges as unknown[]).map((merge) => {
      const parts = typeof merge === "string" ? merge.split(" ") : merge;
      if (!Array.isArray(parts) || parts.length !== 2 || parts.some((p) => typeof p !== "string")) {
        throw new DataError(`"${path}" has a merge ${JSON.stringify(merge)} that is not two tokens`);
      }
      return [latin1(parts[0]), latin1(parts[1])] as const;
    });
    const specials = new Map<string, number>();
    for (const added of (json.added_tokens ?? []) as { id?: unknown; content?: unknown }[]) {
      if (typeof added.content !== "string" || !Number.isInteger(added.id)) {
        throw new DataError(`"${path}" has an added token without content and id`);
      }
      specials.set(added.content, added.id as number);
    }
    let bpe: BytePairEncoding;
    try {
      bpe = BytePairEncoding.fromMerges({
        name: path,
        pattern,
        tokens,
        merges,
        specials,
        wholePieceFirst: model.ignore_merges === true,
      });
    } catch (error) {
      throw new DataError((error as Error).message);
    }
    return new HfTokenizer(bpe, addPrefixSpace, eosTokenId);
  }

  /**
   * Encodes text: added tokens (e.g. `<|endoftext|>`) are split out first, each
   * stretch between them is pre-tokenized and merged.
   *
   * @param text Any string.
   * @returns The ids.
   */
  encode(text: string): number[] {
    const ids: number[] = [];
    let start = 0;
    for (const match of this.#added ? text.matchAll(this.#added) : []) {
      this.#encodeStretch(text.slice(start, match.index), ids);
      ids.push(this.#bpe.specials.get(match[0])!);
      start = match.index + match[0].length;
    }
    this.#encodeStretch(text.slice(start), ids);
    return ids;
  }

  #encodeStretch(text: string, ids: number[]): void {
    if (!text) return;
    this.#bpe.encodeOrdinary(this.#addPrefixSpace && !text.startsWith(" ") ? " " + text : text, ids);
  }

  /**
   * Decodes ids; bytes that end mid-character become U+FFFD.
   *
   * @param ids Ids below `vocabSize`.
   * @returns The text.
   */
  decode(ids: ArrayLike<number>): string {
    return this.#utf8.decode(this.#bpe.decodeBytes(ids));
  }
}

/** The split pattern and prefix-space rule of a supported pre-tokenizer. */
function splitting(
  preTokenizer: unknown,
  unsupported: (what: string) => DataError,
): { pattern: string; addPrefixSpace: boolean } {
  const steps = (preTokenizer as { type?: string })?.type === "Sequence"
    ? (preTokenizer as { pretokenizers: Record<string, unknown>[] }).pretokenizers
    : preTokenizer
    ? [preTokenizer as Record<string, unknown>]
    : [];
  const byteLevel = steps.at(-1);
  if (byteLevel?.type !== "ByteLevel") {
    throw unsupported(`has a ${describe(preTokenizer)} pre-tokenizer, not ByteLevel`);
  }
  const addPrefixSpace = byteLevel.add_prefix_space === true;
  const useRegex = byteLevel.use_regex !== false;
  if (steps.length === 1) return { pattern: useRegex ? GPT2_PATTERN : WHOLE_TEXT, addPrefixSpace };
  const split = steps[0] as {
    type?: string;
    pattern?: { Regex?: string };
    behavior?: string;
    invert?: boolean;
  };
  if (
    steps.length !== 2 || useRegex || split.type !== "Split" || typeof split.pattern?.Regex !== "string" ||
    split.behavior !== "Isolated" || split.invert === true
  ) {
    throw unsupported(`has a pre-tokenizer sequence we do not implement (${steps.map(describe).join(", ")})`);
  }
  return { pattern: split.pattern.Regex, addPrefixSpace };
}

function describe(step: unknown): string {
  return JSON.stringify((step as { type?: unknown })?.type ?? "unknown");
}
