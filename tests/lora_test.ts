import assert from "node:assert/strict";
import { DropoutSeed } from "../kernels/dropout.ts";
import { EmbeddingIndexBuffer } from "../kernels/embedding.ts";
import { resolveModelConfig } from "../model/config.ts";
import {
  initialLoraParameters,
  LORA_TARGETS,
  type LoraConfig,
  loraLayout,
  mergeLora,
} from "../model/lora.ts";
import { LoraAdapters } from "../model/lora_adapters.ts";
import { type Batch, Llama } from "../model/model.ts";
import { initialParameters, paramLayout } from "../model/params.ts";
import { Rng } from "../model/rng.ts";
import { assertClose, finiteDifferences, testGpu } from "./harness.ts";
import { B, CONFIG, randomTokens as sharedTokens, T } from "./model_fixture.ts";
import { loraRef } from "./reference/lora.ts";
import { modelRef } from "./reference/model.ts";

const ALL: LoraConfig = { rank: 3, alpha: 6, dropout: 0, targets: [...LORA_TARGETS] };

function randomTokens(seed: number): { tokens: Uint32Array; targets: Uint32Array } {
  return sharedTokens(seed, 4);
}

function baseParameters(seed: number): Float32Array {
  const layout = paramLayout(CONFIG);
  const values = initialParameters(layout, CONFIG, new Rng(seed));
  const rng = new Rng(seed + 1);
  for (const t of layout.tensors) {
    for (let i = 0; i < t.length; i++) values[t.offset + i] += 0.3 * (rng.uniform() - 0.5);
  }
  return values;
}

/** A random, PEFT-initialised adapter with B made non-zero (as after some training). */
function trainedAdapter(config: LoraConfig, seed: number): Float32Array {
  const layout = loraLayout(CONFIG, config);
  const values = initialLoraParameters(layout, new Rng(seed));
  const rng = new Rng(seed + 1);
  for (const m of layout.modules) {
    for (let i = 0; i < m.b.length; i++) values[m.b.offset + i] = 0.2 * (rng.uniform() - 0.5);
  }
  return values;
}

async function withBatch<R>(
  model: Llama,
  data: { tokens: Uint32Array; targets: Uint32Array },
  run: (batch: Batch) => Promise<R>,
): Promise<R> {
  const gpu = model.gpu;
  const index = new EmbeddingIndexBuffer(gpu, { n: B * T, vocabSize: CONFIG.vocab_size });
  index.update(data.tokens);
  const batch: Batch = {
    tokens: gpu.tensor([B, T], "u32", { data: data.tokens }),
    targets: gpu.tensor([B, T], "u32", { data: data.targets }),
    index,
  };
  try {
    return await run(batch);
  } finally {
    gpu.release(batch.tokens);
    gpu.release(batch.targets);
    index.release();
  }
}

/** The loss and logits of one forward. */
async function forwardLogits(
  model: Llama,
  data: { tokens: Uint32Array; targets: Uint32Array },
): Promise<{ loss: number; logits: Float32Array }> {
  const gpu = model.gpu;
  return await withBatch(model, data, async (batch) => {
    const loss = gpu.tensor([1], "f32");
    const rec = gpu.recorder();
    model.forward(rec, { batch, loss });
    rec.submit();
    const result = { loss: (await gpu.readFloats(loss))[0], logits: await gpu.readFloats(model.acts.logits) };
    gpu.release(loss);
    return result;
  });
}

Deno.test("with B at zero, the adapted model's logits equal the base model's bit for bit", async () => {
  const gpu = await testGpu();
  const params = baseParameters(3);
  const data = randomTokens(4);
  const base = new Llama(gpu, CONFIG, { batchSize: B, training: false });
  base.upload(params);
  const adapters = new LoraAdapters(gpu, CONFIG, ALL, { rows: B * T, training: false });
  adapters.upload(initialLoraParameters(adapters.layout, new Rng(5)));
  const adapted = new Llama(gpu, CONFIG, { batchSize: B, training: false, lora: adapters });
  adapted.upload(params);
  const want = await forwardLogits(base, data);
  const got = await forwardLogits(adapted, data);
  assert.deepEqual(got.logits, want.logits);
  assert.equal(got.loss, want.loss);
  for (const m of [base, adapted]) m.release();
  adapters.release();
});

