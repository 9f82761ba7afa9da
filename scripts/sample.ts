/**
 * `deno task sample`: text from a checkpoint, streamed as it is generated, with
 * a KV cache on the GPU. With no arguments it samples from the checkpoint that
 * `deno task train` writes by default.
 *
 * @module
 */

import { join } from "node:path";
import { requestGpu } from "../kernels/device.ts";
import { loadCheckpoint } from "../model/checkpoint.ts";
import { mergeAdapterFile } from "../model/lora_file.ts";
import { Generator } from "../model/generate.ts";
import { timeTuning, tuningLine, tuningWanted } from "../kernels/tune.ts";
import { type SamplingOptions, samplingProblem } from "../model/sampling.ts";
import { generateText, promptTokens } from "../model/text_generation.ts";
import { hfInitDir, loadHfModel } from "../model/hf.ts";
import type { ModelConfig } from "../model/config.ts";
import { isTokenizerName, type Tokenizer, TOKENIZER_NAMES, tokenizerFromMeta } from "../model/tokenizer.ts";
import { parseFlags, runCli, TUNE_KERNELS_FLAG, tuneKernelsSetting, UsageError } from "./cli.ts";

/** The longest window sampling from a Hugging Face folder uses unless --block_size asks for more. */
const HF_DEFAULT_WINDOW = 2048;

