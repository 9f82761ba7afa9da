/**
 * What a LoRA run needs to resume beside its adapter: the AdamW moments of the
 * adapter's flat buffer as two tensors, and the progress (iteration, best val
 * loss, batch generator, settings) in the header's metadata. Kept out of the
 * adapter file so that file stays the adapter alone.
 *
 * @module
 */

import type { LossScaleState } from "../kernels/loss_scale.ts";
import {
  openSafetensors,
  readSafetensorsHeader,
  readTensorBytes,
  SafetensorsError,
  toFloat32,
  writeSafetensors,
} from "./safetensors.ts";

/**
 * A LoRA run's optimizer state and progress.
 *
 * @example
 * ```ts
 * const { iteration } = await loadLoraState("out-lora/lora_state.safetensors");
 * ```
 */
export interface LoraState {
  /** AdamW first moments (the adapter's flat layout). */
  m: Float32Array;
  /** AdamW second moments. */
  v: Float32Array;
  /** Optimizer steps taken. */
  iteration: number;
  /** Best validation loss seen (Infinity before the first evaluation). */
  bestValLoss: number;
  /** The batch generator's state. */
  rng: number[];
  /** The resolved settings, for the record. */
  trainConfig: Record<string, unknown>;
  /** f16 training: the dynamic loss scale's state. */
  lossScale?: LossScaleState;
}

const M = "optimizer.exp_avg";
const V = "optimizer.exp_avg_sq";

/**
 * Writes the state atomically.
 *
 * @param path Destination, e.g. `out-lora/lora_state.safetensors`.
 * @param state Moments and progress.
 * @example
 * ```ts
 * await saveLoraState("out-lora/lora_state.safetensors", { m, v, iteration: 100, bestValLoss: 1.2, rng: rng.state(), trainConfig: {} });
 * ```
 */
export async function saveLoraState(path: string, state: LoraState): Promise<void> {
  const progress = {
    iteration: state.iteration,
    bestValLoss: Number.isFinite(state.bestValLoss) ? state.bestValLoss : null,
    rng: state.rng,
    trainConfig: state.trainConfig,
    ...(state.lossScale ? { lossScale: state.lossScale } : {}),
  };
  await writeSafetensors(path, [
    { name: M, dtype: "F32", shape: [state.m.length], data: state.m },
    { name: V, dtype: "F32", shape: [state.v.length], data: state.v },
  ], { format: "pt", lora_training: JSON.stringify(progress) });
}

/**
 * Reads and validates the state.
 *
 * @param path The state file.
 * @returns Moments and progress.
 * @throws {SafetensorsError} Naming the file and the problem.
 * @example
 * ```ts
 * const state = await loadLoraState("out-lora/lora_state.safetensors");
 * ```
 */
export async function loadLoraState(path: string): Promise<LoraState> {
  const file = await openSafetensors(path, "there is no LoRA run to resume in that out_dir");
  try {
    const header = await readSafetensorsHeader(file, path);
    const m = header.tensors.get(M);
    const v = header.tensors.get(V);
    if (!m || !v || m.dtype !== "F32" || v.dtype !== "F32" || m.shape[0] !== v.shape[0]) {
      throw new SafetensorsError(path, "lacks the optimizer moments of a LoRA run");
    }
    let progress: {
      iteration: number;
      bestValLoss: number | null;
      rng: number[];
      trainConfig: Record<string, unknown>;
      lossScale?: LossScaleState;
    };
    try {
      progress = JSON.parse(header.metadata.lora_training ?? "");
    } catch {
      throw new SafetensorsError(path, "has no valid lora_training metadata");
    }
    if (!Number.isInteger(progress.iteration) || !Array.isArray(progress.rng) || progress.rng.length !== 4) {
      throw new SafetensorsError(path, "has an invalid training state");
    }
    return {
      m: toFloat32(await readTensorBytes(file, header, M, path), "F32"),
      v: toFloat32(await readTensorBytes(file, header, V, path), "F32"),
      iteration: progress.iteration,
      bestValLoss: progress.bestValLoss ?? Infinity,
      rng: progress.rng,
      trainConfig: progress.trainConfig ?? {},
      ...(progress.lossScale ? { lossScale: progress.lossScale } : {}),
    };
  } finally {
    file.close();
  }
}
