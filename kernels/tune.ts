/**
 * Kernel tuning on the device at hand: which matmul blocking and attention plan
 * run fastest depends on the GPU and on the shapes, and no fixed rule picks well
 * on every GPU. {@link tuneKernels} records some work (a training step, say)
 * into an encoder it never submits, to learn its distinct calls; times each
 * call's candidates side by side on this device; and makes the kernels use the
 * fastest from then on (`tuning_state.ts` keeps the choices per device).
 *
 * Tuning cannot change a result: every candidate computes each output in the
 * same order as the untuned kernel (`matmul_tune.ts` and `attention_tune.ts`
 * say how), so every choice gives the same bits, and a tuned run matches an
 * untuned one exactly (tested).
 *
 * @module
 */

import type { AttentionPlan } from "./attention.ts";
import { attentionCandidates, attentionWith, headSizeOf, planName } from "./attention_tune.ts";
import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { MatmulChoice, MatmulProblem } from "./matmul.ts";
import { matmulCandidates, matmulChoiceName, matmulWith } from "./matmul_tune.ts";
import type { Recorder } from "./recorder.ts";
import { GpuTimer } from "./timer.ts";
import { beginSurvey, endSurvey, keepChoice, type SurveyedCall, tunedChoice } from "./tuning_state.ts";

/**
 * How {@link tuneKernels} measures, and what it tries.
 *
 * @example
 * ```ts
 * // More rounds, and for matmuls only the default blocking against a 128x64 one.
 * const options: TuneOptions = {
 *   rounds: 9,
 *   matmulCandidates: (gpu, p, texel) => [
 *     matmulCandidates(gpu, p, texel)[0],
 *     { tile: { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8 } },
 *   ],
 * };
 * await tuneKernels(gpu, record, options);
 * ```
 */
export interface TuneOptions {
  /** Rounds of timing, every candidate once a round in rotating order (default 5; 3 on software adapters). */
  rounds?: number;
  /** The blockings to time for a product (default `matmulCandidates`); the first is the baseline. */
  matmulCandidates?: (gpu: Gpu, p: MatmulProblem, texel: boolean) => MatmulChoice[];
  /** The plans to time for attention with heads of `headSize` (default `attentionCandidates`); the first is the baseline. */
  attentionCandidates?: (gpu: Gpu, headSize: number) => AttentionPlan[];
}

/**
 * One tuned call, as {@link tuneKernels} reports it.
 *
 * @example
 * ```ts
 * const row: KernelTuning = {
 *   call: "matmul tiled A·Bᵀ f32·f32->f32 1x16384x1152x384 strides 0,0",
 *   choice: "tiled 128x64x16/8x8", ms: 0.21, defaultMs: 0.27, candidates: 7, calls: 6,
 * };
 * ```
 */
export interface KernelTuning {
  /** The call: its kernel (matmul, attention forward or backward), form, dtypes and sizes. */
  call: string;
  /** The blocking or plan chosen. */
  choice: string;
  /** Its median time, ms (GPU time with timestamps, else wall clock to completion). */
  ms: number;
  /** The median time of the blocking or plan used without tuning, ms. */
  defaultMs: number;
  /** Candidates timed. */
  candidates: number;
  /** Calls of it in the work tuned (a layer's come once a layer). */
  calls: number;
}

/**
 * What a tuning run did, as reports and benchmarks record it.
 *
 * @example
 * ```ts
 * const summary: TuningSummary = { calls: 17, seconds: 2.4, speedup: 1.18 };
 * ```
 */
export interface TuningSummary {
  /** Distinct calls tuned. */
  calls: number;
  /** Wall-clock seconds the tuning took (compiling the candidates, mostly). */
  seconds: number;
  /** {@link tunedSpeedup} of the rows. */
  speedup: number;
}

