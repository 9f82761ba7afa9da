/**
 * A checkpoint as a Hugging Face model folder that `transformers` loads as
 * `LlamaForCausalLM`: config.json, model.safetensors (f32, or f16/bf16 rounded to nearest even; our tensor names are
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
 * Element types an export can store.
 *
 * @example
 * ```ts
 * const dtype: ExportDType = "bf16";
 * await exportHfModel(checkpoint, "out/hf", { dtype });
 * ```
 */
export type ExportDType = "f32" | "f16" | "bf16";

const STORED = { f32: "F32", f16: "F16", bf16: "BF16" } as const;
const TORCH_DTYPE = { f32: "float32", f16: "float16", bf16: "bfloat16" } as const;

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
 * @param options `dtype` of the stored weights: f32 (default, exact), f16 or bf16 (half the size).
 * @returns The files written.
 * @example
 * ```ts
 * await exportHfModel(await loadCheckpoint("out/ckpt.safetensors"), "out/hf");
 * // then in Python: LlamaForCausalLM.from_pretrained("out/hf")
 * ```
 */
export async function exportHfModel(
  checkpoint: Checkpoint,
  dir: string,
  options: { dtype?: ExportDType } = {},
): Promise<string[]> {
  const { config, params } = checkpoint;
  const dtype = options.dtype ?? "f32";
  const layout = paramLayout(config);
  const tensors: TensorToWrite[] = layout.tensors.map((t) => {
    const values = params.subarray(t.offset, t.offset + t.length);
    const data = dtype === "f32"
      ? values
      : dtype === "f16"
      ? new Uint16Array(Float16Array.from(values).buffer)
      : toBfloat16(values);
    return { name: t.name, dtype: STORED[dtype], shape: t.shape, data };
  });
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
  await writeJsonAtomically(files[1], hfConfig(config, eotId, TORCH_DTYPE[dtype]));
  await writeJsonAtomically(files[2], generation);
  const tokenizer = await hfTokenizerFiles(checkpoint.tokenizer, config.block_size);
  if (tokenizer) {
    files.push(join(dir, HF_FILES.tokenizer), join(dir, HF_FILES.tokenizerConfig));
    await writeJsonAtomically(files[3], tokenizer.tokenizer);
    await writeJsonAtomically(files[4], tokenizer.tokenizerConfig);
  }
  return files;
}

/**
 * f32 to bfloat16 bits, rounding to nearest even (as PyTorch's `.to(torch.bfloat16)`); NaN stays NaN.
 *
 * @param values f32 values.
 * @returns The bf16 bit patterns.
 * @example
 * ```ts
 * toBfloat16(new Float32Array([1, 1 + 2 ** -8]))[1]; // 0x3f80: a tie goes to the even neighbour, 1
 * ```
 */
export function toBfloat16(values: Float32Array): Uint16Array {
  const words = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    const nan = (w & 0x7f800000) === 0x7f800000 && (w & 0x007fffff) !== 0;
    out[i] = nan ? (w >>> 16) | 0x0040 : (w + 0x7fff + ((w >>> 16) & 1)) >>> 16;
  }
  return out;
}

async function writeJsonAtomically(path: string, value: unknown): Promise<void> {
  const temporary = `${path}.tmp`;
  await Deno.writeTextFile(temporary, JSON.stringify(value, null, 2) + "\n");
  await Deno.rename(temporary, path);
}
