/**
 * Training speed of whole optimizer steps, and where the time goes: wall-clock
 * ms per iteration and tokens/s; dispatches, submits and objects created per
 * step (a step should submit once and create nothing after the first); the CPU
 * time to record and submit a step; and, with timestamp queries, each kernel
 * family's GPU time and that of the copies and clears (texel staging on
 * software adapters), whose sum the step's wall time is compared with (the rest
 * is overhead; profiled steps alternate with timed ones and the ratio is of the
 * medians). Random tokens stand in for data: speed does not depend on them.
 *
 * @module
 */

import type { Gpu, GpuStats } from "../../kernels/device.ts";
import { timeTuning, type TuningSummary } from "../../kernels/tune.ts";
import { GpuTimer } from "../../kernels/timer.ts";
import type { DatasetMeta } from "../../model/meta.ts";
import { Rng } from "../../model/rng.ts";
import { median } from "./harness.ts";
import {
  loadConfigFile,
  modelConfigFor,
  TRAIN_DEFAULTS,
  type TrainConfig,
} from "../../model/train_config.ts";
import { Trainer } from "../../model/trainer.ts";

/** One configuration's figures, as the JSON report holds them. */
export interface TrainResult {
  /** The config file's name, and what was changed to fit a software adapter. */
  config: string;
  /** Tokens per optimizer step (batch_size × block_size × accumulation). */
  tokens_per_step: number;
  /** Wall-clock milliseconds per optimizer step (median of the timed steps). */
  ms_per_iter: number;
  /** Training tokens per second. */
  tokens_per_s: number;
  /** Compute dispatches recorded per step. */
  dispatches_per_step: number;
  /** Command buffers submitted per step (one is the design). */
  submits_per_step: number;
  /** Copies and clears per step: each ends the compute pass (texel staging on software adapters). */
  copies_per_step: number;
  /** Buffers, textures, pipelines and bind groups created during the timed steps (zero is the design). */
  created_after_first_step: { buffers: number; textures: number; pipelines: number; bindGroups: number };
  /** CPU milliseconds to draw the batch, record the step and submit it. */
  cpu_encode_ms: number;
  /** GPU milliseconds per kernel family in the profiled step of median total (empty without timestamp-query). */
  breakdown: Record<string, number>;
  /** ms_per_iter over the sum of the breakdown: 1 means no overhead beyond the kernels and copies. */
  overhead_ratio: number | null;
  /** For a run whose kernels were tuned before its first step (see `kernels/tune.ts`): what tuning did; else null. */
  tuning: TuningSummary | null;
}

const FAMILIES: [string, RegExp][] = [
  ["copies", /^(copy|clear) /],
  ["matmul", /matmul/i],
  ["attention", /attention|flash/i],
  ["norm", /rmsnorm/i],
  ["swiglu", /swiglu/i],
  ["rope", /rope/i],
  ["embedding", /embedding/i],
  ["loss", /cross|entropy|loss mean/i],
  ["optimizer", /adamw|norm|reduce|stage|loss scale/i],
];

/**
 * Which family a pipeline label belongs to.
 *
 * @param label A pipeline's label, e.g. "matmul A·Bᵀ 64x64 ...".
 * @returns The family, or "other" (casts, fills, dropout).
 */
export function kernelFamily(label: string): string {
  return FAMILIES.find(([, pattern]) => pattern.test(label))?.[0] ?? "other";
}

/**
 * Times training steps of the shipped baby and shakespeare_char configs; where
 * `tune` is on, each config again with its kernels tuned (after its untuned run,
 * which tuning would otherwise change), so the two rows compare side by side.
 *
 * @param gpu The device (a software adapter gets shakespeare_char at batch 1, and fewer steps).
 * @param options `steps`: timed steps per config; `tune`: add the tuned runs (default on GPUs only,
 *   as `tune_kernels=auto` does: a software adapter spends a minute compiling the candidates).
 * @returns One result per config, and per tuned config.
 */
