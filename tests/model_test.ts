import assert from "node:assert/strict";
import { DropoutSeed } from "../kernels/dropout.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { EmbeddingIndexBuffer } from "../kernels/embedding.ts";
import { resolveModelConfig } from "../model/config.ts";
import { type Batch, Llama } from "../model/model.ts";
import { initialParameters, paramLayout } from "../model/params.ts";
import { Rng } from "../model/rng.ts";
import { assertClose, finiteDifferences, testGpu } from "./harness.ts";
import { B, CONFIG, randomTokens as sharedTokens, T } from "./model_fixture.ts";
import { modelRef } from "./reference/model.ts";

function randomTokens(seed: number): { tokens: Uint32Array; targets: Uint32Array } {
  return sharedTokens(seed, 3);
}

/** Parameters with every tensor perturbed, so norm gains are not all 1 and gradients are generic. */
function randomParameters(model: Llama, seed: number): Float32Array {
  const values = initialParameters(model.layout, CONFIG, new Rng(seed));
  const rng = new Rng(seed + 1);
  for (const t of model.layout.tensors) {
    for (let i = 0; i < t.length; i++) values[t.offset + i] += 0.3 * (rng.uniform() - 0.5);
  }
  return values;
}

async function gpuLossAndGrads(
  model: Llama,
  data: { tokens: Uint32Array; targets: Uint32Array },
  options: { scale: number | Tensor; dropout?: { seed: DropoutSeed; run: number; step: number } },
): Promise<{ loss: number; grads: Float32Array }> {
  const gpu = model.gpu;
  const index = new EmbeddingIndexBuffer(gpu, { n: B * T, vocabSize: CONFIG.vocab_size });
  index.update(data.tokens);
  const batch: Batch = {
    tokens: gpu.tensor([B, T], "u32", { data: data.tokens }),
    targets: gpu.tensor([B, T], "u32", { data: data.targets }),
    index,
  };
  const loss = gpu.tensor([1], "f32", { label: "loss" });
  const dropout = options.dropout ? { seed: options.dropout.seed, micro: 0 } : undefined;
  options.dropout?.seed.set(options.dropout.run, options.dropout.step);
  const rec = gpu.recorder();
  rec.clear(model.grads!);
  model.forward(rec, { batch, loss, dropout });
  model.backward(rec, { batch, dropout, scale: options.scale });
  rec.submit();
  const result = { loss: (await gpu.readFloats(loss))[0], grads: await gpu.readFloats(model.grads!) };
  for (const t of [batch.tokens, batch.targets, loss]) gpu.release(t);
  index.release();
  return result;
}

Deno.test("the model's loss and every parameter's gradient match the float64 reference model", async () => {
  const gpu = await testGpu();
  const model = new Llama(gpu, CONFIG, { batchSize: B, training: true });
  const params = randomParameters(model, 5);
  model.upload(params);
  const data = randomTokens(9);
  const got = await gpuLossAndGrads(model, data, { scale: 0.5 });
  const want = modelRef(CONFIG, model.layout, Float64Array.from(params), { ...data, B, T }, 0.5);
  // f32 through ~20 kernels: loss to 1e-5, gradients to 1e-5 + 1e-3·|ref|.
  assertClose([got.loss], [want.loss], { atol: 1e-5, rtol: 1e-5 }, "loss");
  for (const t of model.layout.tensors) {
    const scale = Math.max(...want.grads.subarray(t.offset, t.offset + t.length).map(Math.abs));
    assertClose(
      got.grads.subarray(t.offset, t.offset + t.length),
      want.grads.subarray(t.offset, t.offset + t.length),
      { atol: 1e-5 + 1e-4 * scale, rtol: 1e-3 },
      `d ${t.name}`,
    );
  }
  model.release();
});

