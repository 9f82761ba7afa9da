import assert from "node:assert/strict";
import { swigluBackward, swigluForward } from "../kernels/swiglu.ts";
import { assertClose, randomArray, testGpu } from "./harness.ts";
import { swigluBackwardRef, swigluRef } from "./reference/swiglu.ts";

// Rows: 1, odd counts and more than one 256-thread workgroup of vectors; hidden
// widths: 1 and odd (scalar path), 64 and 768 (vec4 path).
const NS = [1, 7, 33, 130];
const HS = [1, 5, 64, 65, 768];
// A handful of f32 operations (exp is within a few ulp) on values of order 1..10.
const F32 = { atol: 1e-6, rtol: 1e-5 };
// One f16 rounding of the result (2^-11 ≈ 4.9e-4 relative) on top of f32 math.
const F16 = { atol: 1e-3, rtol: 1e-3 };

/** gateUp with gates spread over [-6, 6] (both tails of the sigmoid) and ups in [-2, 2]. */
function gateUpData(n: number, h: number, seed: number): Float64Array {
  const gate = randomArray(n * h, seed, 6);
  const up = randomArray(n * h, seed + 1, 2);
  const packed = new Float64Array(n * 2 * h);
  for (let r = 0; r < n; r++) {
    packed.set(gate.subarray(r * h, (r + 1) * h), r * 2 * h);
    packed.set(up.subarray(r * h, (r + 1) * h), r * 2 * h + h);
  }
  return packed;
}

Deno.test("swiglu forward and backward match the float64 reference at every test shape", async () => {
  const gpu = await testGpu();
  for (const N of NS) {
    for (const H of HS) {
      const gateUp = gateUpData(N, H, N * 100 + H);
      const dout = randomArray(N * H, N * 100 + H + 2, 1);
      const tg = gpu.tensor([N, 2 * H], "f32", { data: gateUp });
      const td = gpu.tensor([N, H], "f32", { data: dout });
      const out = gpu.tensor([N, H], "f32", { data: randomArray(N * H, 3, 50) }); // garbage to overwrite
      const dg = gpu.tensor([N, 2 * H], "f32", { data: randomArray(N * 2 * H, 4, 50) });
      const rec = gpu.recorder();
      swigluForward(rec, { out, gateUp: tg });
      swigluBackward(rec, { dgateUp: dg, dout: td, gateUp: tg });
      rec.submit();
      assertClose(await gpu.readFloats(out), swigluRef(gateUp, H), F32, `out N=${N} H=${H}`);
      assertClose(await gpu.readFloats(dg), swigluBackwardRef(dout, gateUp, H), F32, `dgateUp N=${N} H=${H}`);
      for (const t of [tg, td, out, dg]) gpu.release(t);
    }
  }
});

Deno.test("swiglu backward matches central finite differences of the float64 forward", async () => {
  const gpu = await testGpu();
  for (const [N, H] of [[2, 3], [2, 4]]) { // scalar and vec4 paths
    const gateUp = gateUpData(N, H, 61 + H);
    const probe = randomArray(N * H, 62 + H, 1); // L = Σ probe·out, so dL/dout = probe
    const loss = (v: Float64Array) => swigluRef(v, H).reduce((s, o, i) => s + o * probe[i], 0);
    const h = 1e-6;
    const fd = Float64Array.from(gateUp, (v, i) => {
      const plus = Float64Array.from(gateUp);
      const minus = Float64Array.from(gateUp);
      plus[i] = v + h;
      minus[i] = v - h;
      return (loss(plus) - loss(minus)) / (2 * h);
    });
    // Float64 central differences, h = 1e-6: truncation ~h² and cancellation ~1e-16/h, both < 1e-7.
    assertClose(
      swigluBackwardRef(probe, gateUp, H),
      fd,
      { atol: 1e-7, rtol: 1e-6 },
      `reference N=${N} H=${H}`,
    );

    const tg = gpu.tensor([N, 2 * H], "f32", { data: gateUp });
    const td = gpu.tensor([N, H], "f32", { data: probe });
    const dg = gpu.tensor([N, 2 * H], "f32");
    const rec = gpu.recorder();
    swigluBackward(rec, { dgateUp: dg, dout: td, gateUp: tg });
    rec.submit();
    assertClose(await gpu.readFloats(dg), fd, { atol: 1e-5, rtol: 1e-5 }, `GPU N=${N} H=${H}`);
    for (const t of [tg, td, dg]) gpu.release(t);
  }
});

