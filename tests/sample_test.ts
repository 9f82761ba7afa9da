import assert from "node:assert/strict";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { resolveModelConfig } from "../model/config.ts";
import { DECODE_BURST, Generator } from "../model/generate.ts";
import type { DatasetMeta } from "../model/meta.ts";
import { initialParameters, paramLayout } from "../model/params.ts";
import { Rng } from "../model/rng.ts";
import { penalize, sampleToken, samplingDistribution } from "../model/sampling.ts";
import { runTask } from "./cli.ts";
import { assertClose, testGpu } from "./harness.ts";

const CONFIG = resolveModelConfig({
  n_layer: 2,
  n_head: 4,
  n_kv_head: 2,
  n_embd: 32,
  block_size: 16,
  vocab_size: 23,
});

/** Weights 10x the usual init, so logits are spread and greedy picks have no near-ties. */
function params(seed: number): Float32Array {
  const values = initialParameters(paramLayout(CONFIG), CONFIG, new Rng(seed));
  for (const t of paramLayout(CONFIG).tensors) {
    if (t.init !== "ones") { for (let i = t.offset; i < t.offset + t.length; i++) values[i] *= 10; }
  }
  return values;
}

async function run(
  generator: Generator,
  contexts: number[][],
  options: Parameters<Generator["generate"]>[1],
  seed = 1,
): Promise<number[][]> {
  const out: number[][] = contexts.map(() => []);
  for await (const { tokens } of generator.generate(contexts, options, new Rng(seed))) {
    tokens.forEach((t, b) => t !== undefined && out[b].push(t));
  }
  return out;
}

Deno.test("greedy decoding with the KV cache returns exactly the tokens of recomputing every step", async () => {
  const gpu = await testGpu();
  const generator = new Generator(gpu, { config: CONFIG, params: params(3) }, { batchSize: 2 });
  const contexts = [[1, 2, 3], [4, 5, 6]];
  const cached = await run(generator, contexts, { maxNewTokens: 13, temperature: 0 });
  const recomputed = await run(generator, contexts, { maxNewTokens: 13, temperature: 0, recompute: true });
  assert.deepEqual(cached, recomputed);
  assert.equal(cached[0].length, 13);
  assert.notDeepEqual(cached[0], cached[1], "the two sequences decode independently");
  assert.ok(
    generator.timing.prefillTokens > 0 && generator.timing.decodeTokens === 0,
    "recompute never decodes",
  );
  generator.release();
});

Deno.test("decoding steps copy nothing: kernels write the texel copies the next kernels read", async () => {
  const gpu = await testGpu();
  const generator = new Generator(gpu, { config: CONFIG, params: params(3) }, { batchSize: 2 });
  const copiesOf = async (maxNewTokens: number) => {
    const before = gpu.stats.copies;
    await run(generator, [[1, 2, 3], [4, 5, 6]], { maxNewTokens, temperature: 0 });
    return gpu.stats.copies - before;
  };
  await copiesOf(2);
  assert.equal(await copiesOf(12), await copiesOf(3), "10 more decoding steps, no more copies");
  generator.release();
});

Deno.test("the same seed gives the same samples; top_k=1 equals greedy", async () => {
  const gpu = await testGpu();
  const generator = new Generator(gpu, { config: CONFIG, params: params(4) }, { batchSize: 3 });
  const contexts = [[7], [7], [7]];
  const a = await run(generator, contexts, { maxNewTokens: 12, temperature: 1 }, 42);
  const b = await run(generator, contexts, { maxNewTokens: 12, temperature: 1 }, 42);
  const c = await run(generator, contexts, { maxNewTokens: 12, temperature: 1 }, 43);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.notDeepEqual(a[0], a[1], "samples of one batch differ");
  const greedy = await run(generator, contexts, { maxNewTokens: 12, temperature: 0 });
  const topOne = await run(generator, contexts, { maxNewTokens: 12, temperature: 1, topK: 1 }, 5);
  assert.deepEqual(topOne, greedy);
  generator.release();
});

