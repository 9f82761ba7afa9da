/**
 * Streams text from a checkpoint, e.g. the one examples/train_tiny.ts wrote.
 *
 *   deno run --allow-read=. --allow-env examples/sample.ts [CHECKPOINT] [PROMPT] [TOKENS]
 *
 * @module
 */
import { generateText, Generator, loadCheckpoint, requestGpu, tokenizerFromMeta } from "@webgpu-llm/core";

const [path = "out-tiny/ckpt.safetensors", prompt = "ROMEO:", tokens = "300"] = Deno.args;
const gpu = await requestGpu();
const checkpoint = await loadCheckpoint(path);
const tokenizer = await tokenizerFromMeta(checkpoint.tokenizer);
const generator = new Generator(gpu, checkpoint, { batchSize: 1 });
const options = { maxNewTokens: Number(tokens), temperature: 0.8, topK: 200, seed: 1337 };
await Deno.stdout.write(new TextEncoder().encode(prompt));
for await (const [text] of generateText(generator, tokenizer, prompt, options)) {
  await Deno.stdout.write(new TextEncoder().encode(text));
}
console.log();
