/**
 * Errors of the data layer (corpora, token files, tokenizers). Each carries a
 * one-line message that says what went wrong and what to do; the CLIs print
 * `error: <message>` and exit non-zero.
 *
 * @module
 */

/**
 * Bad input data, an unwritable output, or token files that do not match their
 * meta.json; the message names the file and the fix.
 *
 * @example
 * ```ts
 * try {
 *   await loadDataset("data/mine");
 * } catch (error) {
 *   if (error instanceof DataError) console.error(error.message); // "...; run deno task prepare ..."
 *   else throw error;
 * }
 * ```
 */
export class DataError extends Error {
  /**
   * Creates the error.
   *
   * @param message One line: what is wrong, the offending value quoted, and the fix.
   * @example
   * ```ts
   * throw new DataError('Input "data/x.txt" not found; check --input');
   * ```
   */
  constructor(message: string) {
    super(message);
    this.name = "DataError";
  }
}

/**
 * The short reason of a Deno filesystem error, without Deno's "(os error N): op 'path'" tail.
 *
 * @param error What a Deno file API threw.
 * @returns E.g. `Not a directory` or `Permission denied`.
 * @example
 * ```ts
 * osReason(new Error("Not a directory (os error 20): mkdir 'a/b'")); // "Not a directory"
 * ```
 */
export function osReason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/\s*\(os error \d+\).*$/s, "").replace(/:\s.*$/s, "").trim() || message;
}
