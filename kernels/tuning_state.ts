/**
 * What kernel tuning keeps: the choices measured, per device, which `matmul`
 * and the attention kernels consult; and the survey of the calls a recording
 * makes, which they feed. Kept apart from `tune.ts` (which calls the kernels)
 * so that no kernel module imports a module that imports it.
 *
 * @module
 */

import type { AttentionBackwardArgs, AttentionForwardArgs } from "./attention.ts";
import type { Gpu } from "./device.ts";
import type { MatmulProblem } from "./matmul.ts";
import type { Recorder } from "./recorder.ts";

/**
 * A distinct kernel call a surveyed recording made, as its kernel noted it, and
 * how often the recording made it. The first call's tensors are the ones timed.
 *
 * @example
 * ```ts
 * const call: SurveyedCall = { kind: "matmul", problem, texel: false, calls: 4 };
 * ```
 */
export type SurveyedCall =
  & { calls: number }
  & (
    | { kind: "matmul"; problem: MatmulProblem; texel: boolean }
    | { kind: "attention forward"; args: AttentionForwardArgs }
    | { kind: "attention backward"; args: AttentionBackwardArgs }
  );

/** A call as a kernel notes it: without the count. */
type NotedCall = SurveyedCall extends infer C ? C extends SurveyedCall ? Omit<C, "calls"> : never : never;

const tuned = new WeakMap<Gpu, Map<string, unknown>>();
const surveys = new WeakMap<Recorder, Map<string, SurveyedCall>>();

/**
 * The choice tuned for a call on `gpu`, if one was.
 *
 * @param gpu The device.
 * @param key The call's key (its kernel, sizes and dtypes).
 * @returns The choice (a `MatmulChoice` for matmul keys, an `AttentionPlan` for attention ones), or undefined.
 */
export function tunedChoice<T>(gpu: Gpu, key: string): T | undefined {
  return tuned.get(gpu)?.get(key) as T | undefined;
}

/**
 * Keeps a tuned choice for the device's later calls of `key`.
 *
 * @param gpu The device.
 * @param key The call's key.
 * @param choice The fastest choice measured.
 */
export function keepChoice(gpu: Gpu, key: string, choice: unknown): void {
  let table = tuned.get(gpu);
  if (!table) tuned.set(gpu, table = new Map());
  table.set(key, choice);
}

/**
 * Starts noting the calls recorded into `rec` that tuning could change (those
 * without a forced blocking or plan), for {@link endSurvey}.
 *
 * @param rec The recorder to survey.
 */
export function beginSurvey(rec: Recorder): void {
  surveys.set(rec, new Map());
}

/**
 * Notes a call if `rec` is being surveyed: the first of each key, and a count.
 *
 * @param rec The recorder the kernel records into.
 * @param key The call's key.
 * @param call What it takes to run the call again.
 */
export function noteCall(rec: Recorder, key: string, call: NotedCall): void {
  const survey = surveys.get(rec);
  if (!survey) return;
  const seen = survey.get(key);
  if (seen) seen.calls++;
  else survey.set(key, { ...call, calls: 1 } as SurveyedCall);
}

/**
 * Stops surveying `rec`.
 *
 * @param rec The surveyed recorder.
 * @returns The distinct calls it recorded, by key, in recording order.
 */
export function endSurvey(rec: Recorder): Map<string, SurveyedCall> {
  const survey = surveys.get(rec) ?? new Map();
  surveys.delete(rec);
  return survey;
}