await runCli(async () => {
  const flags = parseFlags(Deno.args, "deno task sample", {
    out_dir: { type: "string", help: "Folder of ckpt.safetensors", default: "out" },
    ckpt: { type: "string", help: "A checkpoint file (instead of <out_dir>/ckpt.safetensors)" },
    start: { type: "string", help: "The prompt, or FILE:path to read it from a file", default: "\\n" },
    num_samples: { type: "string", help: "Samples, decoded together as one batch", default: "10" },
    max_new_tokens: { type: "string", help: "Tokens generated per sample", default: "500" },
    temperature: { type: "string", help: "0 is greedy; lower is more conservative", default: "0.8" },
    top_k: { type: "string", help: "Keep the k most likely tokens (0: all)", default: "200" },
    top_p: { type: "string", help: "Keep the most likely tokens up to this probability mass", default: "1" },
    repetition_penalty: {
      type: "string",
      help: "Penalise tokens already in the text (1: off)",
      default: "1",
    },
    frequency_penalty: { type: "string", help: "Penalise tokens by how often they appeared", default: "0" },
    seed: { type: "string", help: "Seeds the sampling", default: "1337" },
    stop_at_eot: { type: "string", help: "Stop a sample at <|endoftext|> (default: yes for BPE tokenizers)" },
    dtype: { type: "string", help: "Compute precision: f32 or f16", default: "f32" },
    init_from: {
      type: "string",
      help: "hf:DIR samples from a Hugging Face LLaMA folder instead of a checkpoint",
    },
    tokenizer: { type: "string", help: "With hf:DIR, use this tokenizer instead of DIR/tokenizer.json" },
    block_size: {
      type: "string",
      help:
        `Context window, up to the model's (default: the model's; from hf:DIR at most ${HF_DEFAULT_WINDOW})`,
    },
    lora: { type: "string", help: "A LoRA adapter (deno task finetune) to apply to the checkpoint" },
    tune_kernels: TUNE_KERNELS_FLAG,
  });
  if (!flags) return;
  const number = (name: string, integer = false) => {
    const raw = String(flags[name]);
    const value = Number(raw);
    if (raw.trim() === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
      throw new UsageError(`--${name} must be ${integer ? "an integer" : "a number"}, got "${raw}"`);
    }
    return value;
  };
  const numSamples = number("num_samples", true);
  const maxNewTokens = number("max_new_tokens", true);
  if (numSamples < 1) throw new UsageError(`--num_samples must be at least 1, got ${numSamples}`);
  if (maxNewTokens < 1) throw new UsageError(`--max_new_tokens must be at least 1, got ${maxNewTokens}`);
  const sampling: SamplingOptions = {
    temperature: number("temperature"),
    topK: number("top_k", true),
    topP: number("top_p"),
    repetitionPenalty: number("repetition_penalty"),
    frequencyPenalty: number("frequency_penalty"),
  };
  const problem = samplingProblem(sampling);
  if (problem) throw new UsageError(problem);
  const tune = tuneKernelsSetting(flags.tune_kernels);
  const dtype = String(flags.dtype);
  if (dtype !== "f32" && dtype !== "f16") throw new UsageError(`--dtype must be f32 or f16, got "${dtype}"`);

  const { model, tokenizer } = await loadModel(flags);
  if (flags.lora !== undefined) {
    const base = String(flags.init_from ?? flags.ckpt ?? join(String(flags.out_dir), "ckpt.safetensors"));
    model.params = await mergeAdapterFile(String(flags.lora), { ...model, path: base });
  }
  const asked = flags.block_size === undefined ? null : number("block_size", true);
  model.config = {
    ...model.config,
    block_size: contextWindow(asked, model.config.block_size, flags.init_from !== undefined),
  };
  const prompt = await readPrompt(String(flags.start));
  try {
    promptTokens(tokenizer, prompt); // refuse a prompt the tokenizer cannot encode before starting the GPU
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const stopAtEot = flags.stop_at_eot === undefined ? undefined : parseBoolean(String(flags.stop_at_eot));

  const gpu = await requestGpu();
  if (dtype === "f16" && !gpu.features.f16) {
    throw new UsageError(`--dtype f16 needs shader-f16, which "${gpu.info.name}" lacks`);
  }
  const generator = new Generator(gpu, model, { batchSize: numSamples, dtype });
  const later = Array.from({ length: numSamples }, () => prompt); // samples after the first print at the end
  const encoder = new TextEncoder();
  const print = (text: string) => Deno.stdout.write(encoder.encode(text));
  const separator = "\n---------------\n";
  try {
    if (tuningWanted(tune, gpu.info.fallback)) {
      console.error(tuningLine(await timeTuning(() => generator.tuneKernels())));
    }
    await print(prompt);
    const pieces = generateText(generator, tokenizer, prompt, {
      ...sampling,
      maxNewTokens,
      stopAtEot,
      seed: number("seed", true),
    });
    for await (const [first, ...rest] of pieces) {
      if (first) await print(first);
      rest.forEach((text, i) => later[i + 1] += text);
    }
    await print(separator);
    for (const text of later.slice(1)) await print(text + separator);
  } finally {
    generator.release();
  }
  const t = generator.timing;
  const rate = (
    tokens: number,
    ms: number,
  ) => (ms > 0 ? `${(tokens / (ms / 1000)).toFixed(1)} tokens/s` : "-");
  console.error(
    `prefill: ${t.prefillTokens} tokens in ${t.prefillMs.toFixed(0)} ms (${
      rate(t.prefillTokens, t.prefillMs)
    }); ` +
      `decode: ${t.decodeTokens} tokens in ${t.decodeMs.toFixed(0)} ms (${rate(t.decodeTokens, t.decodeMs)})`,
  );
});

/**
 * The window to sample with: what was asked (up to the model's), else the model's block, except that a Hugging
 * Face folder's max_position_embeddings (often 8k to 128k) would size a KV cache and activations far beyond need.
 */
function contextWindow(asked: number | null, longest: number, fromHf: boolean): number {
  if (asked === null) {
    if (!fromHf || longest <= HF_DEFAULT_WINDOW) return longest;
    console.error(
      `note: sampling with a ${HF_DEFAULT_WINDOW}-token window of the model's ${longest}; set --block_size for more`,
    );
    return HF_DEFAULT_WINDOW;
  }
  if (asked < 1 || asked > longest) {
    throw new UsageError(`--block_size must be between 1 and the model's ${longest}, got ${asked}`);
  }
  return asked;
}

/** The checkpoint of --out_dir or --ckpt, or the Hugging Face folder of --init_from hf:DIR, with its tokenizer. */
async function loadModel(
  flags: Record<string, unknown>,
): Promise<{ model: { config: ModelConfig; params: Float32Array }; tokenizer: Tokenizer }> {
  const name = flags.tokenizer as string | undefined;
  if (name !== undefined && !isTokenizerName(name)) {
    throw new UsageError(`Unknown --tokenizer "${name}"; choose from ${TOKENIZER_NAMES.join(", ")}`);
  }
  if (flags.init_from !== undefined) {
    const dir = hfInitDir(String(flags.init_from));
    if (!dir) {
      throw new UsageError(
        `--init_from must be hf:DIR, got "${flags.init_from}"; pick a checkpoint with --out_dir or --ckpt`,
      );
    }
    const model = await loadHfModel(dir, { tokenizer: name });
    return { model, tokenizer: model.tokenizer };
  }
  if (name !== undefined) {
    throw new UsageError("--tokenizer goes with --init_from hf:DIR; a checkpoint knows its own tokenizer");
  }
  const path = (flags.ckpt as string | undefined) ?? join(String(flags.out_dir), "ckpt.safetensors");
  const checkpoint = await loadCheckpoint(path);
  return { model: checkpoint, tokenizer: await tokenizerFromMeta(checkpoint.tokenizer) };
}

/** The prompt: the text itself (with \n and \t escapes), or FILE:path. */
async function readPrompt(start: string): Promise<string> {
  if (!start.startsWith("FILE:")) return start.replaceAll("\\n", "\n").replaceAll("\\t", "\t");
  const path = start.slice(5);
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw new UsageError(`Prompt file "${path}" not found`);
    throw error;
  }
}

function parseBoolean(value: string): boolean {
  if (["true", "1", "yes"].includes(value)) return true;
  if (["false", "0", "no"].includes(value)) return false;
  throw new UsageError(`--stop_at_eot must be true or false, got "${value}"`);
}