Deno.test("swiglu backward in place (dgateUp = gateUp) equals out of place", async () => {
  const gpu = await testGpu();
  for (const [N, H] of [[7, 5], [33, 64]]) {
    const gateUp = gateUpData(N, H, 71);
    const dout = randomArray(N * H, 72, 1);
    const tg = gpu.tensor([N, 2 * H], "f32", { data: gateUp });
    const td = gpu.tensor([N, H], "f32", { data: dout });
    const dg = gpu.tensor([N, 2 * H], "f32");
    const rec = gpu.recorder();
    swigluBackward(rec, { dgateUp: dg, dout: td, gateUp: tg });
    swigluBackward(rec, { dgateUp: tg, dout: td, gateUp: tg });
    rec.submit();
    assertClose(await gpu.readFloats(tg), await gpu.readFloats(dg), { atol: 0, rtol: 0 }, `N=${N} H=${H}`);
    for (const t of [tg, td, dg]) gpu.release(t);
  }
});

Deno.test("swiglu stays finite and exact in the tails: gate = ±100, ±1e4", async () => {
  const gpu = await testGpu();
  const H = 4;
  const gates = [100, -100, 1e4, -1e4];
  const gateUp = [...gates, 1.5, -2, 0.5, 3];
  const dout = [1, 1, 1, 1];
  const tg = gpu.tensor([1, 2 * H], "f32", { data: gateUp });
  const td = gpu.tensor([1, H], "f32", { data: dout });
  const out = gpu.tensor([1, H], "f32");
  const dg = gpu.tensor([1, 2 * H], "f32");
  const rec = gpu.recorder();
  swigluForward(rec, { out, gateUp: tg });
  swigluBackward(rec, { dgateUp: dg, dout: td, gateUp: tg });
  rec.submit();
  const got = [...await gpu.readFloats(out), ...await gpu.readFloats(dg)];
  assert.ok(got.every(Number.isFinite), `non-finite value in ${got}`);
  // silu(g) = g for large g and ~0 for very negative g; its slope is 1 and ~0.
  const want = [...swigluRef(gateUp, H), ...swigluBackwardRef(dout, gateUp, H)];
  assertClose(got, want, { atol: 1e-6, rtol: 1e-6 }, "tails");
  for (const t of [tg, td, out, dg]) gpu.release(t);
});

Deno.test("swiglu f16 tensors (f32 math) match the reference within one f16 rounding", async (t) => {
  const gpu = await testGpu();
  if (!gpu.features.f16) {
    await t.step({ name: "skipped: no usable shader-f16 on this adapter", ignore: true, fn: () => {} });
    return;
  }
  for (const [N, H] of [[7, 65], [33, 768]]) {
    const gateUp = gateUpData(N, H, 81).map(Math.f16round);
    const dout = randomArray(N * H, 82, 1).map(Math.f16round);
    const tg = gpu.tensor([N, 2 * H], "f16", { data: gateUp });
    const td = gpu.tensor([N, H], "f16", { data: dout });
    const out = gpu.tensor([N, H], "f16");
    const dg = gpu.tensor([N, 2 * H], "f16");
    const rec = gpu.recorder();
    swigluForward(rec, { out, gateUp: tg });
    swigluBackward(rec, { dgateUp: dg, dout: td, gateUp: tg });
    rec.submit();
    assertClose(await gpu.readFloats(out), swigluRef(gateUp, H), F16, `f16 out N=${N} H=${H}`);
    assertClose(
      await gpu.readFloats(dg),
      swigluBackwardRef(dout, gateUp, H),
      F16,
      `f16 dgateUp N=${N} H=${H}`,
    );
    for (const t of [tg, td, out, dg]) gpu.release(t);
  }
});

