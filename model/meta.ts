/**
 * A prepared dataset on disk, in nanoGPT's format: `train.bin` and `val.bin` hold
 * raw little-endian token ids (uint16 when the vocabulary fits, else uint32) and
 * `meta.json` says how they were made. Written by prepare; read by train and sample.
 *
 * @module
 */

import { join } from "node:path";
import { DataError } from "./errors.ts";
import { isTokenizerName, type TokenizerName } from "./tokenizer.ts";
import type { TrainingData } from "./trainer.ts";

/** The file names inside a dataset folder. */
export const DATASET_FILES = { train: "train.bin", val: "val.bin", meta: "meta.json" } as const;

/**
 * A token file: the training or the validation split.
 *
 * @example
 * ```ts
 * const splits: Split[] = ["train", "val"];
 * for (const split of splits) console.log(split, (await readTokens("data/shakespeare_char", split)).length);
 * ```
 */
export type Split = "train" | "val";

/**
 * How ids are stored: nanoGPT uses uint16 for vocabularies up to 65,536.
 *
 * @example
 * ```ts
 * const meta = await readMeta("data/shakespeare_char");
 * const bytesPerId = meta.dtype === "uint16" ? 2 : 4; // train.bin is meta.train_tokens * bytesPerId bytes
 * ```
 */
export type TokenDType = "uint16" | "uint32";

/**
 * The contents of meta.json (snake_case keys, like nanoGPT's meta.pkl): how a
 * dataset's ids were made, so training and sampling use the same tokenizer.
 *
 * @example
 * ```ts
 * const meta: DatasetMeta = await readMeta("data/shakespeare_char");
 * console.log(meta.tokenizer, meta.vocab_size, meta.train_tokens); // char 65 1003854
 * const tokenizer = await tokenizerFromMeta(meta);
 * ```
 */
export interface DatasetMeta {
  /** The tokenizer that made the ids. */
  tokenizer: TokenizerName;
  /** Number of ids (largest id + 1). */
  vocab_size: number;
  /** Element type of train.bin and val.bin. */
  dtype: TokenDType;
  /** The id of `<|endoftext|>`, or null when the vocabulary has none. */
  eot_id: number | null;
  /** Tokens in train.bin. */
  train_tokens: number;
  /** Tokens in val.bin. */
  val_tokens: number;
  /** The share of the text's characters that went to val.bin (the tail, as in nanoGPT). */
  val_fraction: number;
  /** Character level only: the characters by id, in code point order. */
  chars?: string[];
  /** Where the text came from: the input as given, its bytes and its characters (code points). */
  source?: { input: string; bytes: number; characters: number };
}

/**
 * Token ids as read from a token file, in the file's own width (see {@link TokenDType}).
 *
 * @example
 * ```ts
 * const val: TokenArray = await readTokens("data/shakespeare_char", "val");
 * console.log(tokenizer.decode(val.subarray(0, 100)));
 * ```
 */
export type TokenArray = Uint16Array | Uint32Array;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * The storage type for a vocabulary: uint16 when every id fits in 16 bits.
 *
 * @param vocabSize Number of ids.
 * @returns `uint16` up to 65,536 ids, else `uint32`.
 * @example
 * ```ts
 * tokenDType(50257); // "uint16" (gpt2)
 * tokenDType(100277); // "uint32" (cl100k_base)
 * ```
 */
export function tokenDType(vocabSize: number): TokenDType {
  return vocabSize <= 65536 ? "uint16" : "uint32";
}

/**
 * Bytes per id of a storage type.
 *
 * @param dtype `uint16` or `uint32`.
 * @returns 2 or 4.
 */
export function bytesPerToken(dtype: TokenDType): 2 | 4 {
  return dtype === "uint16" ? 2 : 4;
}

/**
 * Ids as the little-endian bytes of a token file.
 *
 * @param ids Ids, each below the dtype's range.
 * @param dtype The file's element type.
 * @returns Bytes to append to the file.
 */
export function tokenBytes(ids: ArrayLike<number>, dtype: TokenDType): Uint8Array {
  const array = dtype === "uint16" ? Uint16Array.from(ids) : Uint32Array.from(ids);
  const bytes = new Uint8Array(array.buffer);
  if (!LITTLE_ENDIAN) swapBytes(bytes, array.BYTES_PER_ELEMENT);
  return bytes;
}

/**
 * Reads and checks a dataset's meta.json.
 *
 * @param dir The dataset folder, e.g. `data/shakespeare_char`.
 * @returns The meta data.
 * @example
 * ```ts
 * const meta = await readMeta("data/shakespeare_char");
 * console.log(meta.vocab_size, meta.train_tokens);
 * ```
 */
export async function readMeta(dir: string): Promise<DatasetMeta> {
  const path = join(dir, DATASET_FILES.meta);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new DataError(`"${path}" not found; run deno task prepare for this dataset first`);
    }
    throw error;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new DataError(`"${path}" is not valid JSON; run deno task prepare --force again`);
  }
  return checkMeta(json, path);
}

/**
 * Checks that parsed JSON is a usable meta.json.
 *
 * @param json The parsed file.
 * @param path Where it came from, for messages.
 * @returns The same object, typed.
 */
