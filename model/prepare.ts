/**
 * Any corpus (a file, a folder of files, or a URL) to nanoGPT-compatible token
 * files: `train.bin`, `val.bin` and `meta.json` (see meta.ts), streaming with
 * bounded memory.
 *
 * Two passes over the text. The first checks the UTF-8, counts the characters
 * (the split point, like nanoGPT's, is `int(n * (1 - val_fraction))` characters
 * into the text) and, at character level, collects the vocabulary. The second
 * encodes chunk by chunk; chunks are cut where tokens equal a one-shot encode (see
 * text_stream.ts), and the split is a hard boundary: the two sides are encoded
 * separately, as nanoGPT does. Everything is written under temporary names and
 * renamed at the end, so a failed or interrupted run leaves no partial outputs.
 *
 * @module
 */

import { join } from "node:path";
import { downloadToFile, isUrl, writeAll } from "./download.ts";
import { DataError, osReason } from "./errors.ts";
import { DATASET_FILES, type DatasetMeta, tokenBytes, tokenDType } from "./meta.ts";
import { listSources, readTextChunks, type TextStreamOptions } from "./text_stream.ts";
import { EOT, isTokenizerName, loadTokenizer, type TokenizerName } from "./tokenizer.ts";

/**
 * What {@link prepareDataset} reads, where it writes, and how it tokenizes and splits.
 *
 * @example
 * ```ts
 * const options: PrepareOptions = { input: "my_corpus/", out: "data/mine", tokenizer: "gpt2", eot: true };
 * await prepareDataset({ ...options, valFraction: 0.05, onWarning: (line) => console.warn(line) });
 * ```
 */
export interface PrepareOptions {
  /** A text file, a folder of text files, or an http(s) URL (downloaded to `<out>/input.txt`). */
  input: string;
  /** The dataset folder to write (created if missing). */
  out: string;
  /** Tokenizer (default `char`). */
  tokenizer?: TokenizerName;
  /** Share of the characters, from the end, that go to val.bin (default 0.1, like nanoGPT). */
  valFraction?: number;
  /** Join the files of a folder with `<|endoftext|>` (default: concatenate them as they are). */
  eot?: boolean;
  /** Overwrite existing outputs (default false: refuse). */
  force?: boolean;
  /** Replace bytes that are not UTF-8 with U+FFFD instead of failing (default false). */
  replaceInvalid?: boolean;
  /** Bytes per read (default 256 KiB); tests make it tiny to split characters across reads. */
  chunkBytes?: number;
  /** Longest text held without a safe cut before cutting anyway (see `TextStreamOptions`). */
  maxUncutChars?: number;
  /** Warn when a split has fewer tokens than this (default 257: one block of nanoGPT's 256 plus its target). */
  minSplitTokens?: number;
  /** Progress reports, about one per chunk. */
  onProgress?: (progress: PrepareProgress) => void;
  /** Warnings (small splits, forced cuts), one line each. */
  onWarning?: (message: string) => void;
  /** Stops the run; temporary files are removed. */
  signal?: AbortSignal;
}

/**
 * Where a {@link prepareDataset} run is, as passed to its `onProgress` callback.
 *
 * @example
 * ```ts
 * const onProgress = (p: PrepareProgress) => {
 *   const percent = p.bytesTotal > 0 ? ((100 * p.bytesDone) / p.bytesTotal).toFixed(0) : "?";
 *   console.log(`${p.phase} ${percent}% ${p.tokens} tokens`);
 * };
 * await prepareDataset({ input: "input.txt", out: "data/mine", onProgress });
 * ```
 */
export interface PrepareProgress {
  /** `download` (URL input), `scan` (first pass) or `encode` (second pass). */
  phase: "download" | "scan" | "encode";
  /** Input bytes handled in this phase. */
  bytesDone: number;
  /** Input bytes in all (0 when unknown: a download without Content-Length). */
  bytesTotal: number;
  /** Tokens written so far (encode only). */
  tokens: number;
  /** Milliseconds since the phase began. */
  elapsedMs: number;
}

/**
 * What a {@link prepareDataset} run produced: the folder, its meta.json and the warnings.
 *
 * @example
 * ```ts
 * const result: PrepareResult = await prepareDataset({ input: "input.txt", out: "data/mine" });
 * console.log(result.out, result.meta.vocab_size, result.warnings.length);
 * ```
 */
export interface PrepareResult {
  /** The dataset folder. */
  out: string;
  /** What was written to meta.json. */
  meta: DatasetMeta;
  /** Warnings given on the way (also passed to `onWarning`). */
  warnings: string[];
}

/**
 * Prepares a dataset: reads the input, tokenizes it, writes train.bin, val.bin and meta.json.
 *
 * @param options Input, output folder, tokenizer and the rest (see `PrepareOptions`).
 * @returns The meta data written and any warnings.
 * @example
 * ```ts
 * const { meta } = await prepareDataset({
 *   input: "data/shakespeare_char/input.txt",
 *   out: "data/shakespeare_char",
 * });
 * console.log(meta.train_tokens, meta.val_tokens, meta.vocab_size); // 1003854 111540 65
 * ```
 */
