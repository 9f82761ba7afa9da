/**
 * What kernel tuning (`tune.ts`) tries for a matmul: the blockings, and how to
 * run a surveyed product with one. Which blocking runs a product fastest
 * depends on the GPU (its multiprocessors, registers, caches) and on the
 * product's shape, and no fixed rule picks well on every GPU.
 *
 * Every candidate sums an output's products in the same order (split K and f16
 * sums, which do not, are left out), so every choice gives the same bits
 * (tested against the untuned kernel, candidate by candidate).
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import {
  chooseMatmulTile,
  matmul,
  MATMUL_TILES,
  type MatmulArgs,
  type MatmulChoice,
  type MatmulProblem,
} from "./matmul.ts";
import { TEXEL_LANES, texelTile } from "./matmul_texel.ts";
import { blockingName } from "./matmul_tiled.ts";
import type { Recorder } from "./recorder.ts";

/**
 * The tiled blockings tried on a GPU beside `chooseMatmulTile`'s: more rows or
 * columns a workgroup, more threads with fewer outputs each, a shallower slab
 * for 256 threads, and the next slab prefetched into registers.
 */
const GPU_CANDIDATES: readonly MatmulChoice[] = [
  { tile: MATMUL_TILES.large },
  { tile: MATMUL_TILES.small },
  { tile: { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8 } },
  { tile: { bm: 64, bn: 128, bk: 16, tm: 8, tn: 8 } },
  { tile: { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 } },
  { tile: { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 } },
  { tile: { ...MATMUL_TILES.large, prefetch: true } },
];

/**
 * The tiled blockings tried for a product of at most {@link SKINNY_ROWS} rows (a
 * decoding step: a row per sequence) instead of the square ones, which would
 * compute mostly past its last row: 4 or 8 rows by 128 or 256 columns.
 */
const SKINNY_CANDIDATES: readonly MatmulChoice[] = [
  { tile: MATMUL_TILES.small },
  { tile: { bm: 4, bn: 128, bk: 16, tm: 4, tn: 4 } },
  { tile: { bm: 4, bn: 256, bk: 8, tm: 4, tn: 4 } },
  { tile: { bm: 8, bn: 128, bk: 16, tm: 4, tn: 4 } },
];

/** Products of at most this many rows get {@link SKINNY_CANDIDATES}. */
const SKINNY_ROWS = 16;

/**
 * The texel blockings tried on a software adapter beside `texelTile`'s (rows ×
 * column quads per lane): fewer rows or quads fetch more per FMA but spill less
 * and waste less past the edges of a small product.
 */
const TEXEL_CANDIDATES: readonly MatmulChoice[] = [
  { texel: { rows: 16, quads: 4 } },
  { texel: { rows: 8, quads: 4 } },
  { texel: { rows: 16, quads: 2 } },
  { texel: { rows: 32, quads: 2 } },
  { texel: { rows: 8, quads: 1 } },
];

/**
 * The blockings kernel tuning (`tune.ts`) times for a product, the one used without
 * tuning first: tiled ones on a GPU (a few rows at a time for a product of at
 * most 16 rows, such as a decoding step's), texel ones where `matmul` routes the
 * product to the texel kernel. A texel product of fewer than 8 rows (a decoding
 * step) keeps its default, which fetches each row once a step.
 *
 * @param gpu The device.
 * @param p The product.
 * @param texel Whether `matmul` runs it with the texel kernel.
 * @returns The candidates, without repeats.
 * @example
 * ```ts
 * const names = matmulCandidates(gpu, problem, false).map(matmulChoiceName); // ["tiled 64x64x16/8x8", ...]
 * ```
 */
export function matmulCandidates(gpu: Gpu, p: MatmulProblem, texel: boolean): MatmulChoice[] {
  if (texel) {
    if (p.m < 8) return [{ texel: texelTile(p) }];
    return unique([{ texel: texelTile(p) }, ...TEXEL_CANDIDATES]);
  }
  const tiles = p.m <= SKINNY_ROWS ? SKINNY_CANDIDATES : GPU_CANDIDATES;
  return unique([{ tile: chooseMatmulTile(gpu, p) }, ...tiles]);
}

/**
 * A choice as labels and reports show it: "tiled 64x64x16/8x8", "texel 16x128".
 *
 * @param choice The choice.
 * @returns Its name.
 * @example
 * ```ts
 * matmulChoiceName({ texel: { rows: 16, quads: 4 } }); // "texel 16x128"
 * ```
 */
export function matmulChoiceName(choice: MatmulChoice): string {
  if ("texel" in choice) return `texel ${choice.texel.rows}x${4 * TEXEL_LANES * choice.texel.quads}`;
  return `tiled${blockingName(choice.tile)}`;
}

/**
 * Runs a surveyed product with `choice` (for timing it).
 *
 * @param rec The recorder.
 * @param p The product.
 * @param choice The blocking.
 */
export function matmulWith(rec: Recorder, p: MatmulProblem, choice: MatmulChoice): void {
  const { out, a, b, transposeA, transposeB, accumulate } = p;
  const kernel = "texel" in choice ? { texel: choice.texel } : { tile: choice.tile, texel: false };
  const args: MatmulArgs = { out, a, b, transposeA, transposeB, accumulate, ...kernel };
  matmul(rec, args);
}

function unique(choices: MatmulChoice[]): MatmulChoice[] {
  const seen = new Set<string>();
  return choices.filter((c) => !seen.has(matmulChoiceName(c)) && seen.add(matmulChoiceName(c)));
}