/** A surveyed call's candidates, and how to name and run one. */
interface Tuner<C> {
  candidates: C[];
  name(choice: C): string;
  record(rec: Recorder, choice: C): void;
  /** The labels of the dispatches whose GPU time counts (not texel staging copies). */
  timed: RegExp;
}

/**
 * Tunes the calls `record` makes: records it into a command encoder that is
 * never submitted (nothing it records runs, and nothing else it does should
 * matter), then, for each distinct matmul product and attention call not tuned
 * before on `gpu`, times its candidates on the call's own tensors and keeps the
 * fastest for every later call of its kind, sizes and dtypes on `gpu`. Calls
 * that force a `tile`, `texel` or `plan` are left alone.
 *
 * Run it before the work it tunes: timing writes the calls' outputs (and adds
 * into those of `accumulate` products), which that work overwrites.
 *
 * @param gpu The device.
 * @param record Records the work to tune (e.g. a training step's forward and backward).
 * @param options Rounds and candidates.
 * @returns One row per call tuned now.
 * @example
 * ```ts
 * const rows = await tuneKernels(gpu, (rec) => matmul(rec, { out: y, a: x, b: weight, transposeB: true }));
 * for (const r of rows) console.log(r.call, r.choice, (r.defaultMs / r.ms).toFixed(2) + "x");
 * ```
 */
export async function tuneKernels(
  gpu: Gpu,
  record: (rec: Recorder) => void,
  options: TuneOptions = {},
): Promise<KernelTuning[]> {
  const survey = gpu.recorder({ label: "kernel survey (never submitted)" });
  beginSurvey(survey);
  let calls: Map<string, SurveyedCall>;
  try {
    record(survey);
  } finally {
    calls = endSurvey(survey);
  }
  const rounds = options.rounds ?? (gpu.info.fallback ? 3 : 5);
  const timer = gpu.features.timestamps ? new GpuTimer(gpu, 64) : null;
  const results: KernelTuning[] = [];
  try {
    for (const [key, call] of calls) {
      if (tunedChoice(gpu, key) !== undefined) continue;
      const tuner = tunerOf(gpu, call, options) as Tuner<unknown>;
      const candidates = usable(gpu, tuner);
      if (candidates.length < 2) continue;
      const times: number[][] = candidates.map(() => []);
      for (let round = 0; round < rounds; round++) {
        for (let i = 0; i < candidates.length; i++) {
          const at = (i + round) % candidates.length;
          times[at].push(await timeOnce(gpu, tuner, candidates[at], timer));
        }
      }
      const medians = times.map(median);
      const best = medians.indexOf(Math.min(...medians));
      keepChoice(gpu, key, candidates[best]);
      results.push({
        call: key,
        choice: tuner.name(candidates[best]),
        ms: medians[best],
        defaultMs: medians[0],
        candidates: candidates.length,
        calls: call.calls,
      });
    }
  } finally {
    timer?.release();
  }
  return results;
}

/**
 * What the `tune_kernels` setting of the CLIs means: "on" tunes, "off" does not,
 * "auto" tunes on GPUs only (on a software adapter compiling the candidates
 * takes longer than they save).
 *
 * @param setting "auto", "on" or "off".
 * @param softwareAdapter Whether the device is a software adapter (a CPU).
 * @returns Whether to tune.
 * @throws {RangeError} On any other setting.
 * @example
 * ```ts
 * if (tuningWanted("auto", gpu.info.fallback)) await trainer.tuneKernels();
 * ```
 */
export function tuningWanted(setting: string, softwareAdapter: boolean): boolean {
  if (setting !== "auto" && setting !== "on" && setting !== "off") {
    throw new RangeError(`tune_kernels must be auto, on or off, got "${setting}"`);
  }
  return setting === "on" || (setting === "auto" && !softwareAdapter);
}

/**
 * How much faster tuned calls run than untuned, weighted by how often the work
 * makes each: Σ calls·defaultMs / Σ calls·ms (1 when nothing was tuned).
 *
 * @param rows What {@link tuneKernels} returned.
 * @returns The speed-up of the tuned calls' time.
 * @example
 * ```ts
 * console.log(`tuned kernels ${tunedSpeedup(await trainer.tuneKernels()).toFixed(2)}x faster`);
 * ```
 */
