/**
 * A checkpoint as a Hugging Face model folder that `transformers` loads as
 * `LlamaForCausalLM`: config.json, model.safetensors (f32, our tensor names are
 * already the Hugging Face ones, weights [out_features, in_features]; q/k/v and
 * gate/up are separate tensors that merely sit back to back in our flat buffer),
 * generation_config.json, and for byte-pair vocabularies tokenizer.json and
 * tokenizer_config.json. A tied lm_head is left out, as `save_pretrained` does;
 * transformers ties it back from tie_word_embeddings.
 *
 * @module
 */

import { join } from "node:path";
import type { Checkpoint } from "./checkpoint.ts";
import { hfConfig } from "./hf_config.ts";
import { hfTokenizerFiles } from "./hf_tokenizer_json.ts";
import { paramLayout } from "./params.ts";
import { type TensorToWrite, writeSafetensors } from "./safetensors.ts";

/**
 * The files of a Hugging Face model folder.
 *
 * @example
 * ```ts
 * const config = JSON.parse(await Deno.readTextFile(`out/hf/${HF_FILES.config}`));
 * ```
 */
export const HF_FILES = {
  config: "config.json",
  weights: "model.safetensors",
  index: "model.safetensors.index.json",
  generation: "generation_config.json",
  tokenizer: "tokenizer.json",
  tokenizerConfig: "tokenizer_config.json",
} as const;

/**
 * Writes `dir` (created if needed) as a Hugging Face LLaMA folder. Each file is
 * written to a temporary name and renamed, so a crash leaves no half file.
 *
 * @param checkpoint Config, tokenizer and parameters (moments and training state are not exported).
 * @param dir The folder.
 * @returns The files written.
 * @example
 * ```ts
 * await exportHfModel(await loadCheckpoint("out/ckpt.safetensors"), "out/hf");
 * // then in Python: LlamaForCausalLM.from_pretrained("out/hf")
 * ```
 */
export async function exportHfModel(checkpoint: Checkpoint, dir: string): Promise<string[]> {
  const { config, params } = checkpoint;
  const layout = paramLayout(config);
  const tensors: TensorToWrite[] = layout.tensors.map((t) => ({
    name: t.name,
    dtype: "F32",
    shape: t.shape,
    data: params.subarray(t.offset, t.offset + t.length),
  }));
  await Deno.mkdir(dir, { recursive: true });
  const eotId = checkpoint.tokenizer.eot_id;
  const generation = {
    _from_model_config: true,
    ...(eotId === null ? {} : { bos_token_id: eotId, eos_token_id: eotId }),
  };
  const files = [
    join(dir, HF_FILES.weights),
    join(dir, HF_FILES.config),
    join(dir, HF_FILES.generation),
  ];
  await writeSafetensors(files[0], tensors, { format: "pt" });
  await writeJsonAtomically(files[1], hfConfig(config, eotId));
  await writeJsonAtomically(files[2], generation);
  const tokenizer = await hfTokenizerFiles(checkpoint.tokenizer, config.block_size);
  if (tokenizer) {
    files.push(join(dir, HF_FILES.tokenizer), join(dir, HF_FILES.tokenizerConfig));
    await writeJsonAtomically(files[3], tokenizer.tokenizer);
    await writeJsonAtomically(files[4], tokenizer.tokenizerConfig);
  }
  return files;
}

async function writeJsonAtomically(path: string, value: unknown): Promise<void> {
  const temporary = `${path}.tmp`;
  await Deno.writeTextFile(temporary, JSON.stringify(value, null, 2) + "\n");
  await Deno.rename(temporary, path);
}
