import assert from "node:assert/strict";
import {
  ConfigError,
  generateText,
  Generator,
  Llama,
  loadTokenizer,
  modelConfigFor,
  paramLayout,
  resolveModelConfig,
  Rng,
  trainConfig,
} from "../mod.ts";
import { assertClose, testGpu } from "./harness.ts";
import { modelRef } from "./reference/model.ts";

const CONFIG = resolveModelConfig({
  n_layer: 2,
  n_head: 4,
  n_kv_head: 2,
  n_embd: 32,
  block_size: 8,
  vocab_size: 11,
});

/** Mean cross-entropy of row-major logits [N, V] at the targets, in float64. */
function meanLoss(logits: Float32Array, targets: number[], V: number): number {
  let sum = 0;
  targets.forEach((target, n) => {
    const row = logits.subarray(n * V, (n + 1) * V);
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
    sum += lse - row[target];
  });
  return sum / targets.length;
}

Deno.test("Llama.create and logits: the loss of the logits is the float64 reference loss", async () => {
  const gpu = await testGpu();
  const model = Llama.create(gpu, CONFIG, { batchSize: 2, seed: 7 });
  const tokens = [[1, 4, 2, 9, 0, 3, 3, 10], [5, 5, 6, 7, 8, 1, 2, 0]];
  const targets = tokens.map((row) => [...row.slice(1), (row[0] + 1) % 11]);
  const logits = await model.logits(tokens);
  assert.equal(logits.length, 2 * 8 * 11);
  const params = Float64Array.from(await model.download());
  const want = modelRef(CONFIG, paramLayout(CONFIG), params, {
    tokens: tokens.flat(),
    targets: targets.flat(),
    B: 2,
    T: 8,
  });
  assertClose([meanLoss(logits, targets.flat(), 11)], [want.loss], { atol: 1e-5, rtol: 1e-5 }, "loss");

  const prefix = await model.logits(tokens.map((row) => row.slice(0, 3)));
  const rows = tokens.flatMap((_, b) => [...logits.subarray(b * 8 * 11, (b * 8 + 3) * 11)]);
  assertClose(prefix, rows, { atol: 1e-6, rtol: 1e-6 }, "a shorter batch gives the same first positions");
  model.release();
});

Deno.test("Llama.fromCheckpoint holds the checkpoint's weights; logits refuses a bad batch in one line", async () => {
  const gpu = await testGpu();
  const source = Llama.create(gpu, CONFIG, { batchSize: 1, seed: 3 });
  const checkpoint = { config: CONFIG, params: await source.download() };
  const copy = Llama.fromCheckpoint(gpu, checkpoint, { batchSize: 1 });
  assert.deepEqual(await copy.logits([[1, 2, 3]]), await source.logits([[1, 2, 3]]));
  await assert.rejects(copy.logits([[1, 2], [3, 4]]), ConfigError, "one sequence per batch row");
  await assert.rejects(copy.logits([new Array(9).fill(1)]), ConfigError, "longer than the block");
  await assert.rejects(copy.logits([[1, 11]]), /outside the vocabulary of 11/);
  source.release();
  copy.release();
});

Deno.test("generateText streams what decoding all the tokens gives, never a half character", async () => {
  const gpt2 = await loadTokenizer("gpt2");
  const text = "naïve café, 中文 and 🙂 emoji";
  const ids = gpt2.encode(text);
  assert.ok(ids.some((id) => gpt2.decode([id]).includes("\uFFFD")), "some tokens end mid-character");
  // A generator that "samples" the ids of `text`: generateText sees only batchSize and generate().
  const scripted = {
    batchSize: 1,
    async *generate() {
      for (const id of ids) yield { tokens: [id] };
    },
  } as unknown as Generator;
  const pieces: string[] = [];
  for await (const [piece] of generateText(scripted, gpt2, "x", { maxNewTokens: ids.length })) {
    pieces.push(piece);
  }
  assert.equal(pieces.join(""), text);
  assert.ok(pieces.every((piece) => !piece.includes("\uFFFD")));
});

Deno.test("generateText on the GPU equals decoding Generator.generate's tokens with the same seed", async () => {
  const gpu = await testGpu();
  const chars = [..."\n abcdefghi"];
  const tokenizer = await loadTokenizer("char", { chars });
  const model = Llama.create(gpu, CONFIG, { batchSize: 1, seed: 5 });
  const generator = new Generator(gpu, { config: CONFIG, params: await model.download() }, { batchSize: 2 });
  const options = { maxNewTokens: 12, temperature: 1, seed: 99 };
  const texts = ["", ""];
  for await (const pieces of generateText(generator, tokenizer, "abc", options)) {
    pieces.forEach((piece, b) => texts[b] += piece);
  }
  const ids: number[][] = [[], []];
  const context = tokenizer.encode("abc");
  for await (const { tokens } of generator.generate([context, context], options, new Rng(99))) {
    tokens.forEach((token, b) => ids[b].push(token!));
  }
  assert.deepEqual(texts, ids.map((row) => tokenizer.decode(row)));
  assert.equal(texts[0].length, 12);
  await assert.rejects(
    (async () => {
      for await (const _ of generateText(generator, tokenizer, "xyz", options)) { /* never reached */ }
    })(),
    /cannot be encoded by the model's char tokenizer/,
  );
  generator.release();
  model.release();
});

Deno.test("trainConfig and modelConfigFor fill defaults and refuse bad settings by name", () => {
  const config = trainConfig({ n_layer: 2, max_iters: 10 });
  assert.equal(config.n_layer, 2);
  assert.equal(config.n_embd, 128, "the rest is the baby default");
  assert.equal(modelConfigFor(config, 65).vocab_size, 65);
  assert.throws(() => trainConfig({ batch_size: 0 }), /batch_size must be a positive integer/);
  assert.throws(() => trainConfig({ n_layers: 2 } as never), /Unknown training setting "n_layers"/);
  assert.throws(() => trainConfig({ n_embd: 100, n_head: 3 }), /n_embd 100 is not divisible by n_head 3/);
});
