/**
 * The loss over a whole split: consecutive, non-overlapping windows of
 * block_size tokens covering every token once, so the figure is deterministic
 * and comparable between runs (unlike the random batches of training evals).
 *
 * @module
 */

import { IGNORE_INDEX } from "../kernels/cross_entropy.ts";
import type { Gpu } from "../kernels/device.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { timeTuning, tuneKernels, type TuneOptions, type TuningSummary } from "../kernels/tune.ts";
import { sequentialBatches } from "./batches.ts";
import type { ModelConfig } from "./config.ts";
import type { TokenArray } from "./meta.ts";
import { Llama } from "./model.ts";

/**
 * A whole-split loss, as {@link splitLoss} computes it and `deno task eval` prints it.
 *
 * @example
 * ```ts
 * const checkpoint = await loadCheckpoint("out/ckpt.safetensors");
 * const val = await readTokens("data/shakespeare_char", "val");
 * const result: SplitLoss = await splitLoss(gpu, checkpoint, val);
 * console.log(`val loss ${result.loss.toFixed(4)} over ${result.tokens} tokens`);
 * ```
 */
export interface SplitLoss {
  /** Mean cross-entropy per predicted token (nats). */
  loss: number;
  /** Tokens predicted (the split's length minus one). */
  tokens: number;
  /** What tuning the kernels first did, when asked to; else null. */
  tuning: TuningSummary | null;
}

/**
 * Computes the mean loss of a model over every token of `data`.
 *
 * @param gpu The device.
 * @param model The architecture and flat parameters.
 * @param data The split's tokens.
 * @param options Sequences per forward pass (default 8); `tune`: tune the forward's
 *   kernels on this device first (true, or the tuning options), which changes speed, not the loss.
 * @returns The mean loss and the number of tokens predicted.
 * @example
 * ```ts
 * const { loss } = await splitLoss(gpu, { config, params }, val);
 * ```
 */
export async function splitLoss(
  gpu: Gpu,
  model: { config: ModelConfig; params: Float32Array },
  data: TokenArray,
  options: { batchSize?: number; tune?: boolean | TuneOptions } = {},
): Promise<SplitLoss> {
  const batchSize = options.batchSize ?? 8;
  const T = model.config.block_size;
  const { batches, targets } = sequentialBatches(data, { batchSize, blockSize: T }, IGNORE_INDEX);
  const llama = new Llama(gpu, model.config, { batchSize, training: false });
  const tokens = gpu.tensor([batchSize, T], "u32", { label: "eval tokens" });
  const targetTensor = gpu.tensor([batchSize, T], "u32", { label: "eval targets" });
  const loss = gpu.tensor([1], "f32", { label: "eval loss" });
  try {
    llama.upload(model.params);
    const record = (rec: Recorder) => llama.forward(rec, { batch: { tokens, targets: targetTensor }, loss });
    const tuneOptions = options.tune === true ? {} : options.tune;
    const tuning = tuneOptions ? await timeTuning(() => tuneKernels(gpu, record, tuneOptions)) : null;
    let sum = 0;
    for (const batch of batches) {
      gpu.write(tokens, batch.tokens);
      gpu.write(targetTensor, batch.targets);
      const rec = gpu.recorder({ label: "split loss" });
      record(rec);
      rec.submit();
      const counted = batch.targets.reduce((n, t) => n + (t === IGNORE_INDEX ? 0 : 1), 0);
      sum += (await gpu.readFloats(loss))[0] * counted;
    }
    return { loss: targets > 0 ? sum / targets : 0, tokens: targets, tuning };
  } finally {
    llama.release();
    for (const t of [tokens, targetTensor, loss]) gpu.release(t);
  }
}
