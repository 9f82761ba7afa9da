/**
 * Random training batches, as nanoGPT's get_batch draws them: for each row a
 * uniformly random start i, inputs tokens[i .. i+T) and targets tokens[i+1 .. i+T].
 * Fresh windows every step, from a seeded generator whose state a checkpoint keeps.
 *
 * @module
 */

import { ConfigError } from "./config.ts";
import type { TokenArray } from "./meta.ts";
import type { Rng } from "./rng.ts";

/**
 * One micro-batch on the host, rows of T tokens laid end to end, each target the
 * token after its input.
 *
 * @example
 * ```ts
 * const ids = Uint32Array.from(tokenizer.encode("First Citizen:"));
 * const batch: HostBatch = { tokens: ids.subarray(0, 8), targets: ids.subarray(1, 9) }; // B = 1, T = 8
 * ```
 */
export interface HostBatch {
  /** Inputs (B·T). */
  tokens: Uint32Array;
  /** Next-token targets (B·T). */
  targets: Uint32Array;
}

/**
 * Checks that a split is long enough for windows of `blockSize` + 1 tokens and
 * that its ids fit the model's vocabulary.
 *
 * @param data The split's tokens.
 * @param name `train.bin` or `val.bin`, for the message.
 * @param blockSize The model's block size.
 * @param vocabSize The model's vocabulary.
 * @throws {ConfigError} Naming the numbers and what to lower.
 */
export function checkSplit(data: TokenArray, name: string, blockSize: number, vocabSize: number): void {
  if (data.length <= blockSize) {
    throw new ConfigError(
      `block_size ${blockSize} needs at least ${blockSize + 1} tokens but ${name} has ${data.length}; ` +
        "lower --block_size or prepare more text",
    );
  }
  let largest = 0;
  for (let i = 0; i < data.length; i++) if (data[i] > largest) largest = data[i];
  if (largest >= vocabSize) {
    throw new ConfigError(
      `${name} holds token id ${largest} but vocab_size is ${vocabSize}; raise --vocab_size to at least ${
        largest + 1
      }`,
    );
  }
}

/**
 * Draws `batchSize` random windows of `blockSize` tokens.
 *
 * @param data The split's tokens (longer than blockSize).
 * @param shape Batch size and block size.
 * @param rng The generator (advanced by batchSize draws).
 * @returns Inputs and targets.
 * @example
 * ```ts
 * const { tokens, targets } = randomBatch(train, { batchSize: 12, blockSize: 64 }, rng);
 * ```
 */
export function randomBatch(
  data: TokenArray,
  shape: { batchSize: number; blockSize: number },
  rng: Rng,
): HostBatch {
  const { batchSize: B, blockSize: T } = shape;
  const tokens = new Uint32Array(B * T);
  const targets = new Uint32Array(B * T);
  for (let b = 0; b < B; b++) {
    const start = rng.int(data.length - T);
    tokens.set(data.subarray(start, start + T), b * T);
    targets.set(data.subarray(start + 1, start + T + 1), b * T);
  }
  return { tokens, targets };
}

/**
 * The split cut into consecutive, non-overlapping windows of `blockSize` tokens
 * (the last partial window included, its missing targets ignored): a
 * deterministic pass over every token, for a whole-split loss.
 *
 * @param data The split's tokens.
 * @param shape Batch size and block size.
 * @param ignoreIndex Target id for padding.
 * @returns Batches covering the split, and how many targets they hold.
 */
export function sequentialBatches(
  data: TokenArray,
  shape: { batchSize: number; blockSize: number },
  ignoreIndex: number,
): { batches: HostBatch[]; targets: number } {
  const { batchSize: B, blockSize: T } = shape;
  const predictable = data.length - 1; // the last token has no next token
  const windows = Math.ceil(predictable / T);
  const batches: HostBatch[] = [];
  for (let w0 = 0; w0 < windows; w0 += B) {
    const tokens = new Uint32Array(B * T);
    const targets = new Uint32Array(B * T).fill(ignoreIndex);
    for (let b = 0; b < B && w0 + b < windows; b++) {
      const start = (w0 + b) * T;
      const length = Math.min(T, predictable - start);
      tokens.set(data.subarray(start, start + length), b * T);
      targets.set(data.subarray(start + 1, start + 1 + length), b * T);
    }
    batches.push({ tokens, targets });
  }
  return { batches, targets: predictable };
}
