import assert from "node:assert/strict";
import { fill } from "../kernels/elementwise.ts";
import { matmul } from "../kernels/matmul.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { rmsnormForward } from "../kernels/rmsnorm.ts";
import { swigluForward } from "../kernels/swiglu.ts";
import { TexelCache } from "../kernels/texel_cache.ts";
import { assertClose, randomArray, testGpu } from "./harness.ts";
import { matmulRef } from "./reference/matmul.ts";
import { rmsnormRef } from "./reference/rmsnorm.ts";
import { swigluRef } from "./reference/swiglu.ts";

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

Deno.test("a mirrored tensor's kept copy is written by the kernel that produces it and read without a copy", async () => {
  const gpu = await testGpu();
  const [m, c, h, n] = [3, 16, 12, 20];
  const x = gpu.tensor([m, c], "f32", { label: "x", data: randomArray(m * c, 1) });
  const gain = gpu.tensor([c], "f32", { label: "gain", data: randomArray(c, 2) });
  const xn = gpu.tensor([m, c], "f32", { label: "xn" });
  const rstd = gpu.tensor([m], "f32", { label: "rstd" });
  const w = gpu.tensor([2 * h, c], "f32", { label: "w", data: randomArray(2 * h * c, 3) });
  const gateUp = gpu.tensor([m, 2 * h], "f32", { label: "gateUp" });
  const hidden = gpu.tensor([m, h], "f32", { label: "hidden" });
  const w2 = gpu.tensor([n, h], "f32", { label: "w2", data: randomArray(n * h, 4) });
  const y = gpu.tensor([m, n], "f32", { label: "y" });
  const cache = new TexelCache(gpu, [w, w2], { mirrored: [xn, hidden] });
  // norm -> matmul -> swiglu -> matmul: both matmul inputs are mirrored.
  // norm -> matmul -> swiglu -> (clear) -> matmul: both matmul inputs are mirrored.
  const run = async (options: { clearHidden?: boolean } = {}) => {
    const copies = gpu.stats.copies;
    const rec = gpu.recorder({ texelCache: cache });
    rmsnormForward(rec, { out: xn, rstd, x, weight: gain, eps: 1e-5 });
    matmul(rec, { out: gateUp, a: xn, b: w, transposeB: true, texel: true });
    swigluForward(rec, { out: hidden, gateUp });
    if (options.clearHidden) fill(rec, { out: hidden, value: 0 });
    matmul(rec, { out: y, a: hidden, b: w2, transposeB: true, texel: true });
    rec.submit();
    const normed = rmsnormRef(await gpu.readFloats(x), await gpu.readFloats(gain), 1e-5).out;
    const gu = matmulRef(normed, await gpu.readFloats(w), { m, n: 2 * h, k: c, transposeB: true, batch: 1 });
    const want = options.clearHidden
      ? new Float64Array(m * n)
      : matmulRef(swigluRef(gu, h), await gpu.readFloats(w2), { m, n, k: h, transposeB: true, batch: 1 });
    assertClose(await gpu.readFloats(y), want, { atol: 1e-5, rtol: 1e-5 }, `y ${JSON.stringify(options)}`);
    return gpu.stats.copies - copies;
  };
  assert.equal(await run(), 4, "first use: both weights and both mirrors copied");
  assert.equal(await run(), 0, "second use: the kernels kept the mirrors current");
  gpu.write(x, randomArray(m * c, 5));
  assert.equal(await run(), 0, "a new input flows through the kept copies");
  // A kernel that does not keep the mirror (a fill) makes the next read copy again.
  assert.equal(await run({ clearHidden: true }), 1, "hidden re-copied after a fill");
  assert.equal(await run(), 0, "swiglu keeps it current again");
  // A recording that is never finished leaves the cache as it was.
  const dropped = gpu.recorder({ texelCache: cache });
  fill(dropped, { out: xn, value: 0 });
  assert.equal(await run(), 0, "a dropped recording changes nothing");

  cache.release();
  for (const t of [x, gain, xn, rstd, w, gateUp, hidden, w2, y]) gpu.release(t);
});

Deno.test("recordings made without a cache still mark its kept copies stale", async () => {
  const gpu = await testGpu();
  const [m, c, n] = [4, 8, 12];
  const x = gpu.tensor([m, c], "f32", { label: "x", data: randomArray(m * c, 6) });
  const gain = gpu.tensor([c], "f32", { label: "gain", data: randomArray(c, 7) });
  const xn = gpu.tensor([m, c], "f32", { label: "xn" });
  const rstd = gpu.tensor([m], "f32", { label: "rstd" });
  const w = gpu.tensor([n, c], "f32", { label: "w", data: randomArray(n * c, 8) });
  const y = gpu.tensor([m, n], "f32", { label: "y" });
  const cache = new TexelCache(gpu, [w], { mirrored: [xn] });
  const product = async (record: (rec: Recorder) => void) => {
    const copies = gpu.stats.copies;
    const rec = gpu.recorder({ texelCache: cache });
    record(rec);
    matmul(rec, { out: y, a: xn, b: w, transposeB: true, texel: true });
    rec.submit();
    const want = matmulRef(await gpu.readFloats(xn), await gpu.readFloats(w), {
      m,
      n,
      k: c,
      transposeB: true,
      batch: 1,
    });
    assertClose(await gpu.readFloats(y), want, { atol: 1e-5, rtol: 1e-5 }, "y");
    return gpu.stats.copies - copies;
  };
  const norm = (rec: Recorder) => rmsnormForward(rec, { out: xn, rstd, x, weight: gain, eps: 1e-5 });
  assert.equal(await product(norm), 2, "first use: xn and w copied");
  assert.equal(await product(norm), 0, "the norm keeps xn's copy current");
  assert.equal(await product(() => {}), 0, "nothing changed xn");
  const plain = gpu.recorder();
  fill(plain, { out: xn, value: 2 });
  plain.submit();
  // y is checked against xn as it is now (all 2s): a stale copy would fail that check.
  assert.equal(await product(() => {}), 1, "a recording without the cache wrote xn: copied again");
  cache.release();
  assert.ok(!gpu.texelCaches.has(cache), "released caches are no longer tracked");
  for (const t of [x, gain, xn, rstd, w, y]) gpu.release(t);
});

Deno.test("a TexelCache refuses a mirrored tensor it cannot stage or that shares a buffer", async () => {
  const gpu = await testGpu();
  const odd = gpu.tensor([3, 5], "f32", { label: "odd" });
  const whole = gpu.tensor([4, 4], "f32", { label: "whole" });
  assert.throws(() => new TexelCache(gpu, [], { mirrored: [odd] }), /"odd" must have a buffer of its own/);
  assert.throws(() => new TexelCache(gpu, [whole], { mirrored: [whole] }), /"whole" must have a buffer/);
  for (const t of [odd, whole]) gpu.release(t);
});