export function checkMeta(json: unknown, path: string): DatasetMeta {
  const meta = json as DatasetMeta;
  const bad = (what: string) =>
    new DataError(`"${path}" has ${what}; run deno task prepare --force again to rewrite it`);
  if (typeof json !== "object" || json === null) throw bad("no object");
  if (typeof meta.tokenizer !== "string" || !isTokenizerName(meta.tokenizer)) {
    throw bad(`an unknown tokenizer ${JSON.stringify(meta.tokenizer)}`);
  }
  for (const key of ["vocab_size", "train_tokens", "val_tokens"] as const) {
    if (!Number.isSafeInteger(meta[key]) || meta[key] < 0) {
      throw bad(`a bad ${key} ${JSON.stringify(meta[key])}`);
    }
  }
  if (meta.dtype !== tokenDType(meta.vocab_size)) {
    throw bad(`dtype ${JSON.stringify(meta.dtype)} for a vocabulary of ${meta.vocab_size}`);
  }
  if (
    meta.eot_id !== null &&
    !(Number.isInteger(meta.eot_id) && meta.eot_id >= 0 && meta.eot_id < meta.vocab_size)
  ) {
    throw bad(`a bad eot_id ${JSON.stringify(meta.eot_id)}`);
  }
  if (meta.tokenizer === "char") {
    const chars = meta.chars;
    if (!Array.isArray(chars) || chars.length + (meta.eot_id === null ? 0 : 1) !== meta.vocab_size) {
      throw bad("a character list that does not match vocab_size");
    }
    let last = -1;
    for (const char of chars) {
      const code = typeof char === "string" ? char.codePointAt(0) ?? -1 : -1;
      if (code <= last || String.fromCodePoint(code) !== char) {
        throw bad("characters that are not distinct code points in order");
      }
      last = code;
    }
  }
  return meta;
}

/**
 * Reads a whole token file and checks it against meta.json: its size, and that every id is in the vocabulary.
 *
 * @param dir The dataset folder.
 * @param split `train` or `val`.
 * @param meta The folder's meta.json (read when not given).
 * @returns The ids.
 * @example
 * ```ts
 * const val = await readTokens("data/shakespeare_char", "val"); // Uint16Array(111540)
 * ```
 */
export async function readTokens(dir: string, split: Split, meta?: DatasetMeta): Promise<TokenArray> {
  meta ??= await readMeta(dir);
  const path = join(dir, DATASET_FILES[split]);
  const count = split === "train" ? meta.train_tokens : meta.val_tokens;
  const width = bytesPerToken(meta.dtype);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new DataError(`"${path}" not found; run deno task prepare --force for this dataset again`);
    }
    throw error;
  }
  if (bytes.length !== count * width) {
    throw new DataError(
      `"${path}" has ${bytes.length} bytes but meta.json says ${count} ${meta.dtype} tokens ` +
        `(${count * width} bytes); run deno task prepare --force again`,
    );
  }
  if (!LITTLE_ENDIAN) swapBytes(bytes, width);
  const ids = meta.dtype === "uint16"
    ? new Uint16Array(bytes.buffer, bytes.byteOffset, count)
    : new Uint32Array(bytes.buffer, bytes.byteOffset, count);
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] >= meta.vocab_size) {
      throw new DataError(
        `"${path}" holds id ${ids[i]} at token ${i}, outside the vocabulary of ${meta.vocab_size}; ` +
          "run deno task prepare --force again",
      );
    }
  }
  return ids;
}

/**
 * Says how two datasets' tokenizers differ, so a checkpoint is never trained or
 * evaluated on ids that mean other characters or tokens than it learned.
 *
 * @param model The checkpoint's meta.json (what the model was trained on).
 * @param data The dataset's meta.json.
 * @returns "" when the ids mean the same text, else what differs, in a few words.
 * @example
 * ```ts
 * const problem = tokenizerMismatch(checkpoint.tokenizer, await readMeta("data/shakespeare_char"));
 * if (problem) throw new Error(`this checkpoint cannot read that dataset: ${problem}`);
 * ```
 */
export function tokenizerMismatch(model: DatasetMeta, data: DatasetMeta): string {
  if (model.tokenizer !== data.tokenizer) {
    return `the model uses the ${model.tokenizer} tokenizer, the data ${data.tokenizer}`;
  }
  if (model.tokenizer !== "char") return "";
  const a = model.chars ?? [];
  const b = data.chars ?? [];
  const differs = a.findIndex((char, i) => char !== b[i]);
  if (a.length === b.length && differs < 0 && model.eot_id === data.eot_id) return "";
  const at = differs < 0 ? Math.min(a.length, b.length) : differs;
  return `the character vocabularies differ (${a.length} and ${b.length} characters, first at id ${at}: ` +
    `${JSON.stringify(a[at] ?? null)} vs ${JSON.stringify(b[at] ?? null)})`;
}

/**
 * Reads a prepared dataset whole: meta.json and both splits, checked against
 * each other, ready for `Trainer.create`.
 *
 * @param dir A folder written by `deno task prepare` or `prepareDataset`.
 * @returns The train and val token ids and the meta.json.
 * @example
 * ```ts
 * const data = await loadDataset("data/shakespeare_char");
 * console.log(data.meta.vocab_size, data.train.length, data.val.length); // 65 1003854 111540
 * ```
 */
export async function loadDataset(dir: string): Promise<TrainingData> {
  const meta = await readMeta(dir);
  return { train: await readTokens(dir, "train", meta), val: await readTokens(dir, "val", meta), meta };
}

function swapBytes(bytes: Uint8Array, width: number): void {
  for (let i = 0; i + width <= bytes.length; i += width) bytes.subarray(i, i + width).reverse();
}