export function tunedSpeedup(rows: readonly KernelTuning[]): number {
  const sum = (time: (r: KernelTuning) => number) => rows.reduce((s, r) => s + r.calls * time(r), 0);
  return rows.length === 0 ? 1 : sum((r) => r.defaultMs) / sum((r) => r.ms);
}

/**
 * Runs a tuning and summarises it.
 *
 * @param tune Starts the tuning, e.g. `() => trainer.tuneKernels()`.
 * @returns How many calls, how long, and the speed-up.
 * @example
 * ```ts
 * const { calls, seconds, speedup } = await timeTuning(() => generator.tuneKernels());
 * ```
 */
export async function timeTuning(tune: () => Promise<KernelTuning[]>): Promise<TuningSummary> {
  const began = performance.now();
  const rows = await tune();
  return { calls: rows.length, seconds: (performance.now() - began) / 1000, speedup: tunedSpeedup(rows) };
}

/**
 * The line the CLIs print after tuning.
 *
 * @param summary From {@link timeTuning}.
 * @returns E.g. "tuned 17 kernel calls in 2.4 s: they run 1.18x as fast as untuned (--tune_kernels=off skips this)".
 * @example
 * ```ts
 * console.error(tuningLine(await timeTuning(() => trainer.tuneKernels())));
 * ```
 */
export function tuningLine(summary: TuningSummary): string {
  return `tuned ${summary.calls} kernel calls in ${summary.seconds.toFixed(1)} s: they run ` +
    `${summary.speedup.toFixed(2)}x as fast as untuned (--tune_kernels=off skips this)`;
}

function tunerOf(
  gpu: Gpu,
  call: SurveyedCall,
  options: TuneOptions,
): Tuner<MatmulChoice> | Tuner<AttentionPlan> {
  if (call.kind === "matmul") {
    const tuner: Tuner<MatmulChoice> = {
      candidates: (options.matmulCandidates ?? matmulCandidates)(gpu, call.problem, call.texel),
      name: matmulChoiceName,
      record: (rec, choice) => matmulWith(rec, call.problem, choice),
      timed: /^matmul/,
    };
    return tuner;
  }
  const tuner: Tuner<AttentionPlan> = {
    candidates: (options.attentionCandidates ?? attentionCandidates)(gpu, headSizeOf(call)),
    name: planName,
    record: (rec, plan) => attentionWith(rec, call, plan),
    timed: /^attention/,
  };
  return tuner;
}

/**
 * The candidates the device takes, each recorded once and run (which compiles
 * its pipelines before any is timed); the baseline first.
 */
function usable<C>(gpu: Gpu, tuner: Tuner<C>): C[] {
  const rec = gpu.recorder({ label: "kernel tuning warm-up" });
  const kept = tuner.candidates.filter((choice) => {
    try {
      tuner.record(rec, choice);
      return true;
    } catch (error) {
      if (error instanceof GpuError) return false; // too many threads or too much workgroup memory here
      throw error;
    }
  });
  rec.submit();
  return kept;
}

/** One run of a candidate: its kernels' GPU time, else wall clock to completion. */
async function timeOnce<C>(gpu: Gpu, tuner: Tuner<C>, choice: C, timer: GpuTimer | null): Promise<number> {
  await gpu.sync();
  const start = performance.now();
  const rec = gpu.recorder({ label: "kernel tuning", timer: timer ?? undefined });
  tuner.record(rec, choice);
  rec.submit();
  if (!timer) {
    await gpu.sync();
    return performance.now() - start;
  }
  return (await timer.read()).filter((t) => tuner.timed.test(t.label)).reduce((sum, t) => sum + t.ms, 0);
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[Math.floor(sorted.length / 2)];
}