export async function trainBenchmarks(
  gpu: Gpu,
  options: { steps?: number; tune?: boolean } = {},
): Promise<TrainResult[]> {
  const software = gpu.info.fallback;
  const tune = options.tune ?? !software;
  const cases: { file: string; overrides: Partial<TrainConfig>; note: string }[] = [
    { file: "config/baby.json", overrides: {}, note: "" },
    {
      file: "config/shakespeare_char.json",
      overrides: software ? { batch_size: 1 } : {},
      note: software ? " (batch 1 on a software adapter)" : "",
    },
  ];
  const results: TrainResult[] = [];
  const timer = GpuTimer.unavailableReason(gpu) ? null : new GpuTimer(gpu, 2048); // the most a query set holds; no release: one per run
  for (const { file, overrides, note } of cases) {
    const config: TrainConfig = { ...await loadConfigFile(file, TRAIN_DEFAULTS), ...overrides, dropout: 0 };
    const steps = options.steps ?? (software && file.includes("shakespeare") ? 2 : 5);
    const name = file.replace(/^config\/|\.json$/g, "") + note;
    results.push(await benchConfig(gpu, timer, config, steps, name, false));
    if (tune) results.push(await benchConfig(gpu, timer, config, steps, `${name}, kernels tuned`, true));
  }
  return results;
}

async function benchConfig(
  gpu: Gpu,
  timer: GpuTimer | null,
  config: TrainConfig,
  steps: number,
  name: string,
  tune: boolean,
): Promise<TrainResult> {
  const vocab = 65;
  const model = modelConfigFor(config, vocab);
  const trainer = Trainer.create(gpu, config, model, randomData(vocab, config.block_size));
  try {
    const tuning = tune ? await timeTuning(() => trainer.tuneKernels()) : null;
    await trainer.step({ read: true }); // compiles the pipelines and creates the bind groups: all of them
    const wall: number[] = [];
    const encode: number[] = [];
    const profiles: Record<string, number>[] = [];
    const counted = {
      dispatches: 0,
      submits: 0,
      copies: 0,
      buffers: 0,
      textures: 0,
      pipelines: 0,
      bindGroups: 0,
    };
    for (let i = 0; i < steps; i++) {
      const before: GpuStats = { ...gpu.stats };
      const start = performance.now();
      await trainer.step();
      encode.push(performance.now() - start);
      await gpu.sync();
      wall.push(performance.now() - start);
      for (const key of Object.keys(counted) as (keyof typeof counted)[]) {
        counted[key] += gpu.stats[key] - before[key];
      }
      // Profiled steps alternate with timed ones: a software adapter's speed drifts
      // over seconds with the host's load, and the ratio of the two medians should not.
      if (timer) profiles.push(await profileStep(trainer, timer));
    }
    const kernelSums = profiles.map((p) => Object.values(p).reduce((a, b) => a + b, 0));
    const kernelMs = kernelSums.length > 0 ? median(kernelSums) : 0;
    const breakdown = profiles[kernelSums.indexOf(kernelMs)] ?? {};
    const ms = median(wall);
    return {
      config: name,
      tokens_per_step: trainer.tokensPerStep,
      ms_per_iter: ms,
      tokens_per_s: trainer.tokensPerStep / (ms / 1000),
      dispatches_per_step: counted.dispatches / steps,
      submits_per_step: counted.submits / steps,
      copies_per_step: counted.copies / steps,
      created_after_first_step: {
        buffers: counted.buffers,
        textures: counted.textures,
        pipelines: counted.pipelines,
        bindGroups: counted.bindGroups,
      },
      cpu_encode_ms: median(encode),
      breakdown,
      overhead_ratio: kernelMs > 0 ? ms / kernelMs : null,
      tuning,
    };
  } finally {
    trainer.release();
  }
}

/** One step with every dispatch timed, summed by family. */
async function profileStep(trainer: Trainer, timer: GpuTimer): Promise<Record<string, number>> {
  await trainer.step({ timer });
  const totals: Record<string, number> = {};
  for (const { label, ms } of await timer.read()) {
    const family = kernelFamily(label);
    totals[family] = (totals[family] ?? 0) + ms;
  }
  return totals;
}

function randomData(
  vocab: number,
  blockSize: number,
): { train: Uint16Array; val: Uint16Array; meta: DatasetMeta } {
  const rng = new Rng(7);
  const tokens = (n: number) => Uint16Array.from({ length: n }, () => rng.nextU32() % vocab);
  const train = tokens(Math.max(20_000, 4 * blockSize));
  const val = tokens(Math.max(2_000, 2 * blockSize));
  const meta: DatasetMeta = {
    tokenizer: "char",
    vocab_size: vocab,
    dtype: "uint16",
    eot_id: null,
    train_tokens: train.length,
    val_tokens: val.length,
    val_fraction: 0.1,
  };
  return { train, val, meta };
}
