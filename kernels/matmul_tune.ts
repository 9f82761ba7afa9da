/**
 * Matmul autotuning: which blocking runs a product fastest depends on the GPU
 * (its multiprocessors, registers, caches) and on the product's shape, and no
 * fixed rule picks well on every GPU. {@link tuneMatmuls} records some work
 * (a training step, say) without running it to learn its distinct products,
 * times each product's candidate blockings side by side on this device, and
 * makes `matmul` use the fastest from then on.
 *
 * The candidates are chosen so that tuning cannot change a result: each of them
 * sums an output's products in the same order (split K and f16 sums, which do
 * not, are left out), so every choice gives the same bits and a tuned run
 * matches an untuned one exactly (tested).
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import { chooseMatmulTile, matmul, MATMUL_TILES, type MatmulArgs, type MatmulProblem } from "./matmul.ts";
import {
  beginSurvey,
  endSurvey,
  keepChoice,
  type MatmulChoice,
  type SurveyedProduct,
  tunedChoice,
} from "./matmul_choice.ts";
import { TEXEL_LANES, texelTile } from "./matmul_texel.ts";
import { blockingName } from "./matmul_tiled.ts";
import type { Recorder } from "./recorder.ts";
import { GpuTimer } from "./timer.ts";

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
 * How much faster tuned products run than with the default blockings, weighted
 * by how often the work calls each: Σ calls·defaultMs / Σ calls·ms (1 when
 * nothing was tuned).
 *
 * @param rows What {@link tuneMatmuls} returned.
 * @returns The speed-up of the work's matmul time.
 * @example
 * ```ts
 * console.log(`matmuls ${tunedSpeedup(await trainer.tuneMatmuls()).toFixed(2)}x faster`);
 * ```
 */
export function tunedSpeedup(rows: readonly MatmulTuning[]): number {
  const sum = (time: (r: MatmulTuning) => number) => rows.reduce((s, r) => s + r.calls * time(r), 0);
  return rows.length === 0 ? 1 : sum((r) => r.defaultMs) / sum((r) => r.ms);
}

/**
 * What a tuning run did, as reports and benchmarks record it.
 *
 * @example
 * ```ts
 * const summary: TuningSummary = { products: 15, seconds: 2.4, matmul_speedup: 1.18 };
 * ```
 */
export interface TuningSummary {
  /** Products tuned. */
  products: number;
  /** Wall-clock seconds the tuning took (compiling the candidates, mostly). */
  seconds: number;
  /** {@link tunedSpeedup} of the rows. */
  matmul_speedup: number;
}

/**
 * Runs a tuning and summarises it.
 *
 * @param tune Starts the tuning, e.g. `() => trainer.tuneMatmuls()`.
 * @returns How many products, how long, and the speed-up.
 * @example
 * ```ts
 * const { products, seconds, matmul_speedup } = await timeTuning(() => generator.tuneMatmuls());
 * ```
 */
export async function timeTuning(tune: () => Promise<MatmulTuning[]>): Promise<TuningSummary> {
  const began = performance.now();
  const rows = await tune();
  return {
    products: rows.length,
    seconds: (performance.now() - began) / 1000,
    matmul_speedup: tunedSpeedup(rows),
  };
}

/**
 * The line the CLIs print after tuning.
 *
 * @param summary From {@link timeTuning}.
 * @returns E.g. "tuned 15 matmul products in 2.4 s: they run 1.18x as fast as with the default blockings
 *   (--tune_matmul=off skips this)".
 * @example
 * ```ts
 * console.error(tuningLine(await timeTuning(() => trainer.tuneMatmuls())));
 * ```
 */
export function tuningLine(summary: TuningSummary): string {
  return `tuned ${summary.products} matmul products in ${summary.seconds.toFixed(1)} s: they run ` +
    `${
      summary.matmul_speedup.toFixed(2)
    }x as fast as with the default blockings (--tune_matmul=off skips this)`;
}

/**
 * One tuned product, as {@link tuneMatmuls} reports it.
 *
 * @example
 * ```ts
 * const row: MatmulTuning = {
 *   product: "tiled A·Bᵀ f32·f32->f32 1x16384x1152x384 strides 0,0",
 *   choice: "tiled 128x64x16/8x8", ms: 0.21, defaultMs: 0.27, candidates: 7, calls: 4,
 * };
 * ```
 */
export interface MatmulTuning {
  /** The product: kernel family, form, dtypes, batch×M×N×K and batch strides. */
  product: string;
  /** The blocking chosen. */
  choice: string;
  /** Its median time, ms (GPU time with timestamps, else wall clock to completion). */
  ms: number;
  /** The median time of the blocking used without tuning, ms. */
  defaultMs: number;
  /** Blockings timed. */
  candidates: number;
  /** Calls of the product in the work tuned (a layer's products come once a layer). */
  calls: number;
}

/**
 * How {@link tuneMatmuls} measures.
 *
 * @example
 * ```ts
 * // More rounds, and only the default blocking against a 128x64 one.
 * const options: TuneOptions = {
 *   rounds: 9,
 *   candidates: (gpu, p, texel) => [matmulCandidates(gpu, p, texel)[0], { tile: { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8 } }],
 * };
 * await tuneMatmuls(gpu, record, options);
 * ```
 */
