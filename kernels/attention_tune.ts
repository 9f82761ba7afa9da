/**
 * What kernel tuning (`tune.ts`) tries for the attention kernels: plans that
 * map rows to threads differently (rows a thread, threads a workgroup,
 * workgroup memory or not) and how to run a surveyed call with one.
 *
 * Every candidate streams the keys (or queries) in steps of the default plan's
 * chunk, and each row's online softmax and sums then run in the same order
 * however rows map to threads, so every plan gives the same bits (tested). A
 * plan of another chunk rescales at other points, so none is offered.
 *
 * @module
 */

import { attentionBackward, attentionForward, type AttentionPlan, chooseAttentionPlan } from "./attention.ts";
import type { Gpu } from "./device.ts";
import type { Recorder } from "./recorder.ts";
import type { SurveyedCall } from "./tuning_state.ts";

/**
 * The plans tried on a GPU beside `chooseAttentionPlan`'s (64 threads, a row
 * each, tiles in workgroup memory): more threads, rows shared by fewer
 * threads, and the streamed rows read from storage.
 *
 * @example
 * ```ts
 * const widest = GPU_ATTENTION_PLANS.find((p) => p.threads === 128); // 1 row x 128 threads
 * ```
 */
export const GPU_ATTENTION_PLANS: readonly Readonly<AttentionPlan>[] = [
  { rows: 1, threads: 128, chunk: 4, shared: true },
  { rows: 2, threads: 64, chunk: 4, shared: true },
  { rows: 2, threads: 32, chunk: 4, shared: true },
  { rows: 4, threads: 16, chunk: 4, shared: true },
  { rows: 1, threads: 64, chunk: 4, shared: false },
];

/**
 * The plans kernel tuning times for heads of `headSize`, the untuned one first.
 * A software adapter keeps its plan: its attention kernels take up to half a
 * minute each to compile there, more than any plan could save.
 *
 * @param gpu The device.
 * @param headSize HS.
 * @returns The plans, all of the default's chunk, without repeats.
 * @example
 * ```ts
 * const names = attentionCandidates(gpu, 64).map(planName); // ["1x64 chunk 4 shared", ...] on a GPU
 * ```
 */
export function attentionCandidates(gpu: Gpu, headSize: number): AttentionPlan[] {
  const untuned = chooseAttentionPlan(gpu, headSize);
  if (gpu.info.fallback) return [untuned];
  const seen = new Set<string>();
  return [untuned, ...GPU_ATTENTION_PLANS.filter((p) => p.chunk === untuned.chunk)]
    .filter((p) => !seen.has(planName(p)) && seen.add(planName(p)));
}

/**
 * A plan as reports show it: rows x threads, chunk, and where streamed rows come from.
 *
 * @param plan The plan.
 * @returns E.g. "2x64 chunk 4 shared".
 * @example
 * ```ts
 * planName({ rows: 8, threads: 8, chunk: 2, shared: false, textures: true }); // "8x8 chunk 2 texels"
 * ```
 */
export function planName(plan: AttentionPlan): string {
  const source = plan.shared ? "shared" : plan.textures ? "texels" : "storage";
  return `${plan.rows}x${plan.threads} chunk ${plan.chunk} ${source}`;
}

/**
 * The head size of a surveyed attention call.
 *
 * @param call The call.
 * @returns HS.
 */
export function headSizeOf(
  call: SurveyedCall & { kind: "attention forward" | "attention backward" },
): number {
  const { qkv, nHead, nKvHead } = call.args;
  return qkv.shape[2] / (nHead + 2 * nKvHead);
}

/**
 * Runs a surveyed attention call with `plan` (for timing it).
 *
 * @param rec The recorder.
 * @param call The call.
 * @param plan The plan.
 */
export function attentionWith(
  rec: Recorder,
  call: SurveyedCall & { kind: "attention forward" | "attention backward" },
  plan: AttentionPlan,
): void {
  if (call.kind === "attention forward") attentionForward(rec, { ...call.args, plan });
  else attentionBackward(rec, { ...call.args, plan });
}