Deno.test("swiglu is bit-identical run to run", async () => {
  const gpu = await testGpu();
  const [N, H] = [33, 768];
  const tg = gpu.tensor([N, 2 * H], "f32", { data: gateUpData(N, H, 91) });
  const td = gpu.tensor([N, H], "f32", { data: randomArray(N * H, 92, 1) });
  const runs: Uint32Array[] = [];
  for (let run = 0; run < 2; run++) {
    const out = gpu.tensor([N, H], "f32");
    const dg = gpu.tensor([N, 2 * H], "f32");
    const rec = gpu.recorder();
    swigluForward(rec, { out, gateUp: tg });
    swigluBackward(rec, { dgateUp: dg, dout: td, gateUp: tg });
    rec.submit();
    runs.push(
      new Uint32Array([
        ...new Uint32Array((await gpu.readFloats(out)).buffer),
        ...new Uint32Array((await gpu.readFloats(dg)).buffer),
      ]),
    );
    for (const t of [out, dg]) gpu.release(t);
  }
  assert.deepEqual(runs[1], runs[0]);
  for (const t of [tg, td]) gpu.release(t);
});

Deno.test("swiglu reading staged textures gives the same bits as reading storage (f32, f16, in place)", async () => {
  const gpu = await testGpu();
  const [N, H] = [7, 36];
  for (const dtype of gpu.features.f16 ? ["f32", "f16"] as const : ["f32"] as const) {
    const tg = gpu.tensor([N, 2 * H], dtype, { data: gateUpData(N, H, 93) });
    const td = gpu.tensor([N, H], dtype, { data: randomArray(N * H, 94, 1) });
    const bits: Uint32Array[] = [];
    for (const texels of [false, true]) {
      const out = gpu.tensor([N, H], dtype);
      const dg = gpu.tensor([N, 2 * H], dtype);
      const inPlace = gpu.tensor([N, 2 * H], dtype, { data: gateUpData(N, H, 93) });
      const rec = gpu.recorder();
      swigluForward(rec, { out, gateUp: tg, texels });
      swigluBackward(rec, { dgateUp: dg, dout: td, gateUp: tg, texels });
      swigluBackward(rec, { dgateUp: inPlace, dout: td, gateUp: inPlace, texels });
      rec.submit();
      const read = async (t: typeof out) => [...new Uint32Array((await gpu.readFloats(t)).buffer)];
      bits.push(new Uint32Array([...await read(out), ...await read(dg), ...await read(inPlace)]));
      for (const t of [out, dg, inPlace]) gpu.release(t);
    }
    assert.deepEqual(bits[1], bits[0], `${dtype}: texel reads differ from storage reads`);
    for (const t of [tg, td]) gpu.release(t);
  }
});

Deno.test("swiglu refuses bad shapes, dtypes and overlapping outputs with the argument named", async () => {
  const gpu = await testGpu();
  const gu = gpu.tensor([4, 16], "f32", { label: "gu" });
  const out = gpu.tensor([4, 8], "f32", { label: "out" });
  const out7 = gpu.tensor([4, 7], "f32", { label: "out7" });
  const u = gpu.tensor([4, 8], "u32", { label: "u" });
  const rec = gpu.recorder();
  assert.throws(
    () => swigluForward(rec, { out: out7, gateUp: gu }),
    /swigluForward: gateUp "gu" has shape \[4, 16\], expected \[4, 14\]/,
  );
  assert.throws(() => swigluForward(rec, { out: u, gateUp: gu }), /swigluForward: out "u" is u32/);
  assert.throws(
    () => swigluForward(rec, { out: gu.view(0, [4, 8], "gu view"), gateUp: gu }),
    /swigluForward: out "gu view" overlaps gateUp "gu"/,
  );
  assert.throws(
    () => swigluBackward(rec, { dgateUp: out, dout: out, gateUp: gu }),
    /swigluBackward: dgateUp "out" has shape \[4, 8\], expected \[4, 16\]/,
  );
  for (const t of [gu, out, out7, u]) gpu.release(t);
});
