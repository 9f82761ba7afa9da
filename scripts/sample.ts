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
import { Generator } from "../model/generate.ts";
import { Rng } from "../model/rng.ts";
import { type SamplingOptions, samplingProblem } from "../model/sampling.ts";
import { tokenizerFromMeta } from "../model/tokenizer.ts";
import { parseFlags, runCli, UsageError } from "./cli.ts";

/**
 * Turns a growing list of ids into text to print: the new suffix of the decoded
 * text, holding back a trailing U+FFFD (a byte-level token that ends mid-character,
 * completed by the next token).
 */
class TextStream {
  #decode: (ids: number[]) => string;
  #printed = 0;

  constructor(decode: (ids: number[]) => string) {
    this.#decode = decode;
  }

  push(ids: number[]): string {
    let text = this.#decode(ids);
    while (text.endsWith("\uFFFD")) text = text.slice(0, -1);
    return this.#take(text);
  }

  flush(ids: number[]): string {
    return this.#take(this.#decode(ids));
  }

  #take(text: string): string {
    if (text.length <= this.#printed) return "";
    const fresh = text.slice(this.#printed);
    this.#printed = text.length;
    return fresh;
  }
}

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
  const dtype = String(flags.dtype);
  if (dtype !== "f32" && dtype !== "f16") throw new UsageError(`--dtype must be f32 or f16, got "${dtype}"`);

  const path = (flags.ckpt as string | undefined) ?? join(String(flags.out_dir), "ckpt.safetensors");
  const checkpoint = await loadCheckpoint(path);
  const tokenizer = await tokenizerFromMeta(checkpoint.tokenizer);
  const prompt = await readPrompt(String(flags.start));
  let context: number[];
  try {
    context = tokenizer.encode(prompt);
  } catch (error) {
    throw new UsageError(
      `The prompt cannot be encoded by the model's ${tokenizer.name} tokenizer: ${(error as Error).message}`,
    );
  }
  if (context.length === 0) {
    context = tokenizer.eotId !== null ? [tokenizer.eotId] : tokenizer.encode("\n");
  }
  const stopAtEot = flags.stop_at_eot === undefined
    ? tokenizer.name !== "char"
    : parseBoolean(String(flags.stop_at_eot));

  const gpu = await requestGpu();
  if (dtype === "f16" && !gpu.features.f16) {
    throw new UsageError(`--dtype f16 needs shader-f16, which "${gpu.info.name}" lacks`);
  }
  const generator = new Generator(gpu, checkpoint, { batchSize: numSamples, dtype });
  const contexts = Array.from({ length: numSamples }, () => [...context]);
  const outputs: number[][] = contexts.map(() => []);
  const stream = new TextStream((ids) => tokenizer.decode(ids));
  const encoder = new TextEncoder();
  await Deno.stdout.write(encoder.encode(prompt));
  const rng = new Rng(number("seed", true));
  try {
    for await (
      const { tokens } of generator.generate(contexts, {
        ...sampling,
        maxNewTokens,
        stopToken: stopAtEot ? tokenizer.eotId : null,
      }, rng)
    ) {
      tokens.forEach((token, b) => token !== undefined && outputs[b].push(token));
      const text = stream.push(outputs[0]);
      if (text) await Deno.stdout.write(encoder.encode(text));
    }
    await Deno.stdout.write(encoder.encode(stream.flush(outputs[0]) + "\n---------------\n"));
    for (let b = 1; b < numSamples; b++) {
      await Deno.stdout.write(encoder.encode(prompt + tokenizer.decode(outputs[b]) + "\n---------------\n"));
    }
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
