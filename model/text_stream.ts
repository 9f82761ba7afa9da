/**
 * A corpus (one file, or every file of a folder) read as a stream of text chunks
 * with bounded memory. Chunks are cut only where encoding the pieces gives the same
 * ids as encoding the whole text at once, for every tokenizer we ship; reads that
 * end inside a multi-byte character carry its bytes over to the next read.
 *
 * @module
 */

import { join } from "node:path";
import { DATASET_FILES } from "./meta.ts";
import { DataError, osReason } from "./errors.ts";
import { EOT } from "./tokenizer.ts";

/** One file of a corpus. */
export interface TextSource {
  /** Path as given or as found in the folder. */
  path: string;
  /** Size in bytes. */
  size: number;
}

/** A piece of the corpus's text and how far reading has got. */
export interface TextChunk {
  /** The text: a prefix of what is left, ending at a safe cut. */
  text: string;
  /** Input bytes read so far, over all files. */
  bytesRead: number;
}

/** How to read a corpus. */
export interface TextStreamOptions {
  /** Bytes per read; chunks are about this many characters (default 256 KiB). */
  chunkBytes?: number;
  /** Text put between consecutive files (`<|endoftext|>` for `--eot`; default none). */
  separator?: string;
  /** Replace bytes that are not UTF-8 with U+FFFD instead of failing (default false). */
  replaceInvalid?: boolean;
  /**
   * Longest text held without a safe cut before it is cut anyway, with a warning
   * (default: 16 reads' worth, at least 2^20 characters). Bounds memory on text without line breaks.
   */
  maxUncutChars?: number;
  /** Called with a warning line, e.g. when a chunk had to be cut mid-line. */
  onWarning?: (message: string) => void;
}

/** Default bytes per read. */
export const DEFAULT_CHUNK_BYTES = 1 << 18;

/**
 * The files of an input: the file itself, or a folder's files in name order (recursively),
 * leaving out hidden files and a dataset's own outputs (train.bin, val.bin, meta.json).
 *
 * @param input A file or folder path.
 * @returns The files, each with its size.
 * @example
 * ```ts
 * const sources = await listSources("data/shakespeare_char/input.txt");
 * ```
 */
export async function listSources(input: string): Promise<TextSource[]> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(input);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new DataError(`Input "${input}" not found; check --input`);
    }
    throw new DataError(`Cannot read input "${input}": ${osReason(error)}`);
  }
  if (info.isFile) return [{ path: input, size: info.size }];
  const sources: TextSource[] = [];
  await walk(input, sources);
  if (sources.length === 0) throw new DataError(`Input folder "${input}" has no files; check --input`);
  return sources;
}

async function walk(dir: string, sources: TextSource[]): Promise<void> {
  const outputs: readonly string[] = Object.values(DATASET_FILES);
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.name.startsWith(".") && !outputs.includes(entry.name)) names.push(entry.name);
  }
  names.sort();
  for (const name of names) {
    const path = join(dir, name);
    const info = await Deno.stat(path);
    if (info.isDirectory) await walk(path, sources);
    else if (info.isFile) sources.push({ path, size: info.size });
  }
}

/**
 * Reads the sources as text chunks cut at safe points (see `lastSafeCut`), so that
 * tokenizing chunk by chunk equals tokenizing the concatenated text in one go.
 *
 * @param sources The files, in order.
 * @param options Chunk size, separator, UTF-8 handling.
 * @returns Chunks, in order; their texts concatenate to the whole corpus.
 * @example
 * ```ts
 * for await (const { text } of readTextChunks(await listSources("data/sanguo/input.txt"))) {
 *   console.log(text.length);
 * }
 * ```
 */
export async function* readTextChunks(
  sources: readonly TextSource[],
  options: TextStreamOptions = {},
): AsyncGenerator<TextChunk> {
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const maxUncut = options.maxUncutChars ?? Math.max(16 * chunkBytes, 1 << 20);
  let pending = "";
  let bytesRead = 0;
  for (const [index, source] of sources.entries()) {
    if (index > 0 && options.separator) pending += options.separator;
    for await (
      const { text, bytes } of decodeFile(source.path, chunkBytes, options.replaceInvalid ?? false)
    ) {
      pending += text;
      bytesRead += bytes;
      if (pending.length < chunkBytes) continue;
      let cut = lastSafeCut(pending);
      if (cut <= 0 && pending.length >= maxUncut) {
        cut = forcedCut(pending, pending.length - Math.min(chunkBytes, maxUncut >> 1));
        options.onWarning?.(
          `No line break in ${pending.length} characters before byte ${bytesRead} of the input; ` +
            "cut the text mid-line there (tokens next to the cut may differ from a one-shot encode)",
        );
      }
      if (cut > 0) {
        yield { text: pending.slice(0, cut), bytesRead };
        pending = pending.slice(cut);
      }
    }
  }
  if (pending) yield { text: pending, bytesRead };
}

const SPACE = /\s/u;
const WORD_END = /[\p{L}\p{N}]$/u;