Deno.test("a prompt longer than block_size decodes from its last window, and the window slides", async () => {
  const gpu = await testGpu();
  const generator = new Generator(gpu, { config: CONFIG, params: params(5) }, { batchSize: 1 });
  const prompt = Array.from({ length: 40 }, (_, i) => i % CONFIG.vocab_size);
  const tail = prompt.slice(-CONFIG.block_size);
  // The model sees only the last block: prompting with that tail alone gives the same first token.
  const long = await run(generator, [prompt], { maxNewTokens: 30, temperature: 0 });
  // The last 16 prompt tokens, then a 12-token re-prefill followed by 4 decode steps, over and over:
  // the 29 tokens fed back in (the 30th is only sampled) make 6 slides.
  assert.equal(generator.timing.prefillTokens, 16 + 6 * 12, "re-prefilled as the window slid");
  assert.equal(generator.timing.decodeTokens, 29 - 6);
  const short = await run(generator, [tail], { maxNewTokens: 1, temperature: 0 });
  assert.equal(long[0][0], short[0][0]);
  assert.equal(long[0].length, 30, "kept generating past several window slides");
  generator.release();
});

Deno.test("plain draws are made on the GPU, DECODE_BURST steps per readback; top-p reads back every step", async () => {
  const gpu = await testGpu();
  const generator = new Generator(gpu, { config: CONFIG, params: params(6) }, { batchSize: 2 });
  const readbacks = async (options: Parameters<Generator["generate"]>[1]) => {
    const before = gpu.stats.readbacks;
    const tokens = await run(generator, [[1], [2]], options, 8);
    assert.equal(tokens[0].length, options.maxNewTokens);
    return gpu.stats.readbacks - before;
  };
  // A 1-token prompt: 15 decode steps fit the 16-slot cache, so 13 need no slide.
  assert.equal(DECODE_BURST, 16);
  assert.equal(await readbacks({ maxNewTokens: 14, temperature: 0.7 }), 2, "a prefill and one burst");
  assert.equal(
    await readbacks({ maxNewTokens: 14, temperature: 0.7, topK: 23 }),
    2,
    "top-k of all V is plain",
  );
  assert.equal(await readbacks({ maxNewTokens: 14, temperature: 0.7, topP: 0.9 }), 14, "a prefill, 13 steps");
  assert.equal(await readbacks({ maxNewTokens: 14, temperature: 0, topP: 0.9 }), 2, "greedy ignores top-p");
  assert.equal(
    await readbacks({ maxNewTokens: 14, temperature: 0, repetitionPenalty: 1.3 }),
    14,
    "penalties",
  );
  // Weights are staged once (software adapters) and kept: generating again makes no texture.
  const textures = gpu.stats.textures;
  await readbacks({ maxNewTokens: 14, temperature: 0.7 });
  assert.equal(gpu.stats.textures, textures, "textures made by a later generate()");
  generator.release();
});

Deno.test("GPU bursts give the CPU draw's tokens across window slides, for every sequence of a batch", async () => {
  const gpu = await testGpu();
  const generator = new Generator(gpu, { config: CONFIG, params: params(7) }, { batchSize: 2 });
  const contexts = [[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]];
  // Greedy draws on the GPU; top-k 1 is the same argmax, drawn on the CPU one step at a time.
  const gpuDrawn = await run(generator, contexts, { maxNewTokens: 45, temperature: 0 });
  const gpuTiming = { ...generator.timing };
  const cpuDrawn = await run(generator, contexts, { maxNewTokens: 45, temperature: 1, topK: 1 });
  assert.deepEqual(gpuDrawn, cpuDrawn);
  assert.equal(gpuTiming.prefillTokens, generator.timing.prefillTokens, "the same slides");
  assert.equal(gpuTiming.decodeTokens, generator.timing.decodeTokens, "the same decode steps");
  assert.ok(gpuTiming.prefillTokens > 2 * 16, "the window slid");
  generator.release();
});

