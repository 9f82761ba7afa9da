/**
 * A Hugging Face tokenizer.json that is a byte-level BPE (GPT-2 style: a vocab
 * of byte-level strings and a list of merges), run by our own merge loop
 * ({@link BytePairEncoding}). What is supported is what GPT-2, Llama 3, Qwen 2,
 * SmolLM and most byte-level BPEs use: no normalizer or a Unicode normal form, a
 * ByteLevel pre-tokenizer, optionally after isolating Split regexes and Digits,
 * added tokens split out first. Anything else is refused with its type named and
 * `--tokenizer` offered instead.
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
  #splitting: Splitting;
  #utf8 = new TextDecoder("utf-8", { ignoreBOM: true });

  private constructor(bpe: BytePairEncoding, splitting: Splitting, eotId: number | null) {
    this.#bpe = bpe;
    this.#splitting = splitting;
    const added = [...bpe.specials.keys()].sort((a, b) => b.length - a.length);
    this.#added = added.length > 0 ? new RegExp(added.map(escapeRegex).join("|"), "gu") : null;
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
    const splitting = readSplitting(json.normalizer, json.pre_tokenizer, unsupported);

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
        pattern: splitting.pattern,
        tokens,
        merges,
        specials,
        wholePieceFirst: model.ignore_merges === true,
      });
    } catch (error) {
      throw new DataError((error as Error).message);
    }
    return new HfTokenizer(bpe, splitting, eosTokenId);
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
    const { normalization, isolate, addPrefixSpace } = this.#splitting;
    if (normalization) text = text.normalize(normalization);
    let pieces = text ? [text] : [];
    for (const pattern of isolate) pieces = pieces.flatMap((piece) => isolated(piece, pattern));
    // ByteLevel's add_prefix_space applies to every piece that reaches it.
    for (const piece of pieces) {
      this.#bpe.encodeOrdinary(addPrefixSpace && piece[0] !== " " ? " " + piece : piece, ids);
    }
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

/** How tokenizer.json turns text into the pieces that merge. */
interface Splitting {
  /** Unicode normal form applied first (a NFC/NFD/NFKC/NFKD normalizer), or null. */
  normalization: "NFC" | "NFD" | "NFKC" | "NFKD" | null;
  /** Regexes whose matches become pieces of their own, in order (Split and Digits steps). */
  isolate: RegExp[];
  /** ByteLevel's add_prefix_space. */
  addPrefixSpace: boolean;
  /** The pattern ByteLevel splits each piece with: GPT-2's, or the whole piece. */
  pattern: string;
}

const NORMAL_FORMS = ["NFC", "NFD", "NFKC", "NFKD"] as const;

/** The supported normalizers and pre-tokenizers as a {@link Splitting}. */
function readSplitting(
  normalizer: unknown,
  preTokenizer: unknown,
  unsupported: (what: string) => DataError,
): Splitting {
  let normalization: Splitting["normalization"] = null;
  const forms = (normalizer as { type?: string })?.type === "Sequence"
    ? (normalizer as { normalizers: unknown[] }).normalizers
    : normalizer
    ? [normalizer]
    : [];
  if (forms.length > 1) throw unsupported(`has a normalizer sequence (${forms.map(describe).join(", ")})`);
  if (forms.length === 1) {
    const type = (forms[0] as { type?: string })?.type;
    normalization = NORMAL_FORMS.find((form) => form === type) ?? null;
    if (!normalization) throw unsupported(`has a ${describe(forms[0])} normalizer`);
  }
  const steps = (preTokenizer as { type?: string })?.type === "Sequence"
    ? (preTokenizer as { pretokenizers: Record<string, unknown>[] }).pretokenizers
    : preTokenizer
    ? [preTokenizer as Record<string, unknown>]
    : [];
  const byteLevel = steps.at(-1);
  if (byteLevel?.type !== "ByteLevel") {
    throw unsupported(`has a ${describe(preTokenizer)} pre-tokenizer, not ByteLevel`);
  }
  const isolate = steps.slice(0, -1).map((step) => {
    const pattern = step.pattern as { Regex?: unknown; String?: unknown } | undefined;
    let source: string | null = null;
    if (step.type === "Digits") {
      source = step.individual_digits === true ? String.raw`\p{N}` : String.raw`\p{N}+`;
    } else if (step.type === "Split" && step.behavior === "Isolated" && step.invert !== true) {
      if (typeof pattern?.Regex === "string") source = pattern.Regex;
      else if (typeof pattern?.String === "string") source = escapeRegex(pattern.String);
    }
    if (source === null) {
      throw unsupported(
        `has a pre-tokenizer sequence we do not implement (${steps.map(describe).join(", ")})`,
      );
    }
    try {
      return new RegExp(source, "gu");
    } catch {
      throw unsupported(`splits with a regex JavaScript cannot run: ${JSON.stringify(source)}`);
    }
  });
  return {
    normalization,
    isolate,
    addPrefixSpace: byteLevel.add_prefix_space === true,
    pattern: byteLevel.use_regex === false ? WHOLE_TEXT : GPT2_PATTERN,
  };
}

/** Split with behavior Isolated: each match is a piece, and so is the text between matches. */
function isolated(text: string, pattern: RegExp): string[] {
  const pieces: string[] = [];
  let end = 0;
  for (const match of text.matchAll(pattern)) {
    if (!match[0]) continue;
    if (match.index > end) pieces.push(text.slice(end, match.index));
    pieces.push(match[0]);
    end = match.index + match[0].length;
  }
  if (end < text.length) pieces.push(text.slice(end));
  return pieces;
}

function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

function describe(step: unknown): string {
  return JSON.stringify((step as { type?: unknown })?.type ?? "unknown");
}
