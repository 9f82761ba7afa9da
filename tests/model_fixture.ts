/**
 * The tiny model the model and LoRA tests share: GQA (4 query heads over 2
 * key/value heads, so q and k/v have different widths), two layers, an odd
 * vocabulary, T not a tile multiple; and seeded batches for it.
 *
 * @module
 */

import { resolveModelConfig } from "../model/config.ts";
import { Rng } from "../model/rng.ts";

/** The architecture. */
export const CONFIG = resolveModelConfig({
  n_layer: 2,
  n_head: 4,
  n_kv_head: 2,
  n_embd: 16,
  block_size: 7,
  vocab_size: 11,
  mlp_hidden: 24,
});
/** Sequences per batch. */
export const B = 2;
/** Tokens per sequence. */
export const T = 7;

/**
 * Seeded tokens and targets for a B × T batch, one target ignored.
 *
 * @param seed Any integer.
 * @param ignored The position whose target is the ignore index.
 * @returns Tokens and targets, B·T each.
 */
export function randomTokens(seed: number, ignored: number): { tokens: Uint32Array; targets: Uint32Array } {
  const rng = new Rng(seed);
  const tokens = Uint32Array.from({ length: B * T }, () => rng.int(CONFIG.vocab_size));
  const targets = Uint32Array.from({ length: B * T }, () => rng.int(CONFIG.vocab_size));
  targets[ignored] = 0xFFFFFFFF;
  return { tokens, targets };
}
