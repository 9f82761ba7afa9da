/**
 * The blockings {@link tuneMatmuls} measured, kept per device, and the survey
 * of the products a recording makes: `matmul` consults the one and feeds the
 * other. Kept apart from `matmul_tune.ts` (which calls `matmul`) so that
 * `matmul.ts` imports no module that imports it.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import type { MatmulProblem, MatmulTile } from "./matmul.ts";
import type { TexelTile } from "./matmul_texel.ts";
import type { Recorder } from "./recorder.ts";

/**
 * How one product is computed: a blocking of the tiled kernel, or of the texel
 * kernel (software adapters). Every choice sums each output's products in the
 * same order, so all give the same bits; only their speed differs.
 *
 * @example
 * ```ts
 * const onGpu: MatmulChoice = { tile: { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8 } };
 * const onCpu: MatmulChoice = { texel: { rows: 8, quads: 4 } };
 * ```
 */
export type MatmulChoice = { readonly tile: Readonly<MatmulTile> } | { readonly texel: Readonly<TexelTile> };

const tuned = new WeakMap<Gpu, Map<string, MatmulChoice>>();
const surveys = new WeakMap<Recorder, Map<string, SurveyedProduct>>();

/**
 * A distinct product a surveyed recording made, and how often it made it.
 *
 * @example
 * ```ts
 * const { problem, calls } = endSurvey(rec).get(key)!;
 * ```
 */
export interface SurveyedProduct {
  /** The first call's product (its tensors are the ones timed). */
  problem: MatmulProblem;
  /** Whether `matmul` routes it to the texel kernel (else the tiled one). */
  texel: boolean;
  /** Calls of this product in the recording. */
  calls: number;
}

/**
 * The key products are tuned under: form, dtypes, sizes, batch strides and the
 * kernel family `matmul` routes them to by default (which also depends on how
 * the operands' views align), so a choice never crosses families.
 *
 * @param p The validated product.
 * @param texel Whether `matmul` would run it with the texel kernel.
 * @returns The key.
 */
export function problemKey(p: MatmulProblem, texel: boolean): string {
  const form = `${p.transposeA ? "Aᵀ" : "A"}·${p.transposeB ? "Bᵀ" : "B"}${p.accumulate ? " +=" : ""}`;
  return `${texel ? "texel" : "tiled"} ${form} ${p.a.dtype}·${p.b.dtype}->${p.out.dtype} ` +
    `${p.batch}x${p.m}x${p.n}x${p.k} strides ${p.aStride},${p.bStride}`;
}

/**
 * The choice tuned for a product on `gpu`, if one was.
 *
 * @param gpu The device.
 * @param key From {@link problemKey}.
 * @returns The choice, or undefined.
 */
export function tunedChoice(gpu: Gpu, key: string): MatmulChoice | undefined {
  return tuned.get(gpu)?.get(key);
}

/**
 * Keeps a tuned choice for the device's later products of `key`.
 *
 * @param gpu The device.
 * @param key From {@link problemKey}.
 * @param choice The fastest choice measured.
 */
export function keepChoice(gpu: Gpu, key: string, choice: MatmulChoice): void {
  let table = tuned.get(gpu);
  if (!table) tuned.set(gpu, table = new Map());
  table.set(key, choice);
}

/**
 * Starts noting every product `matmul` records into `rec` (without an explicit
 * blocking), for {@link endSurvey}.
 *
 * @param rec The recorder to survey.
 */
export function beginSurvey(rec: Recorder): void {
  surveys.set(rec, new Map());
}

/**
 * Notes a product if `rec` is being surveyed: the first call of each key, and a count.
 *
 * @param rec The recorder `matmul` records into.
 * @param p The product.
 * @param texel Whether `matmul` runs it with the texel kernel.
 */
export function noteProduct(rec: Recorder, p: MatmulProblem, texel: boolean): void {
  const survey = surveys.get(rec);
  if (!survey) return;
  const key = problemKey(p, texel);
  const seen = survey.get(key);
  if (seen) seen.calls++;
  else survey.set(key, { problem: p, texel, calls: 1 });
}

/**
 * Stops surveying `rec`.
 *
 * @param rec The surveyed recorder.
 * @returns The distinct products it recorded, by key, in recording order.
 */
export function endSurvey(rec: Recorder): Map<string, SurveyedProduct> {
  const survey = surveys.get(rec) ?? new Map();
  surveys.delete(rec);
  return survey;
}
