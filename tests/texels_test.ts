import assert from "node:assert/strict";
import { matmul } from "../kernels/matmul.ts";
import { TexelCache } from "../kernels/texels.ts";
import { assertClose, randomArray, testGpu } from "./harness.ts";
import { matmulRef } from "./reference/matmul.ts";

Deno.test("a TexelCache copies a constant tensor once and keeps the copy; other tensors are copied every time", async () => {
  const gpu = await testGpu();
  const [m, n, k] = [5, 12, 8];
  const weights = gpu.tensor([2, n, k], "f32", { label: "weights", data: randomArray(2 * n * k, 1) });
  const x = gpu.tensor([m, k], "f32", { label: "x", data: randomArray(m * k, 2) });
  const y = gpu.tensor([m, n], "f32", { label: "y" });
  const cache = new TexelCache(gpu, [weights]);
  const w1 = weights.view(n * k, [n, k]); // the second matrix: a view of the constant buffer
  const run = async () => {
    const rec = gpu.recorder({ texelCache: cache });
    matmul(rec, { out: y, a: x, b: w1, transposeB: true, texel: true });
    rec.submit();
    return await gpu.readFloats(y);
  };
  assert.ok(cache.holds(w1) && !cache.holds(x));
  const wanted = (xs: Float32Array, ws: Float32Array) =>
    matmulRef(xs, ws.subarray(n * k), { m, n, k, transposeB: true, batch: 1 });
  const [xs, ws] = [await gpu.readFloats(x), await gpu.readFloats(weights)];
  assertClose(await run(), wanted(xs, ws), { atol: 1e-5, rtol: 1e-5 }, "first use");
  const textures = gpu.stats.textures;

  // A new x is copied again; the weights' kept copy is read as it was, by contract.
  gpu.write(x, randomArray(m * k, 3));
  gpu.write(weights, randomArray(2 * n * k, 4));
  assertClose(await run(), wanted(await gpu.readFloats(x), ws), { atol: 1e-5, rtol: 1e-5 }, "second use");
  assert.equal(gpu.stats.textures, textures, "no texture made on the second use");

  cache.release();
  for (const t of [weights, x, y]) gpu.release(t);
});