/**
 * The last position where `text` can be cut with every tokenizer giving the same ids
 * for the two halves as for the whole, or -1. It is the start of a line when the line
 * break is a lone `\n` between two characters that are not whitespace (and the next is
 * not `/`, which o200k_base glues to line breaks); failing that, a space that follows
 * a letter or digit. Why this is safe for the tiktoken split patterns: no piece holds
 * `\n` followed by a non-space character (o200k: other than `/`), and a lone `\n`
 * after a non-space character is one piece whether or not text follows it, while a
 * longer whitespace run at the end of a text would be one piece instead of two. No
 * piece holds a letter or digit followed by a space, and no pattern looks behind.
 * Neither kind of cut falls inside `<|endoftext|>` or a surrogate pair.
 *
 * @param text A chunk of text.
 * @returns The cut position (0 < cut < text.length), or -1 when there is none.
 */
export function lastSafeCut(text: string): number {
  for (let i = text.lastIndexOf("\n", text.length - 2); i >= 1; i = text.lastIndexOf("\n", i - 1)) {
    const after = text[i + 1];
    if (after !== "/" && !SPACE.test(after) && !SPACE.test(text[i - 1])) return i + 1;
  }
  for (let i = text.lastIndexOf(" ", text.length - 1); i >= 1; i = text.lastIndexOf(" ", i - 1)) {
    if (WORD_END.test(text.slice(Math.max(0, i - 2), i))) return i;
  }
  return -1;
}

/** A cut near `at` that splits neither a surrogate pair nor an `<|endoftext|>`. */
function forcedCut(text: string, at: number): number {
  const start = text.lastIndexOf(EOT, at);
  if (start >= 0 && start < at && at < start + EOT.length) at = start;
  const code = text.charCodeAt(at - 1);
  return code >= 0xd800 && code < 0xdc00 ? at - 1 : at;
}

/**
 * One file's text, read `chunkBytes` at a time. A read that ends inside a multi-byte
 * character keeps those bytes for the next read, so each piece decodes on its own.
 */
async function* decodeFile(
  path: string,
  chunkBytes: number,
  replaceInvalid: boolean,
): AsyncGenerator<{ text: string; bytes: number }> {
  // BOMs are kept as U+FEFF, as Python's "utf-8" codec (and so nanoGPT) does.
  const decoder = new TextDecoder("utf-8", { fatal: !replaceInvalid, ignoreBOM: true });
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new DataError(`Input "${path}" not found; check --input`);
    }
    throw new DataError(`Cannot read input "${path}": ${osReason(error)}`);
  }
  try {
    const buffer = new Uint8Array(chunkBytes + 3);
    let carried = 0; // bytes of an unfinished character at the start of `buffer`
    let offset = 0; // file offset of buffer[0]
    for (;;) {
      const read = await file.read(buffer.subarray(carried, carried + chunkBytes));
      if (read === null) break;
      const end = carried + read;
      const complete = completeEnd(buffer, end);
      yield { text: decode(decoder, buffer.subarray(0, complete), path, offset), bytes: read };
      buffer.copyWithin(0, complete, end);
      carried = end - complete;
      offset += complete;
    }
    if (carried > 0) yield { text: decode(decoder, buffer.subarray(0, carried), path, offset), bytes: 0 };
  } finally {
    file.close();
  }
}

function decode(decoder: TextDecoder, bytes: Uint8Array, path: string, offset: number): string {
  try {
    return decoder.decode(bytes);
  } catch {
    const at = invalidUtf8At(bytes);
    const byte = bytes[at].toString(16).padStart(2, "0");
    throw new DataError(
      `Input "${path}" is not UTF-8 at byte ${offset + at} (0x${byte}); convert it to UTF-8, ` +
        "or pass --replace_invalid to replace such bytes with U+FFFD",
    );
  }
}

/** The end of the last complete character in bytes[0, end): a trailing unfinished sequence is excluded. */
function completeEnd(bytes: Uint8Array, end: number): number {
  for (let i = end - 1; i >= Math.max(0, end - 3); i--) {
    const byte = bytes[i];
    if ((byte & 0xc0) === 0x80) continue; // continuation byte: look further back
    const length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    return i + length > end ? i : end;
  }
  return end;
}

/**
 * The offset of the first byte that starts an ill-formed UTF-8 sequence (overlong forms,
 * surrogates, code points above U+10FFFF, stray continuation bytes, truncation), or -1.
 *
 * @param bytes The bytes to check.
 * @returns The offset, or -1 when all of `bytes` is UTF-8.
 */
export function invalidUtf8At(bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length;) {
    const lead = bytes[i];
    if (lead < 0x80) {
      i++;
      continue;
    }
    let length: number;
    let low = 0x80; // allowed range of the second byte
    let high = 0xbf;
    if (lead >= 0xc2 && lead <= 0xdf) length = 2;
    else if (lead >= 0xe0 && lead <= 0xef) {
      length = 3;
      if (lead === 0xe0) low = 0xa0;
      if (lead === 0xed) high = 0x9f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      length = 4;
      if (lead === 0xf0) low = 0x90;
      if (lead === 0xf4) high = 0x8f;
    } else return i;
    if (i + length > bytes.length || bytes[i + 1] < low || bytes[i + 1] > high) return i;
    for (let k = 2; k < length; k++) if ((bytes[i + k] & 0xc0) !== 0x80) return i;
    i += length;
  }
  return -1;
}