async function adapterGradients(
  config: LoraConfig,
  options: { dropout?: { run: number; step: number }; f16?: boolean } = {},
): Promise<void> {
  const gpu = await testGpu();
  const dtype = options.f16 ? "f16" : "f32";
  // f16: the loss gradient carries a loss scale of 1024 (a GPU tensor, as the trainer passes it).
  const lossScale = options.f16 ? 1024 : 0.5;
  const params = baseParameters(7);
  const values = trainedAdapter(config, 8);
  const data = randomTokens(9);
  const adapters = new LoraAdapters(gpu, CONFIG, config, { rows: B * T, training: true });
  adapters.upload(values);
  const model = new Llama(gpu, CONFIG, { batchSize: B, training: true, lora: adapters, dtype });
  model.upload(params);
  assert.equal(model.grads, null, "a frozen base has no gradient buffer");
  const seed = options.dropout ? new DropoutSeed(gpu) : null;
  if (seed && options.dropout) seed.set(options.dropout.run, options.dropout.step);
  const dropout = seed ? { seed, micro: 1 } : undefined;
  const got = await withBatch(model, data, async (batch) => {
    const loss = gpu.tensor([1], "f32");
    const rec = gpu.recorder();
    const scale = options.f16 ? gpu.tensor([1], "f32", { data: [lossScale] }) : lossScale;
    rec.clear(adapters.grads!);
    model.forward(rec, { batch, loss, dropout });
    model.backward(rec, { batch, dropout, scale });
    rec.submit();
    const result = { loss: (await gpu.readFloats(loss))[0], grads: await gpu.readFloats(adapters.grads!) };
    gpu.release(loss);
    if (typeof scale !== "number") gpu.release(scale);
    return result;
  });
  const drop = options.dropout ? { p: 0, ...options.dropout, micro: 1 } : undefined;
  const ref = loraRef(CONFIG, config, Float64Array.from(values), drop);
  const want = modelRef(CONFIG, model.layout, Float64Array.from(params), {
    ...data,
    B,
    T,
    projections: ref.hook,
  }, lossScale);
  // f32 through ~30 kernels: loss to 1e-5, each tensor's gradient to 1e-5 + 1e-4·(its largest) + 1e-3·|ref|.
  // f16 activations and base weights (11 significant bits): loss to 1e-2, gradients to 3e-2 of the largest.
  const tolerance = options.f16
    ? { loss: 1e-2, largest: 3e-2, rtol: 3e-2 }
    : { loss: 1e-5, largest: 1e-4, rtol: 1e-3 };
  assertClose([got.loss], [want.loss], { atol: tolerance.loss, rtol: tolerance.loss }, "loss");
  for (const t of adapters.layout.tensors) {
    const slice = ref.grads.subarray(t.offset, t.offset + t.length);
    const largest = Math.max(...slice.map(Math.abs));
    assert.ok(largest > 0, `${t.name} has a gradient`);
    assertClose(got.grads.subarray(t.offset, t.offset + t.length), slice, {
      atol: (options.f16 ? 0 : 1e-5) + tolerance.largest * largest,
      rtol: tolerance.rtol,
    }, `${dtype} d ${t.name}`);
  }
  model.release();
  adapters.release();
  if (seed) gpu.release(seed.tensor);
}

Deno.test("only adapter gradients are produced, and on every target they match the float64 reference", async () => {
  await adapterGradients(ALL);
});

Deno.test("with adapter dropout, the gradients match the reference with the same masks", async () => {
  await adapterGradients({ rank: 2, alpha: 5, dropout: 0.3, targets: ["q", "v", "down"] }, {
    dropout: { run: 41, step: 6 },
  });
});

Deno.test("with f16 compute and a loss scale, adapter gradients match the reference to f16 precision", async () => {
  await adapterGradients(ALL, { f16: true });
});

Deno.test("the reference adapter gradient agrees with finite differences", () => {
  const config = resolveModelConfig({
    n_layer: 1,
    n_head: 2,
    n_kv_head: 1,
    n_embd: 8,
    block_size: 3,
    vocab_size: 5,
    mlp_hidden: 12,
  });
  const lora: LoraConfig = { rank: 2, alpha: 3, dropout: 0, targets: [...LORA_TARGETS] };
  const layout = paramLayout(config);
  const params = Float64Array.from(
    initialParameters(layout, config, new Rng(2)),
    (v, i) => v + 0.05 * Math.sin(i),
  );
  const adapter = loraLayout(config, lora);
  const values = Float64Array.from({ length: adapter.total }, (_, i) => 0.3 * Math.cos(1.7 * i));
  const inputs = { tokens: [1, 4, 2], targets: [4, 0, 3], B: 1, T: 3 };
  const loss = (v: Float64Array) =>
    modelRef(config, layout, params, { ...inputs, projections: loraRef(config, lora, v).hook }).loss;
  const ref = loraRef(config, lora, values);
  modelRef(config, layout, params, { ...inputs, projections: ref.hook });
  const probes = adapter.tensors.flatMap((
    t,
  ) => [t.offset, t.offset + Math.floor(t.length / 2), t.offset + t.length - 1]);
  const numeric = finiteDifferences(
    (x) => {
      const v = Float64Array.from(values);
      probes.forEach((i, j) => v[i] = x[j]);
      return loss(v);
    },
    Float64Array.from(probes.map((i) => values[i])),
    1e-6,
  );
  assertClose(probes.map((i) => ref.grads[i]), numeric, { atol: 1e-8, rtol: 1e-5 }, "finite differences");
});

Deno.test("merged weights give the adapted model's logits", async () => {
  const gpu = await testGpu();
  const params = baseParameters(11);
  const config: LoraConfig = { rank: 4, alpha: 8, dropout: 0.1, targets: ["q", "k", "o", "up", "down"] };
  const values = trainedAdapter(config, 12);
  const data = randomTokens(13);
  const adapters = new LoraAdapters(gpu, CONFIG, config, { rows: B * T, training: false });
  adapters.upload(values);
  const adapted = new Llama(gpu, CONFIG, { batchSize: B, training: false, lora: adapters });
  adapted.upload(params);
  const merged = new Llama(gpu, CONFIG, { batchSize: B, training: false });
  merged.upload(mergeLora(CONFIG, params, { config, values }));
  const want = await forwardLogits(adapted, data);
  const got = await forwardLogits(merged, data);
  // Two f32 evaluation orders of the same function: 1e-5 + 1e-4·|logit|.
  assertClose(got.logits, want.logits, { atol: 1e-5, rtol: 1e-4 }, "merged logits");
  const base = new Llama(gpu, CONFIG, { batchSize: B, training: false });
  base.upload(params);
  const unadapted = await forwardLogits(base, data);
  assert.ok(
    unadapted.logits.some((v, i) => Math.abs(v - want.logits[i]) > 1e-3),
    "the adapter changes the logits",
  );
  for (const m of [adapted, merged, base]) m.release();
  adapters.release();
});
