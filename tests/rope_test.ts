import assert from "node:assert/strict";
import type { Gpu } from "../kernels/device.ts";
import { ropeBackward, ropeForward } from "../kernels/rope.ts";
import { assertClose, finiteDifferences, randomArray, testGpu } from "./harness.ts";
import { type QkvSizes, ropeBackwardRef, ropeRef } from "./reference/rope.ts";

// Shapes: degenerate, GQA with T and HS that are not workgroup multiples, and one
// long enough (T > 1024) that pos·freq reaches ~1000 radians.
const SHAPES: QkvSizes[] = [
  { B: 1, T: 1, NH: 1, NKV: 1, HS: 2 },
  { B: 2, T: 7, NH: 4, NKV: 2, HS: 6 },
  { B: 2, T: 33, NH: 4, NKV: 1, HS: 16 },
  { B: 1, T: 1100, NH: 2, NKV: 1, HS: 64 },
];
// |x| <= 1; each output is x1·cos − x2·sin: a few f32 roundings of values <= √2,
// plus the reduced angle's error (about 2^-24·π) and cos/sin's own error.
const F32 = { atol: 2e-6, rtol: 2e-6 };
// f16 storage rounds the result to 11 significant bits (2^-11 ≈ 4.9e-4 relative, |out| <= √2).
const F16 = { atol: 1e-3, rtol: 1e-3 };

function width(s: QkvSizes): number {
  return s.B * s.T * (s.NH + 2 * s.NKV) * s.HS;
}

async function runRope(
  gpu: Gpu,
  s: QkvSizes,
  x: Float64Array,
  options: { dtype?: "f32" | "f16"; theta?: number; offset?: number; backward?: boolean },
): Promise<Float32Array> {
  const t = gpu.tensor([s.B, s.T, (s.NH + 2 * s.NKV) * s.HS], options.dtype ?? "f32", { data: x });
  const rec = gpu.recorder();
  const args = { nHead: s.NH, nKvHead: s.NKV, theta: options.theta ?? 10000, positionOffset: options.offset };
  if (options.backward) ropeBackward(rec, { dqkv: t, ...args });
  else ropeForward(rec, { qkv: t, ...args });
  rec.submit();
  const out = await gpu.readFloats(t);
  gpu.release(t);
  return out;
}

Deno.test("rope forward matches the float64 reference, v untouched", async () => {
  const gpu = await testGpu();
  for (const [k, s] of SHAPES.entries()) {
    const x = randomArray(width(s), 10 + k);
    const got = await runRope(gpu, s, x, {});
    assertClose(got, ropeRef(x, s, 10000), F32, `rope ${JSON.stringify(s)}`);
  }
});

Deno.test("rope stays accurate at large positions (positionOffset 100000, theta 500000)", async () => {
  const gpu = await testGpu();
  const s = { B: 1, T: 65, NH: 2, NKV: 1, HS: 128 };
  const x = randomArray(width(s), 21);
  const got = await runRope(gpu, s, x, { theta: 500000, offset: 100_000 });
  // Angles reach 1e5 rad: f32 pos·freq would be off by ~4e-3 rad; the fixed-point
  // reduction keeps the same tolerance as at small positions.
  assertClose(got, ropeRef(x, s, 500000, 100_000), F32, "rope at position 1e5");
});

Deno.test("rope reads positionOffset from a u32 tensor like the baked constant", async () => {
  const gpu = await testGpu();
  const s = { B: 2, T: 9, NH: 2, NKV: 2, HS: 8 };
  const x = randomArray(width(s), 22);
  const t = gpu.tensor([s.B, s.T, (s.NH + 2 * s.NKV) * s.HS], "f32", { data: x });
  const offset = gpu.tensor([1], "u32", { data: [1234] });
  const rec = gpu.recorder();
  ropeForward(rec, { qkv: t, nHead: 2, nKvHead: 2, theta: 10000, positionOffset: offset });
  rec.submit();
  const got = await gpu.readFloats(t);
  assertClose(got, ropeRef(x, s, 10000, 1234), F32, "rope with a tensor offset");
  assert.deepEqual(got, await runRope(gpu, s, x, { offset: 1234 }));
  gpu.release(t);
  gpu.release(offset);
});

Deno.test("rope backward matches the reference and undoes the forward", async () => {
  const gpu = await testGpu();
  for (const [k, s] of SHAPES.entries()) {
    const dout = randomArray(width(s), 30 + k);
    const got = await runRope(gpu, s, dout, { backward: true, offset: 3 });
    assertClose(got, ropeBackwardRef(dout, s, 10000, 3), F32, `rope backward ${JSON.stringify(s)}`);

    const x = randomArray(width(s), 40 + k);
    const t = gpu.tensor([s.B, s.T, (s.NH + 2 * s.NKV) * s.HS], "f32", { data: x });
    const rec = gpu.recorder();
    ropeForward(rec, { qkv: t, nHead: s.NH, nKvHead: s.NKV, theta: 10000 });
    ropeBackward(rec, { dqkv: t, nHead: s.NH, nKvHead: s.NKV, theta: 10000 });
    rec.submit();
    // Two rotations in f32: twice the forward's error.
    assertClose(
      await gpu.readFloats(t),
      x,
      { atol: 4e-6, rtol: 4e-6 },
      `rope round trip ${JSON.stringify(s)}`,
    );
    gpu.release(t);
  }
});