Deno.test("generation stops a sequence at the stop token", async () => {
  const gpu = await testGpu();
  const generator = new Generator(gpu, { config: CONFIG, params: params(3) }, { batchSize: 1 });
  const [free] = await run(generator, [[1, 2, 3]], { maxNewTokens: 8, temperature: 0 });
  const [stopped] = await run(generator, [[1, 2, 3]], {
    maxNewTokens: 8,
    temperature: 0,
    stopToken: free[2],
  });
  assert.deepEqual(stopped, free.slice(0, free.indexOf(free[2]) + 1));
  generator.release();
});

Deno.test("a burst decoded ahead and dropped at a stop token leaves the next generation unchanged", async () => {
  const gpu = await testGpu();
  const generator = new Generator(gpu, { config: CONFIG, params: params(3) }, { batchSize: 1 });
  const options = { maxNewTokens: 3 * DECODE_BURST, temperature: 0.8 };
  const [free] = await run(generator, [[1, 2, 3]], options, 5);
  // The stop comes in the first burst, while the second is already on the GPU.
  const [stopped] = await run(generator, [[1, 2, 3]], { ...options, stopToken: free[1] }, 5);
  assert.deepEqual(stopped, free.slice(0, free.indexOf(free[1]) + 1));
  assert.deepEqual((await run(generator, [[1, 2, 3]], options, 5))[0], free, "the same samples again");
  generator.release();
});

Deno.test("penalties change the logits as specified", () => {
  const logits = Float32Array.of(2, -2, 1, 0.5);
  const counts = new Map([[0, 1], [1, 3], [3, 2]]);
  // repetition 2: positive divided, negative multiplied; unseen untouched.
  assertClose(penalize(logits, counts, { repetitionPenalty: 2 }), [1, -4, 1, 0.25], { atol: 0, rtol: 0 });
  // frequency 0.5: minus 0.5 per occurrence.
  assertClose(penalize(logits, counts, { frequencyPenalty: 0.5 }), [1.5, -3.5, 1, -0.5], {
    atol: 0,
    rtol: 0,
  });
  // both: repetition first, then frequency.
  assertClose(penalize(logits, counts, { repetitionPenalty: 2, frequencyPenalty: 0.5 }), [
    0.5,
    -5.5,
    1,
    -0.75,
  ], {
    atol: 0,
    rtol: 0,
  });
  // A heavily penalised favourite loses the greedy pick.
  assert.equal(sampleToken(logits, counts, { temperature: 0 }, new Rng(1)), 0);
  assert.equal(sampleToken(logits, counts, { temperature: 0, repetitionPenalty: 4 }, new Rng(1)), 2);
});

Deno.test("temperature, top-k and top-p shape the distribution as specified", () => {
  const logits = [3, 1, 2, 0];
  const softmax = (xs: number[]) => {
    const e = xs.map(Math.exp);
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / s);
  };
  const tol = { atol: 1e-12, rtol: 1e-12 };
  assertClose(samplingDistribution(logits, {}), softmax(logits), tol, "plain softmax");
  assertClose(
    samplingDistribution(logits, { temperature: 2 }),
    softmax(logits.map((x) => x / 2)),
    tol,
    "T=2",
  );
  const [p0, p2] = softmax([3, 2]);
  assertClose(samplingDistribution(logits, { topK: 2 }), [p0, 0, p2, 0], tol, "top-k 2");
  // top-p 0.7: the top token alone has 0.64 < 0.7, so the second joins.
  const full = softmax(logits);
  assert.ok(full[0] < 0.7 && full[0] + full[2] >= 0.7);
  assertClose(samplingDistribution(logits, { topP: 0.7 }), [p0, 0, p2, 0], tol, "top-p 0.7");
  assertClose(samplingDistribution(logits, { topP: 0.5 }), [1, 0, 0, 0], tol, "top-p 0.5 keeps one");
  // Draws follow the distribution.
  const rng = new Rng(9);
  const hits = [0, 0, 0, 0];
  for (let i = 0; i < 20000; i++) hits[sampleToken(logits, new Map(), { topK: 2 }, rng)]++;
  assert.equal(hits[1] + hits[3], 0);
  assert.ok(Math.abs(hits[0] / 20000 - p0) < 0.02, `share of token 0: ${hits[0] / 20000} vs ${p0}`);
});