export async function prepareDataset(options: PrepareOptions): Promise<PrepareResult> {
  const tokenizerName = options.tokenizer ?? "char";
  const valFraction = options.valFraction ?? 0.1;
  if (!isTokenizerName(tokenizerName)) {
    throw new DataError(`Unknown tokenizer "${tokenizerName}"; choose char, gpt2, cl100k_base or o200k_base`);
  }
  if (!(valFraction >= 0 && valFraction < 1)) {
    throw new DataError(`val_fraction ${valFraction} is outside [0, 1); use e.g. 0.1`);
  }
  const { out } = options;
  const warnings: string[] = [];
  const warn = (message: string) => {
    if (warnings.includes(message)) return; // both passes see the same forced cuts
    warnings.push(message);
    options.onWarning?.(message);
  };
  const progress = (
    phase: PrepareProgress["phase"],
    started: number,
    done: number,
    total: number,
    tokens = 0,
  ) =>
    options.onProgress?.({
      phase,
      bytesDone: done,
      bytesTotal: total,
      tokens,
      elapsedMs: performance.now() - started,
    });

  const url = isUrl(options.input);
  // A missing or empty input is the first thing to hear about (a URL's only after its download).
  let sources = url ? [] : await listSources(options.input);
  const outputs: string[] = Object.values(DATASET_FILES);
  await makeOutputFolder(out, url ? [...outputs, "input.txt"] : outputs, options.force);
  // Opened first: an output folder that cannot be written fails before any long pass.
  const files = new TemporaryOutputs(out);
  let input = options.input;
  try {
    const train = await files.open(DATASET_FILES.train);
    const val = await files.open(DATASET_FILES.val);
    if (url) {
      // Renamed to input.txt with the outputs, or removed with them if the run fails.
      input = files.reserve("input.txt");
      const started = performance.now();
      await downloadToFile(options.input, input, {
        signal: options.signal,
        onProgress: (done, total) => progress("download", started, done, total),
      });
      sources = await listSources(input);
    }
    const totalBytes = sources.reduce((sum, source) => sum + source.size, 0);
    if (totalBytes === 0) throw new DataError(`Input "${input}" is empty; give a text with something in it`);
    const stream: TextStreamOptions = {
      chunkBytes: options.chunkBytes,
      maxUncutChars: options.maxUncutChars,
      separator: options.eot ? EOT : undefined,
      replaceInvalid: options.replaceInvalid,
      onWarning: warn,
    };

    // Pass 1: characters, and the character vocabulary.
    let started = performance.now();
    const scan = new Scan(tokenizerName === "char");
    for await (const chunk of readTextChunks(sources, stream)) {
      options.signal?.throwIfAborted();
      scan.add(chunk.text);
      progress("scan", started, chunk.bytesRead, totalBytes);
    }
    const characters = scan.characters;
    const chars = tokenizerName === "char" ? scan.vocabulary() : undefined;
    const tokenizer = await loadTokenizer(tokenizerName, { chars, eot: scan.sawEot });
    const dtype = tokenDType(tokenizer.vocabSize);

    // Pass 2: encode and write, the first int(n * (1 - val_fraction)) characters to train.bin.
    const splitAt = Math.floor(characters * (1 - valFraction));
    const counts = { train: 0, val: 0 };
    const write = async (split: "train" | "val", text: string) => {
      if (!text) return;
      const ids = tokenizer.encode(text);
      await writeAll(split === "train" ? train : val, tokenBytes(ids, dtype));
      counts[split] += ids.length;
    };
    started = performance.now();
    let seen = 0; // characters before the current chunk
    for await (const chunk of readTextChunks(sources, stream)) {
      options.signal?.throwIfAborted();
      const length = countCodePoints(chunk.text);
      if (seen + length <= splitAt) {
        await write("train", chunk.text);
      } else if (seen >= splitAt) {
        await write("val", chunk.text);
      } else {
        const cut = splitIndex(chunk.text, splitAt - seen);
        await write("train", chunk.text.slice(0, cut));
        await write("val", chunk.text.slice(cut));
      }
      seen += length;
      progress("encode", started, chunk.bytesRead, totalBytes, counts.train + counts.val);
    }

    const meta: DatasetMeta = {
      tokenizer: tokenizerName,
      vocab_size: tokenizer.vocabSize,
      dtype,
      eot_id: tokenizer.eotId,
      train_tokens: counts.train,
      val_tokens: counts.val,
      val_fraction: valFraction,
      ...(chars ? { chars } : {}),
      source: { input: options.input, bytes: totalBytes, characters },
    };
    await files.writeText(DATASET_FILES.meta, formatMeta(meta));
    await files.commit();
    const least = options.minSplitTokens ?? 257;
    for (const split of ["train", "val"] as const) {
      if (counts[split] < least) {
        warn(
          `${DATASET_FILES[split]} has only ${counts[split]} tokens (of ${counts.train + counts.val}, ` +
            `val_fraction ${valFraction}); training needs block_size + 1 tokens per split (${least} for ` +
            `block_size ${least - 1}): give more text or change --val_fraction`,
        );
      }
    }
    return { out, meta, warnings };
  } catch (error) {
    // Name the URL rather than the temporary file it was downloaded to.
    if (url && error instanceof DataError) {
      throw new DataError(error.message.replaceAll(input, options.input));
    }
    throw error;
  } finally {
    await files.discard();
  }
}

