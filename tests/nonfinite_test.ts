import assert from "node:assert/strict";
import { NonFiniteWatch } from "../kernels/nonfinite.ts";
import { testGpu } from "./harness.ts";

Deno.test("the non-finite watch counts steps with a NaN or infinite loss or gradient norm, and names the first", async () => {
  const gpu = await testGpu();
  const loss = gpu.tensor([1], "f32", { label: "loss" });
  const normSquared = gpu.tensor([1], "f32", { label: "norm squared" });
  // Per step: [loss, normSquared]; the watch starts at iteration 40 (a resumed run).
  const steps: [number, number][] = [[2.5, 1], [2.4, Infinity], [NaN, 1], [2.3, 1], [-Infinity, NaN], [
    2.2,
    0,
  ]];
  const both = new NonFiniteWatch(gpu, 40);
  const lossOnly = new NonFiniteWatch(gpu, 40);
  assert.deepEqual(await both.read(), { steps: 0, firstIteration: null });
  for (const [l, n] of steps) {
    gpu.write(loss, [l]);
    gpu.write(normSquared, [n]);
    const rec = gpu.recorder({ label: "watch step" });
    both.record(rec, { loss, normSquared });
    lossOnly.record(rec, { loss });
    rec.submit();
  }
  assert.deepEqual(await both.read(), { steps: 3, firstIteration: 41 });
  assert.deepEqual(
    await lossOnly.read(),
    { steps: 2, firstIteration: 42 },
    "f16: the gradient is the scaler's",
  );
  assert.throws(() => both.record(gpu.recorder(), { loss: gpu.tensor([2], "f32") }), /loss/);
  both.release();
  lossOnly.release();
});
