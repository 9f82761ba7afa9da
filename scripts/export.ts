/**
 * `deno task export`: a checkpoint as a Hugging Face folder (config.json,
 * model.safetensors, generation_config.json) that transformers loads as
 * `LlamaForCausalLM`, to continue in the ecosystem's trainers and tools.
 *
 * @module
 */

import { join } from "node:path";
import { loadCheckpoint } from "../model/checkpoint.ts";
import { exportHfModel } from "../model/hf_export.ts";
import { parseFlags, runCli, UsageError } from "./cli.ts";

await runCli(async () => {
  const flags = parseFlags(Deno.args, "deno task export", {
    out_dir: { type: "string", help: "Folder of ckpt.safetensors", default: "out" },
    ckpt: { type: "string", help: "A checkpoint file (instead of <out_dir>/ckpt.safetensors)" },
    hf: { type: "string", help: "The Hugging Face folder to write (created if needed)" },
    dtype: {
      type: "string",
      help: "Stored weights: f32 (exact), f16 or bf16 (half the size)",
      default: "f32",
    },
  });
  if (!flags) return;
  if (!flags.hf) throw new UsageError("--hf is required: the folder to write, e.g. --hf out/hf");
  const dtype = String(flags.dtype);
  if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") {
    throw new UsageError(`--dtype must be f32, f16 or bf16, got "${dtype}"`);
  }
  const path = (flags.ckpt as string | undefined) ?? join(String(flags.out_dir), "ckpt.safetensors");
  const checkpoint = await loadCheckpoint(path);
  const dir = String(flags.hf);
  const files = await exportHfModel(checkpoint, dir, { dtype });
  console.log(`exported ${path} to ${files.join(", ")}`);
  console.log(
    `load it with: AutoModelForCausalLM.from_pretrained(${JSON.stringify(dir)}); ` +
      `token ids are those of the ${checkpoint.tokenizer.tokenizer} tokenizer`,
  );
});