Deno.test("with dropout, the model matches the reference with the same masks", async () => {
  const gpu = await testGpu();
  const config = { ...CONFIG, dropout: 0.25 };
  const model = new Llama(gpu, config, { batchSize: B, training: true });
  const params = randomParameters(model, 6);
  model.upload(params);
  const data = randomTokens(10);
  const seed = new DropoutSeed(gpu);
  const got = await gpuLossAndGrads(model, data, { scale: 1, dropout: { seed, run: 77, step: 3 } });
  const want = modelRef(config, model.layout, Float64Array.from(params), {
    ...data,
    B,
    T,
    dropout: { p: 0.25, run: 77, step: 3, micro: 0 },
  });
  assertClose([got.loss], [want.loss], { atol: 1e-5, rtol: 1e-5 }, "loss with dropout");
  const worst = Math.max(...want.grads.map(Math.abs));
  assertClose(got.grads, want.grads, { atol: 1e-5 + 1e-4 * worst, rtol: 1e-3 }, "grads with dropout");
  seed.tensor.buffer.destroy();
  model.release();
});

Deno.test("the reference model's gradient agrees with finite differences", () => {
  const config = resolveModelConfig({
    n_layer: 1,
    n_head: 2,
    n_kv_head: 1,
    n_embd: 8,
    block_size: 3,
    vocab_size: 5,
  });
  const layout = paramLayout(config);
  const params = Float64Array.from(
    initialParameters(layout, config, new Rng(2)),
    (v, i) => v + 0.05 * Math.sin(i),
  );
  const inputs = { tokens: [1, 4, 2], targets: [4, 0, 3], B: 1, T: 3 };
  const analytic = modelRef(config, layout, params, inputs).grads;
  // Probe a spread of parameters (every tensor) rather than all of them, to stay fast.
  const probes = layout.tensors.flatMap((
    t,
  ) => [t.offset, t.offset + Math.floor(t.length / 2), t.offset + t.length - 1]);
  const x = Float64Array.from(probes.map((i) => params[i]));
  const numeric = finiteDifferences(
    (values) => {
      const p = Float64Array.from(params);
      probes.forEach((i, j) => p[i] = values[j]);
      return modelRef(config, layout, p, inputs).loss;
    },
    x,
    1e-6,
  );
  assertClose(probes.map((i) => analytic[i]), numeric, { atol: 1e-8, rtol: 1e-5 }, "finite differences");
});

Deno.test("backward refuses a model built for inference", async () => {
  const gpu = await testGpu();
  const model = new Llama(gpu, CONFIG, { batchSize: 1, training: false });
  assert.equal(model.grads, null);
  const batch = { tokens: gpu.tensor([1, T], "u32"), targets: gpu.tensor([1, T], "u32") };
  assert.throws(() => model.backward(gpu.recorder(), { batch, scale: 1 }), /training: true/);
  model.release();
});

Deno.test("with f16 compute and a loss scale, the loss and gradients match the reference to f16 precision", async () => {
  const gpu = await testGpu();
  const model = new Llama(gpu, CONFIG, { batchSize: B, training: true, dtype: "f16" });
  const params = randomParameters(model, 5);
  model.upload(params);
  const data = randomTokens(9);
  const scale = gpu.tensor([1], "f32", { data: [1024] });
  const got = await gpuLossAndGrads(model, data, { scale });
  gpu.release(scale);
  const want = modelRef(CONFIG, model.layout, Float64Array.from(params), { ...data, B, T }, 1024);
  // f16 activations and weights (11 significant bits) through two layers: loss to 1e-2,
  // gradients to 3e-2 of each tensor's largest gradient.
  assertClose([got.loss], [want.loss], { atol: 1e-2, rtol: 1e-2 }, "f16 loss");
  for (const t of model.layout.tensors) {
    const slice = want.grads.subarray(t.offset, t.offset + t.length);
    const scaleOf = Math.max(...slice.map(Math.abs));
    assertClose(got.grads.subarray(t.offset, t.offset + t.length), slice, {
      atol: 3e-2 * scaleOf,
      rtol: 3e-2,
    }, `f16 d ${t.name}`);
  }
  model.release();
});
