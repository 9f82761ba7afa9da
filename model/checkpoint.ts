/**
 * Checkpoints as safetensors: the model's tensors under their Hugging Face LLaMA
 * names (f32, [out_features, in_features]), the AdamW moments beside them as two
 * flat tensors, and in the header's `__metadata__` the model config, the
 * dataset's meta.json (the tokenizer) and the training state. Written through a
 * synced temporary file and a rename, so the previous checkpoint stays whole
 * until the new one is.
 *
 * @module
 */

import type { LossScaleState } from "../kernels/loss_scale.ts";
import { ConfigError, MODEL_KEYS, type ModelConfig, validateModelConfig } from "./config.ts";
import { checkMeta, type DatasetMeta } from "./meta.ts";
import { paramLayout } from "./params.ts";
import {
  openSafetensors,
  readSafetensorsHeader,
  readTensorBytes,
  SafetensorsError,
  type TensorToWrite,
  toFloat32,
  writeSafetensors,
} from "./safetensors.ts";

/**
 * Training progress stored with the weights, so `init_from resume` continues exactly.
 *
 * @example
 * ```ts
 * const checkpoint = await loadCheckpoint("out/ckpt.safetensors");
 * const state: TrainingState | undefined = checkpoint.training;
 * console.log(state?.iteration, state?.bestValLoss, state?.trainConfig.dataset);
 * ```
 */
export interface TrainingState {
  /** Optimizer steps taken. */
  iteration: number;
  /** Best validation loss seen (Infinity before the first evaluation). */
  bestValLoss: number;
  /** The batch generator's state. */
  rng: number[];
  /** The resolved training config (for the record, and for resume). */
  trainConfig: Record<string, unknown>;
  /** f16 training: the dynamic loss scale's state. */
  lossScale?: LossScaleState;
}

/**
 * What a checkpoint holds: enough to sample (config, tokenizer, parameters) and,
 * when a trainer saved it, to resume (moments, training state).
 *
 * @example
 * ```ts
 * const checkpoint: Checkpoint = await loadCheckpoint("out/ckpt.safetensors");
 * const generator = new Generator(gpu, checkpoint, { batchSize: 1 });
 * const tokenizer = await tokenizerFromMeta(checkpoint.tokenizer);
 * ```
 */
export interface Checkpoint {
  /** The architecture. */
  config: ModelConfig;
  /** The dataset's meta.json: which tokenizer, vocabulary, characters. */
  tokenizer: DatasetMeta;
  /** Flat parameters in the layout of `config`. */
  params: Float32Array;
  /** AdamW moments (flat, same layout), when the checkpoint has them. */
  moments?: { m: Float32Array; v: Float32Array };
  /** Training progress, when saved by a trainer. */
  training?: TrainingState;
}

const EXP_AVG = "optimizer.exp_avg";
const EXP_AVG_SQ = "optimizer.exp_avg_sq";

/**
 * Writes a checkpoint atomically.
 *
 * @param path Destination, e.g. `out/ckpt.safetensors`.
 * @param checkpoint Config, tokenizer, parameters and optionally moments and training state.
 * @returns Resolves once the file is renamed into place.
 * @example
 * ```ts
 * await saveCheckpoint("out/ckpt.safetensors", { config, tokenizer: meta, params });
 * ```
 */
export async function saveCheckpoint(path: string, checkpoint: Checkpoint): Promise<void> {
  const layout = paramLayout(checkpoint.config);
  const tensors: TensorToWrite[] = layout.tensors.map((t) => ({
    name: t.name,
    dtype: "F32",
    shape: t.shape,
    data: checkpoint.params.subarray(t.offset, t.offset + t.length),
  }));
  if (checkpoint.moments) {
    tensors.push({ name: EXP_AVG, dtype: "F32", shape: [layout.total], data: checkpoint.moments.m });
    tensors.push({ name: EXP_AVG_SQ, dtype: "F32", shape: [layout.total], data: checkpoint.moments.v });
  }
  const metadata: Record<string, string> = {
    format: "pt", // what Hugging Face loaders look for
    config: JSON.stringify(checkpoint.config),
    tokenizer: JSON.stringify(checkpoint.tokenizer),
  };
  if (checkpoint.training) {
    metadata.training = JSON.stringify({
      ...checkpoint.training,
      bestValLoss: Number.isFinite(checkpoint.training.bestValLoss) ? checkpoint.training.bestValLoss : null,
    });
  }
  await writeSafetensors(path, tensors, metadata);
}

