import assert from "node:assert/strict";
import { AdamW, buildDecayMask } from "../kernels/adamw.ts";
import { LossScaler } from "../kernels/loss_scale.ts";
import { randomArray, testGpu } from "./harness.ts";

Deno.test("the loss scale halves on a non-finite norm, counts it, and doubles after growthInterval good steps", async () => {
  const gpu = await testGpu();
  const scaler = new LossScaler(gpu, {
    initialScale: 1024,
    growthInterval: 3,
    minScale: 256,
    maxScale: 2048,
  });
  const norm = gpu.tensor([1], "f32", { label: "norm squared" });
  const step = async (normSquared: number) => {
    gpu.write(norm, [normSquared]);
    const rec = gpu.recorder();
    scaler.record(rec, { normSquared: norm });
    rec.submit();
    return await scaler.read();
  };
  assert.deepEqual(await step(4), { scale: 1024, lastScale: 1024, goodSteps: 1, skipped: 0 });
  assert.deepEqual(await step(Infinity), { scale: 512, lastScale: 1024, goodSteps: 0, skipped: 1 });
  assert.deepEqual(await step(NaN), { scale: 256, lastScale: 512, goodSteps: 0, skipped: 2 });
  assert.deepEqual(
    await step(NaN),
    { scale: 256, lastScale: 256, goodSteps: 0, skipped: 3 },
    "floor at minScale",
  );
  await step(1);
  await step(1);
  assert.deepEqual(
    await step(1),
    { scale: 512, lastScale: 256, goodSteps: 0, skipped: 3 },
    "doubled after 3 good",
  );
  // A norm whose square is finite but whose unscaled value overflows is no good step either.
  assert.equal((await step(3e38)).skipped, 3);
  scaler.reset({ scale: 2048, goodSteps: 2, skipped: 7, lastScale: 2048 });
  assert.deepEqual(
    await step(1),
    { scale: 2048, lastScale: 2048, goodSteps: 0, skipped: 7 },
    "ceiling at maxScale",
  );
  scaler.release();
  gpu.release(norm);
});

Deno.test("AdamW with a GPU loss scale S gives the same bits as gradScale 1/S", async () => {
  const gpu = await testGpu();
  const n = 1003;
  const grads = Float32Array.from(randomArray(n, 1), (g) => g * 1024);
  const params = Float32Array.from(randomArray(n, 2));
  const mask = buildDecayMask(n, [{ offset: 0, length: 500, decay: true }]);
  const hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1, step: 3 };
  const run = async (withTensor: boolean) => {
    const t = {
      params: gpu.tensor([n], "f32", { data: params }),
      grads: gpu.tensor([n], "f32", { data: grads }),
      m: gpu.tensor([n], "f32", { data: new Float32Array(n).fill(0.01) }),
      v: gpu.tensor([n], "f32", { data: new Float32Array(n).fill(0.02) }),
      decayMask: gpu.tensor([mask.length], "u32", { data: mask }),
      normSquared: gpu.tensor([1], "f32", { data: [grads.reduce((s, g) => s + g * g, 0)] }),
    };
    const scale = gpu.tensor([1], "f32", { data: [1024] });
    const adamw = new AdamW(gpu, n);
    const rec = gpu.recorder();
    if (withTensor) adamw.record(rec, { ...t, hyper, lossScale: scale });
    else adamw.record(rec, { ...t, hyper: { ...hyper, gradScale: 1 / 1024 } });
    rec.submit();
    const out = [await gpu.readFloats(t.params), await gpu.readFloats(t.m), await gpu.readFloats(t.v)];
    for (const tensor of [...Object.values(t), scale]) gpu.release(tensor);
    adamw.release();
    return out;
  };
  const [a, b] = [await run(true), await run(false)];
  for (let i = 0; i < 3; i++) assert.deepEqual(a[i], b[i]);
});
