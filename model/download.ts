/**
 * Fetches a corpus over HTTP(S) to a file, streaming (never whole in memory), via a
 * temporary name so that a failed or interrupted download leaves nothing behind.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import { DataError, osReason } from "./errors.ts";

/**
 * Tells a URL input from a path.
 *
 * @param input A `--input` value.
 * @returns Whether it is an http:// or https:// URL.
 */
export function isUrl(input: string): boolean {
  return /^https?:\/\//i.test(input);
}

/** How a download goes. */
export interface DownloadOptions {
  /** Called after each received piece with bytes so far and the announced total (0 when unknown). */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /** Aborts the download. */
  signal?: AbortSignal;
}

/**
 * Downloads `url` to `path` (replacing it).
 *
 * @param url An http:// or https:// URL.
 * @param path Where to store it; written as a hidden temporary file first, then renamed.
 * @param options Progress callback and abort signal.
 * @returns The number of bytes written.
 * @example
 * ```ts
 * await downloadToFile("https://example.com/input.txt", "data/example/input.txt");
 * ```
 */
export async function downloadToFile(
  url: string,
  path: string,
  options: DownloadOptions = {},
): Promise<number> {
  let response: Response;
  try {
    response = await fetch(url, { signal: options.signal });
  } catch (error) {
    if (options.signal?.aborted) throw error;
    throw new DataError(`Cannot download "${url}": ${osReason(error)}; check the URL and the network`);
  }
  if (!response.ok || !response.body) {
    await response.body?.cancel();
    throw new DataError(
      `Download of "${url}" failed: HTTP ${response.status} ${response.statusText}; check the URL`,
    );
  }
  const total = Number(response.headers.get("content-length") ?? 0) || 0;
  const temporary = join(dirname(path), `.${basename(path)}.${Deno.pid}.part`);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(temporary, { write: true, create: true, truncate: true });
  } catch (error) {
    await response.body.cancel();
    throw new DataError(`Cannot write "${temporary}": ${osReason(error)}; choose another --out`);
  }
  let done = 0;
  try {
    for await (const piece of response.body) {
      await writeAll(file, piece);
      done += piece.length;
      options.onProgress?.(done, total);
    }
    file.close();
    await Deno.rename(temporary, path);
  } catch (error) {
    try {
      file.close();
    } catch { /* already closed */ }
    await Deno.remove(temporary).catch(() => {});
    throw error;
  }
  return done;
}

/**
 * Writes all of `bytes` (a single `write` may take only part of them).
 *
 * @param file An open file.
 * @param bytes What to write.
 */
export async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await file.write(bytes.subarray(at));
}