Deno.test("rope backward matches finite differences of the float64 forward", async () => {
  const gpu = await testGpu();
  const s = { B: 1, T: 3, NH: 2, NKV: 1, HS: 4 };
  const x = randomArray(width(s), 50);
  const w = randomArray(width(s), 51); // loss = Σ w·rope(x), so dL/dout = w
  const loss = (v: Float64Array) => ropeRef(v, s, 10000, 5).reduce((sum, o, i) => sum + o * w[i], 0);
  const numeric = finiteDifferences(loss, x, 1e-5);
  const got = await runRope(gpu, s, w, { backward: true, offset: 5 });
  // The loss is linear in x, so central differences are exact up to float64
  // cancellation (~1e-16/1e-5); the GPU side is one f32 rotation.
  assertClose(got, numeric, F32, "rope gradient vs finite differences");
});

Deno.test("rope f16 matches the reference with f16 tolerances", async (t) => {
  const gpu = await testGpu();
  if (!gpu.features.f16) {
    await t.step({ name: "f16 unavailable on this adapter", ignore: true, fn: () => {} });
    return;
  }
  for (const [k, s] of SHAPES.entries()) {
    const x = Float64Array.from(randomArray(width(s), 60 + k), Math.f16round);
    assertClose(await runRope(gpu, s, x, { dtype: "f16" }), ropeRef(x, s, 10000), F16, `rope f16 ${k}`);
    assertClose(
      await runRope(gpu, s, x, { dtype: "f16", backward: true }),
      ropeBackwardRef(x, s, 10000),
      F16,
      `rope backward f16 ${k}`,
    );
  }
});

Deno.test("rope reading a staged copy gives the same bits as reading storage, forward and backward", async () => {
  const gpu = await testGpu();
  const dtypes = gpu.features.f16 ? ["f32", "f16"] as const : ["f32"] as const;
  const offset = gpu.tensor([1], "u32", { data: [5] });
  for (const dtype of dtypes) {
    for (const s of [{ B: 2, T: 9, NH: 4, NKV: 2, HS: 8 }, { B: 1, T: 70, NH: 2, NKV: 1, HS: 64 }]) {
      const x = randomArray(width(s), 17 + s.HS);
      const bits: number[][] = [];
      for (const texels of [false, true]) {
        const t = gpu.tensor([s.B, s.T, (s.NH + 2 * s.NKV) * s.HS], dtype, { data: x });
        const rec = gpu.recorder();
        const args = { nHead: s.NH, nKvHead: s.NKV, theta: 10000, texels };
        ropeForward(rec, { qkv: t, ...args, positionOffset: 3 });
        ropeBackward(rec, { dqkv: t, ...args, positionOffset: offset });
        ropeForward(rec, { qkv: t, ...args });
        rec.submit();
        bits.push([...new Uint32Array((await gpu.readFloats(t)).buffer)]);
        gpu.release(t);
      }
      assert.deepEqual(
        bits[1],
        bits[0],
        `${dtype} ${JSON.stringify(s)}: texel reads differ from storage reads`,
      );
    }
  }
  gpu.release(offset);
});

Deno.test("rope refuses an odd head size and a bad channel count, naming the argument", async () => {
  const gpu = await testGpu();
  const odd = gpu.tensor([1, 2, 4 * 3]); // NH=2, NKV=1 -> HS=3
  const bad = gpu.tensor([1, 2, 10]);
  const ints = gpu.tensor([1, 2, 8], "i32");
  const args = { nHead: 2, nKvHead: 1, theta: 10000 };
  assert.throws(() => ropeForward(gpu.recorder(), { qkv: odd, ...args }), /ropeForward: head size 3 is odd/);
  assert.throws(
    () => ropeBackward(gpu.recorder(), { dqkv: bad, ...args }),
    /ropeBackward: dqkv ".*" has 10 channels, not a multiple of NH \+ 2·NKV = 4/,
  );
  assert.throws(() => ropeForward(gpu.recorder(), { qkv: ints, ...args }), /ropeForward: qkv ".*" is i32/);
  assert.throws(
    () => ropeForward(gpu.recorder(), { qkv: bad, nHead: 3, nKvHead: 2, theta: 10000 }),
    /nKvHead 2 must divide nHead 3/,
  );
  for (const t of [odd, bad, ints]) gpu.release(t);
});
