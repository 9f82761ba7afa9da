import assert from "node:assert/strict";
import { dropout, dropoutAdd, dropoutBackward, DropoutSeed } from "../kernels/dropout.ts";
import { assertClose, randomArray, testGpu } from "./harness.ts";
import { keepRef } from "./reference/dropout.ts";

const F32 = { atol: 1e-6, rtol: 1e-6 };

Deno.test("dropoutAdd keeps exactly the reference mask and scales by 1/(1-p)", async () => {
  const gpu = await testGpu();
  const seed = new DropoutSeed(gpu);
  for (const [n, p, stream] of [[1, 0.5, 0], [33, 0.2, 3], [4097, 0.1, 7]] as const) {
    const a = randomArray(n, 1);
    const b = randomArray(n, 2);
    const ta = gpu.tensor([n], "f32", { data: a });
    const tb = gpu.tensor([n], "f32", { data: b });
    seed.set(1337, 5);
    const rec = gpu.recorder();
    dropoutAdd(rec, { out: ta, a: ta, b: tb, p, seed, stream });
    rec.submit();
    const want = Float64Array.from(a, (v, i) => v + (keepRef(1337, 5, stream, i, p) ? b[i] / (1 - p) : 0));
    assertClose(await gpu.read(ta), want, F32, `dropoutAdd n=${n}`);
    gpu.release(ta);
    gpu.release(tb);
  }
});

Deno.test("dropout drops about p of the elements and changes mask with step and stream", async () => {
  const gpu = await testGpu();
  const seed = new DropoutSeed(gpu);
  const n = 20000;
  const ones = gpu.tensor([n], "f32", { data: new Float32Array(n).fill(1) });
  const masks: Float32Array[] = [];
  for (const [step, stream] of [[1, 0], [1, 0], [2, 0], [1, 1]]) {
    const out = gpu.tensor([n], "f32");
    seed.set(42, step);
    const rec = gpu.recorder();
    dropout(rec, { out, x: ones, p: 0.25, seed, stream });
    rec.submit();
    masks.push(await gpu.readFloats(out));
    gpu.release(out);
  }
  const dropped = masks[0].filter((v) => v === 0).length / n;
  assert.ok(Math.abs(dropped - 0.25) < 0.015, `dropped fraction ${dropped}`); // ~5 sigma for n=20000
  assert.ok(masks[0].every((v) => v === 0 || Math.abs(v - 1 / 0.75) < 1e-6));
  assert.deepEqual(masks[0], masks[1], "same seed, step and stream: same mask");
  assert.notDeepEqual(masks[0], masks[2], "another step: another mask");
  assert.notDeepEqual(masks[0], masks[3], "another stream: another mask");
  gpu.release(ones);
});

Deno.test("dropoutBackward applies the forward's mask, overwriting or accumulating", async () => {
  const gpu = await testGpu();
  const seed = new DropoutSeed(gpu);
  const n = 777;
  const p = 0.3;
  const dout = randomArray(n, 3);
  const prior = randomArray(n, 4);
  const tdout = gpu.tensor([n], "f32", { data: dout });
  const dx = gpu.tensor([n], "f32");
  const dxAcc = gpu.tensor([n], "f32", { data: prior });
  seed.set(9, 11);
  const rec = gpu.recorder();
  dropoutBackward(rec, { dx, dout: tdout, p, seed, stream: 2 });
  dropoutBackward(rec, { dx: dxAcc, dout: tdout, p, seed, stream: 2, accumulate: true });
  rec.submit();
  const grad = Float64Array.from(dout, (g, i) => keepRef(9, 11, 2, i, p) ? g / (1 - p) : 0);
  assertClose(await gpu.read(dx), grad, F32, "dx");
  assertClose(await gpu.read(dxAcc), grad.map((g, i) => g + prior[i]), F32, "dx +=");
  assert.throws(
    () => dropout(gpu.recorder(), { out: dx, x: dx, p: 0, seed, stream: 0 }),
    /p must be in \(0, 1\)/,
  );
  for (const t of [tdout, dx, dxAcc]) gpu.release(t);
});