/** `deno task sample` arguments: two samples of `tokens` characters after "abc". */
function sampleArgs(ckpt: string, tokens: number): string[] {
  return ["--ckpt", ckpt, "--start", "abc", "--num_samples", "2", "--max_new_tokens", String(tokens)];
}

/** A character tokenizer of 23 characters: CONFIG's vocabulary. */
const CHAR_META: DatasetMeta = {
  tokenizer: "char",
  vocab_size: 23,
  dtype: "uint16",
  eot_id: null,
  train_tokens: 0,
  val_tokens: 0,
  val_fraction: 0.1,
  chars: [..."\n abcdefghijklmnopqrstu"],
};

Deno.test("deno task sample streams the prompt and each sample, and reports tokens/s on stderr", async () => {
  const dir = "tests/tmp/sample";
  await Deno.mkdir(dir, { recursive: true });
  await saveCheckpoint(`${dir}/ckpt.safetensors`, {
    config: CONFIG,
    tokenizer: CHAR_META,
    params: params(3),
  });
  const args = sampleArgs(`${dir}/ckpt.safetensors`, 20);
  const greedy = await runTask("sample", [...args, "--temperature", "0"]);
  assert.equal(greedy.code, 0, greedy.stderr);
  const samples = greedy.stdout.split("\n---------------\n");
  assert.equal(samples.length, 3); // two samples and what follows the last separator
  for (const sample of samples.slice(0, 2)) {
    assert.ok(sample.startsWith("abc"), sample);
    assert.equal([...sample].length, 3 + 20);
  }
  assert.equal(samples[0], samples[1], "greedy samples are equal");
  assert.match(greedy.stderr, /prefill: \d+ tokens in \d+ ms \([\d.]+ tokens\/s\); decode: \d+ tokens/);

  const missing = await runTask("sample", ["--out_dir", `${dir}/nowhere`]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr.trim(), /^error: .*ckpt\.safetensors: not found; train a model first/);
  const unknown = await runTask("sample", [...args, "--start", "xyz"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /cannot be encoded by the model's char tokenizer/);
  const bad = await runTask("sample", [...args, "--top_p", "0"]);
  assert.match(bad.stderr, /--top_p must be in \(0, 1\], got 0/);
  const badTune = await runTask("sample", [...args, "--tune_kernels", "yes"]);
  assert.equal(badTune.code, 2);
  assert.match(badTune.stderr.trim(), /^error: --tune_kernels must be auto, on or off, got "yes"$/);
});

Deno.test("deno task sample --tune_kernels=on tunes first and prints the same samples", async () => {
  const dir = "tests/tmp/sample_tune";
  await Deno.mkdir(dir, { recursive: true });
  // A model of its own shape (n_embd 48), so no other test's products are among those tuned.
  const config = resolveModelConfig({ n_layer: 1, n_head: 2, n_embd: 48, block_size: 16, vocab_size: 23 });
  const weights = initialParameters(paramLayout(config), config, new Rng(8)).map((x) => 10 * x);
  await saveCheckpoint(`${dir}/ckpt.safetensors`, { config, tokenizer: CHAR_META, params: weights });
  const args = sampleArgs(`${dir}/ckpt.safetensors`, 24);
  const plain = await runTask("sample", [...args, "--tune_kernels", "off"]);
  const tuned = await runTask("sample", [...args, "--tune_kernels", "on"]);
  assert.equal(tuned.code, 0, tuned.stderr);
  assert.match(
    tuned.stderr,
    /tuned [1-9]\d* kernel calls in [\d.]+ s: they run [\d.]+x as fast as untuned/,
  );
  assert.doesNotMatch(plain.stderr, /tuned/);
  assert.equal(tuned.stdout, plain.stdout);
});
