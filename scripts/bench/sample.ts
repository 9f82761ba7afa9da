/**
 * Generation speed, side by side in one run: prefill and KV-cache decode
 * tokens/s against recomputing the whole window for every token, at block
 * sizes 256 and 1024. A random model of the shape being measured (speed does
 * not depend on what the weights say).
 *
 * @module
 */

import type { Gpu } from "../../kernels/device.ts";
import { resolveModelConfig } from "../../model/config.ts";
import { timeTuning, type TuningSummary } from "../../kernels/tune.ts";
import { Generator } from "../../model/generate.ts";
import { initialParameters, paramLayout } from "../../model/params.ts";
import { Rng } from "../../model/rng.ts";
import { median } from "./harness.ts";

/** One block size's figures, as the JSON report holds them. */
export interface SampleResult {
  /** Context length. */
  block_size: number;
  /** The model measured. */
  model: string;
  /** Sequences decoded together. */
  batch: number;
  /** Prompt tokens per second in the one-pass prefill. */
  prefill_tokens_per_s: number;
  /** Generated tokens per second with the KV cache (all sequences together). */
  decode_tokens_per_s: number;
  /** Generated tokens per second recomputing the whole window each token. */
  recompute_tokens_per_s: number;
  /** Dispatches per KV-cache decoding step: on a software adapter each costs a round trip to its threads. */
  decode_dispatches_per_step: number;
  /** Copies per KV-cache decoding step (texel staging on a software adapter). */
  decode_copies_per_step: number;
  /** For a run whose kernels were tuned first (see `kernels/tune.ts`): what tuning did; else null. */
  tuning: TuningSummary | null;
}

/**
 * Measures prefill, cached decode and recompute at each block size; where `tune`
 * is on, every block size again with the kernels tuned, after all the untuned
 * runs (tuning is per device: a decoding step's products are the same at each
 * block size).
 *
 * @param gpu The device (a CPU fallback gets a smaller model and fewer tokens).
 * @param options `tune`: add the tuned runs (default on GPUs only, as `sample --tune_kernels=auto` does).
 * @returns One result per block size, and per tuned block size.
 */
export async function sampleBenchmarks(gpu: Gpu, options: { tune?: boolean } = {}): Promise<SampleResult[]> {
  const small = gpu.info.fallback;
  const shape = small ? { n_layer: 4, n_head: 4, n_embd: 128 } : { n_layer: 6, n_head: 6, n_embd: 384 };
  const results: SampleResult[] = [];
  const runs = [256, 1024].map((block) => ({ block, tune: false }));
  if (options.tune ?? !small) runs.push(...runs.map((r) => ({ ...r, tune: true })));
  for (const { block, tune } of runs) {
    const config = resolveModelConfig({ ...shape, block_size: block, vocab_size: 65 });
    const params = initialParameters(paramLayout(config), config, new Rng(1));
    const batch = 1;
    const generator = new Generator(gpu, { config, params }, { batchSize: batch });
    try {
      const tuning = tune ? await timeTuning(() => generator.tuneKernels()) : null;
      const prompt = Array.from({ length: block / 2 }, (_, i) => i % 65);
      const run = async (maxNewTokens: number, recompute: boolean) => {
        for await (
          const _ of generator.generate([prompt], { maxNewTokens, temperature: 0, recompute }, new Rng(2))
        ) {
          // consume
        }
        return { ...generator.timing };
      };
      await run(2, false); // compile every pipeline before timing
      // Several bursts of decoding, and the median of alternating runs: one burst's
      // rate on a software adapter swings 2x from run to run with the host's load.
      const decodeTokens = small ? 64 : 128;
      const rates = { prefill: [] as number[], decode: [] as number[], recompute: [] as number[] };
      for (let i = 0; i < (small ? 3 : 1); i++) {
        const cached = await run(decodeTokens + 1, false);
        const recomputed = await run(small ? 3 : 16, true);
        rates.prefill.push(cached.prefillTokens / (cached.prefillMs / 1000));
        rates.decode.push(cached.decodeTokens / (cached.decodeMs / 1000));
        // Every generated token after the first costs one full-window pass.
        rates.recompute.push(recomputed.prefillTokens / prompt.length / (recomputed.prefillMs / 1000));
      }
      // What one decoding step records: a burst's count less the prefill's.
      const counts = async (maxNewTokens: number) => {
        const before = { ...gpu.stats };
        await run(maxNewTokens, false);
        return {
          dispatches: gpu.stats.dispatches - before.dispatches,
          copies: gpu.stats.copies - before.copies,
        };
      };
      const [burst, prefillOnly] = [await counts(17), await counts(1)];
      results.push({
        block_size: block,
        model: `${shape.n_layer}x${shape.n_head}x${shape.n_embd}`,
        batch,
        prefill_tokens_per_s: median(rates.prefill),
        decode_tokens_per_s: median(rates.decode),
        recompute_tokens_per_s: median(rates.recompute),
        decode_dispatches_per_step: (burst.dispatches - prefillOnly.dispatches) / 16,
        decode_copies_per_step: (burst.copies - prefillOnly.copies) / 16,
        tuning,
      });
    } finally {
      generator.release();
    }
  }
  return results;
}