/**
 * Reads and validates a checkpoint: the header first (bounded, consistent with
 * the file), then the config, then every tensor's shape against the layout the
 * config implies, and only then the data.
 *
 * @param path The checkpoint file.
 * @returns The checkpoint.
 * @throws {SafetensorsError} Naming the file and the problem.
 * @example
 * ```ts
 * const checkpoint = await loadCheckpoint("out/ckpt.safetensors");
 * console.log(checkpoint.config.n_layer, checkpoint.tokenizer.tokenizer, checkpoint.training?.iteration);
 * const model = Llama.fromCheckpoint(gpu, checkpoint, { batchSize: 1 });
 * ```
 */
export async function loadCheckpoint(path: string): Promise<Checkpoint> {
  const file = await openSafetensors(path, "train a model first (deno task train) or pass --ckpt");
  try {
    const header = await readSafetensorsHeader(file, path);
    const config = parseJson(header.metadata.config, "config", path) as ModelConfig;
    try {
      for (const key of MODEL_KEYS) if (!(key in config)) throw new ConfigError(`the config lacks ${key}`);
      validateModelConfig(config);
    } catch (error) {
      throw new SafetensorsError(path, `has an invalid model config: ${(error as Error).message}`);
    }
    let tokenizer: DatasetMeta;
    try {
      tokenizer = checkMeta(parseJson(header.metadata.tokenizer, "tokenizer", path), `${path} tokenizer`);
    } catch (error) {
      throw new SafetensorsError(path, `has an invalid tokenizer: ${(error as Error).message}`);
    }
    if (config.n_layer > header.tensors.size) {
      // Before building the layout: a crafted n_layer must not make us loop or allocate for a billion layers.
      throw new SafetensorsError(
        path,
        `has a config of ${config.n_layer} layers but ${header.tensors.size} tensors`,
      );
    }
    const layout = paramLayout(config);
    for (const t of layout.tensors) {
      const info = header.tensors.get(t.name);
      if (!info) throw new SafetensorsError(path, `lacks tensor "${t.name}" that its config implies`);
      if (info.shape.join(",") !== t.shape.join(",")) {
        throw new SafetensorsError(
          path,
          `tensor "${t.name}" has shape [${info.shape}], but the config implies [${t.shape}]`,
        );
      }
    }
    const params = new Float32Array(layout.total);
    for (const t of layout.tensors) {
      const info = header.tensors.get(t.name)!;
      params.set(toFloat32(await readTensorBytes(file, header, t.name, path), info.dtype), t.offset);
    }
    const checkpoint: Checkpoint = { config, tokenizer, params };
    const m = header.tensors.get(EXP_AVG);
    const v = header.tensors.get(EXP_AVG_SQ);
    if (m && v) {
      for (const [name, info] of [[EXP_AVG, m], [EXP_AVG_SQ, v]] as const) {
        if (info.dtype !== "F32" || info.shape.length !== 1 || info.shape[0] !== layout.total) {
          throw new SafetensorsError(path, `tensor "${name}" does not match the parameter layout`);
        }
      }
      checkpoint.moments = {
        m: toFloat32(await readTensorBytes(file, header, EXP_AVG, path), "F32"),
        v: toFloat32(await readTensorBytes(file, header, EXP_AVG_SQ, path), "F32"),
      };
    }
    if (header.metadata.training) {
      const training = parseJson(header.metadata.training, "training", path) as TrainingState;
      if (
        !Number.isInteger(training.iteration) || !Array.isArray(training.rng) || training.rng.length !== 4
      ) {
        throw new SafetensorsError(path, "has an invalid training state");
      }
      training.bestValLoss = training.bestValLoss ?? Infinity;
      checkpoint.training = training;
    }
    return checkpoint;
  } finally {
    file.close();
  }
}

function parseJson(text: string | undefined, key: string, path: string): unknown {
  if (text === undefined) {
    throw new SafetensorsError(path, `has no "${key}" in its metadata; is it one of ours?`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new SafetensorsError(path, `has metadata "${key}" that is not valid JSON`);
  }
}