export interface TuneOptions {
  /** Rounds of timing, every candidate once a round in rotating order (default 5; 3 on software adapters). */
  rounds?: number;
  /** The blockings to time for a product (default {@link matmulCandidates}); the first is the baseline. */
  candidates?: (gpu: Gpu, p: MatmulProblem, texel: boolean) => MatmulChoice[];
}

/**
 * The blockings {@link tuneMatmuls} times for a product, the one used without
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
 * const names = matmulCandidates(gpu, problem, false).map(choiceName); // ["tiled 64x64x16/8x8", ...]
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
 * choiceName({ texel: { rows: 16, quads: 4 } }); // "texel 16x128"
 * ```
 */
export function choiceName(choice: MatmulChoice): string {
  if ("texel" in choice) return `texel ${choice.texel.rows}x${4 * TEXEL_LANES * choice.texel.quads}`;
  return `tiled${blockingName(choice.tile)}`;
}

/**
 * Tunes the products `record` makes: records it into a command encoder that is
 * never submitted (nothing it records runs, and nothing else it does should
 * matter), then, for each distinct product not tuned before on `gpu`, times
 * its candidates on the product's own tensors and keeps the fastest for every
 * later `matmul` of that product on `gpu`. Calls that force a `tile` or `texel`
 * are left alone.
 *
 * Run it before the work it tunes: timing writes the products' outputs (and
 * adds into those of `accumulate` products), which that work overwrites.
 *
 * @param gpu The device.
 * @param record Records the work to tune (e.g. a training step's forward and backward).
 * @param options Rounds and candidates.
 * @returns One row per product tuned now.
 * @example
 * ```ts
 * const rows = await tuneMatmuls(gpu, (rec) => matmul(rec, { out: y, a: x, b: weight, transposeB: true }));
 * for (const r of rows) console.log(r.product, r.choice, (r.defaultMs / r.ms).toFixed(2) + "x");
 * ```
 */
export async function tuneMatmuls(
  gpu: Gpu,
  record: (rec: Recorder) => void,
  options: TuneOptions = {},
): Promise<MatmulTuning[]> {
  const survey = gpu.recorder({ label: "matmul survey (never submitted)" });
  beginSurvey(survey);
  let products: Map<string, SurveyedProduct>;
  try {
    record(survey);
  } finally {
    products = endSurvey(survey);
  }
  const rounds = options.rounds ?? (gpu.info.fallback ? 3 : 5);
  const candidatesOf = options.candidates ?? matmulCandidates;
  const timer = gpu.features.timestamps ? new GpuTimer(gpu, 64) : null;
  const results: MatmulTuning[] = [];
  try {
    for (const [key, { problem: p, texel, calls }] of products) {
      if (tunedChoice(gpu, key)) continue;
      const candidates = usable(gpu, p, candidatesOf(gpu, p, texel));
      if (candidates.length < 2) continue;
      const times: number[][] = candidates.map(() => []);
      for (let round = 0; round < rounds; round++) {
        for (let i = 0; i < candidates.length; i++) {
          const at = (i + round) % candidates.length;
          times[at].push(await timeProduct(gpu, p, candidates[at], timer));
        }
      }
      const medians = times.map(median);
      const best = medians.indexOf(Math.min(...medians));
      keepChoice(gpu, key, candidates[best]);
      results.push({
        product: key,
        choice: choiceName(candidates[best]),
        ms: medians[best],
        defaultMs: medians[0],
        candidates: candidates.length,
        calls,
      });
    }
  } finally {
    timer?.release();
  }
  return results;
}

/** The call that runs `p` with `choice`. */
function callOf(p: MatmulProblem, choice: MatmulChoice): MatmulArgs {
  const { out, a, b, transposeA, transposeB, accumulate } = p;
  const kernel = "texel" in choice ? { texel: choice.texel } : { tile: choice.tile, texel: false };
  return { out, a, b, transposeA, transposeB, accumulate, ...kernel };
}

/**
 * The candidates the device takes for `p`, each recorded once and run (which
 * compiles its pipeline before any is timed); the baseline first.
 */
function usable(gpu: Gpu, p: MatmulProblem, candidates: MatmulChoice[]): MatmulChoice[] {
  const rec = gpu.recorder({ label: "matmul tuning warm-up" });
  const kept = candidates.filter((choice) => {
    try {
      matmul(rec, callOf(p, choice));
      return true;
    } catch (error) {
      if (error instanceof GpuError) return false; // too many threads or too much workgroup memory here
      throw error;
    }
  });
  rec.submit();
  return kept;
}

/** One run of `p` with `choice`: its matmul dispatches' GPU time, else wall clock to completion. */
async function timeProduct(
  gpu: Gpu,
  p: MatmulProblem,
  choice: MatmulChoice,
  timer: GpuTimer | null,
): Promise<number> {
  await gpu.sync();
  const start = performance.now();
  const rec = gpu.recorder({ label: "matmul tuning", timer: timer ?? undefined });
  matmul(rec, callOf(p, choice));
  rec.submit();
  if (!timer) {
    await gpu.sync();
    return performance.now() - start;
  }
  // Staging copies (texel kernel) are the same for every choice: only the products count.
  return (await timer.read()).filter((t) => t.label.startsWith("matmul")).reduce((sum, t) => sum + t.ms, 0);
}

function unique(choices: MatmulChoice[]): MatmulChoice[] {
  const seen = new Set<string>();
  return choices.filter((c) => !seen.has(choiceName(c)) && seen.add(choiceName(c)));
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[Math.floor(sorted.length / 2)];
}