/** meta.json text: one key per line, the character list on one line of its own. */
function formatMeta(meta: DatasetMeta): string {
  const { chars, ...rest } = meta;
  const json = JSON.stringify(rest, null, 2);
  return (chars ? json.replace(/\n}$/, `,\n  "chars": ${JSON.stringify(chars)}\n}`) : json) + "\n";
}

/** Creates `out` and checks that none of `names` exists there unless `force`. */
async function makeOutputFolder(out: string, names: string[], force = false): Promise<void> {
  try {
    await Deno.mkdir(out, { recursive: true });
  } catch (error) {
    throw new DataError(`Cannot create the output folder "${out}": ${osReason(error)}; choose another --out`);
  }
  if (force) return;
  for (const name of names) {
    const path = join(out, name);
    let exists = true;
    try {
      await Deno.lstat(path);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      exists = false;
    }
    if (exists) throw new DataError(`"${path}" already exists; pass --force to overwrite it`);
  }
}

/** Output files under hidden temporary names, renamed into place together at the end. */
class TemporaryOutputs {
  #out: string;
  #open: { name: string; temporary: string; file?: Deno.FsFile }[] = [];

  constructor(out: string) {
    this.#out = out;
  }

  /** A temporary path for `name` that someone else writes. */
  reserve(name: string): string {
    const temporary = join(this.#out, `.${name}.${Deno.pid}.tmp`);
    this.#open.push({ name, temporary });
    return temporary;
  }

  async open(name: string): Promise<Deno.FsFile> {
    const temporary = join(this.#out, `.${name}.${Deno.pid}.tmp`);
    try {
      const file = await Deno.open(temporary, { write: true, create: true, truncate: true });
      this.#open.push({ name, temporary, file });
      return file;
    } catch (error) {
      throw new DataError(
        `Cannot write to the output folder "${this.#out}": ${osReason(error)}; choose another --out`,
      );
    }
  }

  async writeText(name: string, text: string): Promise<void> {
    const file = await this.open(name);
    await writeAll(file, new TextEncoder().encode(text));
  }

  /** Closes and renames every file into place (meta.json last: it marks a complete dataset). */
  async commit(): Promise<void> {
    for (const entry of this.#open) {
      entry.file?.close();
      entry.file = undefined;
    }
    for (const entry of this.#open) await Deno.rename(entry.temporary, join(this.#out, entry.name));
    this.#open = [];
  }

  /** Removes whatever was not committed. */
  async discard(): Promise<void> {
    for (const entry of this.#open) {
      entry.file?.close();
      await Deno.remove(entry.temporary).catch(() => {});
    }
    this.#open = [];
  }
}

/** The first pass: counts code points and, at character level, marks which occur. */
class Scan {
  /** Code points seen, `<|endoftext|>` counted as its 13 characters. */
  characters = 0;
  /** Whether the text holds `<|endoftext|>`. */
  sawEot = false;
  #seen: Uint8Array | null;

  constructor(collect: boolean) {
    this.#seen = collect ? new Uint8Array(0x110000) : null;
  }

  add(text: string): void {
    this.characters += countCodePoints(text);
    const seen = this.#seen;
    let start = 0;
    for (let at = text.indexOf(EOT); at >= 0; at = text.indexOf(EOT, start)) {
      this.sawEot = true;
      if (seen) mark(seen, text, start, at);
      start = at + EOT.length;
    }
    if (seen) mark(seen, text, start, text.length);
  }

  /** The characters seen, in code point order. */
  vocabulary(): string[] {
    const chars: string[] = [];
    this.#seen!.forEach((flag, code) => {
      if (flag) chars.push(String.fromCodePoint(code));
    });
    return chars;
  }
}

function mark(seen: Uint8Array, text: string, start: number, end: number): void {
  for (let i = start; i < end; i++) {
    const code = text.codePointAt(i)!;
    seen[code] = 1;
    if (code > 0xffff) i++;
  }
}

/** Unicode code points in `text` (Python's `len`): UTF-16 length less the surrogate pairs. */
function countCodePoints(text: string): number {
  let pairs = 0;
  for (let i = 0; i < text.length - 1; i++) {
    const code = text.charCodeAt(i);
    if (code >= 0xd800 && code < 0xdc00) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next < 0xe000) {
        pairs++;
        i++;
      }
    }
  }
  return text.length - pairs;
}

/**
 * The UTF-16 index of code point `codePoints` of `text`, moved past an `<|endoftext|>`
 * that it would cut (the marker stays whole, on the train side).
 */
function splitIndex(text: string, codePoints: number): number {
  let index = 0;
  for (let n = 0; n < codePoints; n++) index += text.codePointAt(index)! > 0xffff ? 2 : 1;
  const start = text.lastIndexOf(EOT, index - 1);
  return start >= 0 && start < index && index < start + EOT.length ? start + EOT.length : index;
}
