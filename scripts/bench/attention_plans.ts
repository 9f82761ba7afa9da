/**
 * The flash attention kernels' plans timed against each other on a GPU, each
 * side by side with a matmul of the same FLOPs, so one run on a new GPU says
 * which plan `chooseAttentionPlan` should pick there. `deno task bench` runs it
 * on GPUs only: software adapters read rows from textures with plans of their
 * own, and each plan there compiles for tens of seconds.
 *
 * @module
 */

import { ATTENTION_PLANS, type AttentionPlan } from "../../kernels/attention.ts";
import type { Gpu } from "../../kernels/device.ts";
import { type AttentionVsMatmul, attentionVsMatmul } from "./attention.ts";

/**
 * The plans the sweep times: the one a GPU gets now (a row per thread, tiles in
 * workgroup memory, 4 keys a step), and others that trade rows per thread,
 * threads, keys per step and workgroup memory against each other.
 */
export const SWEEP_PLANS: Readonly<Record<string, Readonly<AttentionPlan>>> = Object.freeze({
  "1 row x 64 threads, 4 keys (gpu)": ATTENTION_PLANS.gpu,
  "1 row x 128 threads, 4 keys": { rows: 1, threads: 128, chunk: 4, shared: true },
  "2 rows x 64 threads, 4 keys": { rows: 2, threads: 64, chunk: 4, shared: true },
  "2 rows x 32 threads, 4 keys": { rows: 2, threads: 32, chunk: 4, shared: true },
  "4 rows x 16 threads, 4 keys": { rows: 4, threads: 16, chunk: 4, shared: true },
  "1 row x 64 threads, 2 keys": { rows: 1, threads: 64, chunk: 2, shared: true },
  "1 row x 64 threads, storage": { rows: 1, threads: 64, chunk: 4, shared: false },
});

/** One plan's times over the matmul's. */
export interface AttentionPlanResult extends AttentionVsMatmul {
  /** The plan's name in {@link SWEEP_PLANS}. */
  plan: string;
}

/**
 * Times every plan of {@link SWEEP_PLANS} as `attentionVsMatmul` times the chosen one.
 *
 * @param gpu The device.
 * @returns A row per plan: forward and backward time over a matmul of the same FLOPs.
 */
export async function attentionPlanSweep(gpu: Gpu): Promise<AttentionPlanResult[]> {
  const results: AttentionPlanResult[] = [];
  for (const [plan, p] of Object.entries(SWEEP_PLANS)) {
    results.push({ plan, ...await attentionVsMatmul(gpu, p) });
  }
  return results;
}
