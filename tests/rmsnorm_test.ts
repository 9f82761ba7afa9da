import assert from "node:assert/strict";
import { residualRmsnormForward, rmsnormBackward, rmsnormForward } from "../kernels/rmsnorm.ts";
import { add } from "../kernels/elementwise.ts";
import type { Gpu } from "../kernels/device.ts";
import type { Recorder } from "../kernels/recorder.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { assertClose, finiteDifferences, randomArray, testGpu, weightedSum } from "./harness.ts";
import { residualRmsnormRef, rmsnormBackwardRef, rmsnormRef } from "./reference/rmsnorm.ts";

// Rows: 1, odd counts, and more than one 16-row backward block; channels: 1, odd
// (scalar path), 64 (vec4 path, one vector per thread) and 768 (several per thread).
const NS = [1, 7, 33, 130];
const CS = [1, 5, 64, 65, 768];
// Rows wider than 8 vectors per thread of a 32-thread row (128 threads per row
// for vec4, 256 for scalars, one row per workgroup); more backward workgroups
// than the 16 lanes that sum each column's partials; and N large enough that a
// backward row group takes several consecutive rows on any adapter.
const EXTRA = [[5, 2052], [9, 1030], [520, 65], [8200, 5], [16500, 4]];
const SHAPES = [...NS.flatMap((n) => CS.map((c) => [n, c])), ...EXTRA];
const EPS = 1e-5;
// f32 sums of up to 768 squares or products, then a few roundings.
const F32_OUT = { atol: 1e-5, rtol: 1e-5 };
// dx = r·(g − x·r²·mean(g·x)) cancels where the two terms agree, so its error
// scales with r·|g| (|g| < 2 here), not with |dx|: an absolute term carries it.
const F32_DX = { atol: 1e-5, rtol: 1e-5 };
// dweight sums up to 130 rows of products around 1 in f32.
const F32_DW = { atol: 1e-5, rtol: 1e-5 };
// One f16 rounding of the output (2^-11 ≈ 4.9e-4 relative) on top of f32 math.
const F16 = { atol: 1e-3, rtol: 1e-3 };

function data(n: number, c: number, seed: number) {
  return {
    x: randomArray(n * c, seed, 2),
    weight: randomArray(c, seed + 1, 0.5).map((v) => v + 1),
    dout: randomArray(n * c, seed + 2, 1),
  };
}

/** {@link data} and its f32 tensors. */
function uploaded(gpu: Gpu, n: number, c: number, seed: number) {
  const host = data(n, c, seed);
  return {
    ...host,
    tx: gpu.tensor([n, c], "f32", { data: host.x }),
    tw: gpu.tensor([c], "f32", { data: host.weight }),
    tdout: gpu.tensor([n, c], "f32", { data: host.dout }),
  };
}

/** Each storage dtype the device runs, with a warp and with a thread per row. */
function dtypesAndLayouts(gpu: Gpu): (readonly ["f32" | "f16", boolean])[] {
  const dtypes = gpu.features.f16 ? ["f32", "f16"] as const : ["f32"] as const;
  return dtypes.flatMap((d) => [[d, false], [d, true]] as const);
}

async function floats(gpu: Gpu, t: Tensor): Promise<Float32Array> {
  return await gpu.readFloats(t);
}

Deno.test("rmsnorm forward matches the float64 reference at every test shape, a warp or a thread per row", async () => {
  const gpu = await testGpu();
  for (const threadPerRow of [false, true]) {
    for (const [N, C] of SHAPES) {
      const { x, weight } = data(N, C, N * 1000 + C);
      const tx = gpu.tensor([N, C], "f32", { data: x });
      const tw = gpu.tensor([C], "f32", { data: weight });
      const out = gpu.tensor([N, C], "f32");
      const rstd = gpu.tensor([N], "f32");
      const rec = gpu.recorder();
      rmsnormForward(rec, { out, rstd, x: tx, weight: tw, eps: EPS, threadPerRow });
      rec.submit();
      const want = rmsnormRef(x, weight, EPS);
      const what = `N=${N} C=${C} threadPerRow=${threadPerRow}`;
      assertClose(await floats(gpu, out), want.out, F32_OUT, `out ${what}`);
      assertClose(await floats(gpu, rstd), want.rstd, F32_OUT, `rstd ${what}`);
      for (const t of [tx, tw, out, rstd]) gpu.release(t);
    }
  }
});

Deno.test("rmsnorm backward matches the reference's analytic gradient, a warp or a thread per row", async () => {
  const gpu = await testGpu();
  for (
    const [N, C, threadPerRow] of [false, true].flatMap((t) => SHAPES.map(([n, c]) => [n, c, t] as const))
  ) {
    const { x, weight, dout } = data(N, C, N * 1000 + C + 7);
    const dw0 = randomArray(C, 99, 1);
    const tx = gpu.tensor([N, C], "f32", { data: x });
    const tw = gpu.tensor([C], "f32", { data: weight });
    const tdout = gpu.tensor([N, C], "f32", { data: dout });
    const dx = gpu.tensor([N, C], "f32", { data: randomArray(N * C, 5, 100) }); // garbage to overwrite
    const dweight = gpu.tensor([C], "f32", { data: dw0 });
    const out = gpu.tensor([N, C], "f32");
    const rstd = gpu.tensor([N], "f32");
    const rec = gpu.recorder();
    rmsnormForward(rec, { out, rstd, x: tx, weight: tw, eps: EPS, threadPerRow });
    rmsnormBackward(rec, { dx, dweight, dout: tdout, x: tx, weight: tw, rstd, threadPerRow });
    rec.submit();
    const want = rmsnormBackwardRef(dout, x, weight, EPS);
    const what = `N=${N} C=${C} threadPerRow=${threadPerRow}`;
    assertClose(await floats(gpu, dx), want.dx, F32_DX, `dx ${what}`);
    const dwWant = want.dweight.map((v, i) => v + dw0[i]);
    assertClose(await floats(gpu, dweight), dwWant, F32_DW, `dweight ${what}`);
    for (const t of [tx, tw, tdout, dx, dweight, out, rstd]) gpu.release(t);
  }
});

Deno.test("rmsnorm backward matches central finite differences of the float64 forward", async () => {
  const gpu = await testGpu();
  // C = 5 takes the scalar path, C = 8 the vec4 path.
  for (const [N, C] of [[3, 5], [2, 8]]) {
    const { x, weight } = data(N, C, 11 + C);
    const probe = randomArray(N * C, 12 + C, 1); // L = Σ probe·out, so dL/dout = probe
    const loss = (xv: Float64Array, wv: Float64Array) => weightedSum(probe, rmsnormRef(xv, wv, EPS).out);
    const h = 1e-6;
    const fdX = finiteDifferences((xv) => loss(xv, weight), x, h);
    const fdW = finiteDifferences((wv) => loss(x, wv), weight, h);
    const analytic = rmsnormBackwardRef(probe, x, weight, EPS);
    // Central differences in float64 with h = 1e-6: truncation ~h²·f''' and
    // cancellation ~1e-16/h, both far below 1e-7 for values of order 1.
    const FD = { atol: 1e-7, rtol: 1e-6 };
    assertClose(analytic.dx, fdX, FD, `reference dx vs finite differences N=${N} C=${C}`);
    assertClose(analytic.dweight, fdW, FD, `reference dweight vs finite differences N=${N} C=${C}`);

    const tx = gpu.tensor([N, C], "f32", { data: x });
    const tw = gpu.tensor([C], "f32", { data: weight });
    const tdout = gpu.tensor([N, C], "f32", { data: probe });
    const dx = gpu.tensor([N, C], "f32");
    const dweight = gpu.tensor([C], "f32");
    const out = gpu.tensor([N, C], "f32");
    const rstd = gpu.tensor([N], "f32");
    const rec = gpu.recorder();
    rmsnormForward(rec, { out, rstd, x: tx, weight: tw, eps: EPS });
    rmsnormBackward(rec, { dx, dweight, dout: tdout, x: tx, weight: tw, rstd });
    rec.submit();
    // The GPU computes in f32: a few roundings of values of order 1.
    const GPU = { atol: 1e-5, rtol: 1e-5 };
    assertClose(await floats(gpu, dx), fdX, GPU, `GPU dx vs finite differences N=${N} C=${C}`);
    assertClose(await floats(gpu, dweight), fdW, GPU, `GPU dweight vs finite differences N=${N} C=${C}`);
    for (const t of [tx, tw, tdout, dx, dweight, out, rstd]) gpu.release(t);
  }
});

Deno.test("rmsnorm backward with accumulate adds dx into existing values; dweight accumulates over calls", async () => {
  const gpu = await testGpu();
  for (const [N, C] of [[7, 65], [33, 768]]) {
    const { x, weight, dout } = data(N, C, 21);
    const dx0 = randomArray(N * C, 22, 3);
    const dw0 = randomArray(C, 23, 3);
    const tx = gpu.tensor([N, C], "f32", { data: x });
    const tw = gpu.tensor([C], "f32", { data: weight });
    const tdout = gpu.tensor([N, C], "f32", { data: dout });
    const dx = gpu.tensor([N, C], "f32", { data: dx0 });
    const dweight = gpu.tensor([C], "f32", { data: dw0 });
    const out = gpu.tensor([N, C], "f32");
    const rstd = gpu.tensor([N], "f32");
    const rec = gpu.recorder();
    rmsnormForward(rec, { out, rstd, x: tx, weight: tw, eps: EPS });
    for (let call = 0; call < 2; call++) {
      rmsnormBackward(rec, { dx, dweight, dout: tdout, x: tx, weight: tw, rstd, accumulate: true });
    }
    rec.submit();
    const want = rmsnormBackwardRef(dout, x, weight, EPS);
    // Values up to |dx0| + 2|dx| ≈ 8: the f32 sums round at that magnitude.
    const TOL = { atol: 2e-5, rtol: 1e-5 };
    assertClose(await floats(gpu, dx), want.dx.map((v, i) => dx0[i] + 2 * v), TOL, `dx N=${N} C=${C}`);
    assertClose(
      await floats(gpu, dweight),
      want.dweight.map((v, i) => dw0[i] + 2 * v),
      TOL,
      `dweight N=${N} C=${C}`,
    );
    for (const t of [tx, tw, tdout, dx, dweight, out, rstd]) gpu.release(t);
  }
});

Deno.test("residual rmsnorm forward matches x + branch then rmsnorm, out of place and in place", async () => {
  const gpu = await testGpu();
  const shapes = [[1, 1], [7, 5], [33, 64], [130, 768]];
  for (
    const [N, C, threadPerRow] of [false, true].flatMap((t) => shapes.map(([n, c]) => [n, c, t] as const))
  ) {
    const { x, weight } = data(N, C, 31 + C);
    const branch = randomArray(N * C, 32 + C, 1);
    const want = residualRmsnormRef(x, branch, weight, EPS);
    const tx = gpu.tensor([N, C], "f32", { data: x });
    const tb = gpu.tensor([N, C], "f32", { data: branch });
    const tw = gpu.tensor([C], "f32", { data: weight });
    const res = gpu.tensor([N, C], "f32");
    const out = gpu.tensor([N, C], "f32");
    const rstd = gpu.tensor([N], "f32");
    const out2 = gpu.tensor([N, C], "f32");
    const rstd2 = gpu.tensor([N], "f32");
    const rec = gpu.recorder();
    const common = { branch: tb, weight: tw, eps: EPS, threadPerRow };
    residualRmsnormForward(rec, { ...common, residualOut: res, out, rstd, x: tx });
    residualRmsnormForward(rec, { ...common, residualOut: tx, out: out2, rstd: rstd2, x: tx });
    rec.submit();
    for (
      const [what, r, o, s] of [["out of place", res, out, rstd], ["in place", tx, out2, rstd2]] as const
    ) {
      // The sum is one f32 rounding; the norm as in the plain forward.
      const where = `${what} N=${N} C=${C} threadPerRow=${threadPerRow}`;
      assertClose(await floats(gpu, r), want.residualOut, F32_OUT, `residualOut ${where}`);
      assertClose(await floats(gpu, o), want.out, F32_OUT, `out ${where}`);
      assertClose(await floats(gpu, s), want.rstd, F32_OUT, `rstd ${where}`);
    }
    // Against the unfused pair on the GPU: the same f32 sum, the same row kernel math.
    const sum = gpu.tensor([N, C], "f32");
    const out3 = gpu.tensor([N, C], "f32");
    const rstd3 = gpu.tensor([N], "f32");
    const tx2 = gpu.tensor([N, C], "f32", { data: x });
    const rec2 = gpu.recorder();
    add(rec2, { out: sum, a: tx2, b: tb });
    rmsnormForward(rec2, { out: out3, rstd: rstd3, x: sum, weight: tw, eps: EPS, threadPerRow });
    rec2.submit();
    assertClose(
      await floats(gpu, out3),
      await floats(gpu, out),
      { atol: 0, rtol: 0 },
      "fused vs unfused out",
    );
    for (const t of [tx, tb, tw, res, out, rstd, out2, rstd2, sum, out3, rstd3, tx2]) gpu.release(t);
  }
});

Deno.test("rmsnorm f16 activations (f32 math) match the reference within one f16 rounding", async (t) => {
  const gpu = await testGpu();
  if (!gpu.features.f16) {
    await t.step({ name: "skipped: no usable shader-f16 on this adapter", ignore: true, fn: () => {} });
    return;
  }
  for (const [N, C] of [[7, 65], [33, 768]]) {
    for (const wdtype of ["f32", "f16"] as const) {
      const raw = data(N, C, 41 + C);
      const x = raw.x.map(Math.f16round);
      const dout = raw.dout.map(Math.f16round);
      const branch = randomArray(N * C, 42, 1).map(Math.f16round);
      const weight = wdtype === "f16" ? raw.weight.map(Math.f16round) : raw.weight.map(Math.fround);
      const tx = gpu.tensor([N, C], "f16", { data: x });
      const tb = gpu.tensor([N, C], "f16", { data: branch });
      const tw = gpu.tensor([C], wdtype, { data: weight });
      const tdout = gpu.tensor([N, C], "f16", { data: dout });
      const out = gpu.tensor([N, C], "f16");
      const rstd = gpu.tensor([N], "f32");
      const dx = gpu.tensor([N, C], "f16");
      const dweight = gpu.tensor([C], "f32");
      const res = gpu.tensor([N, C], "f16");
      const rout = gpu.tensor([N, C], "f16");
      const rrstd = gpu.tensor([N], "f32");
      const rec = gpu.recorder();
      rmsnormForward(rec, { out, rstd, x: tx, weight: tw, eps: EPS });
      rmsnormBackward(rec, { dx, dweight, dout: tdout, x: tx, weight: tw, rstd });
      residualRmsnormForward(rec, {
        residualOut: res,
        out: rout,
        rstd: rrstd,
        x: tx,
        branch: tb,
        weight: tw,
        eps: EPS,
      });
      rec.submit();
      const what = `N=${N} C=${C} weight ${wdtype}`;
      const fwd = rmsnormRef(x, weight, EPS);
      assertClose(await floats(gpu, out), fwd.out, F16, `f16 out ${what}`);
      assertClose(await floats(gpu, rstd), fwd.rstd, F32_OUT, `f16 rstd ${what}`);
      const bwd = rmsnormBackwardRef(dout, x, weight, EPS);
      assertClose(await floats(gpu, dx), bwd.dx, F16, `f16 dx ${what}`);
      // dweight stays f32 and the f16 inputs are exact in f32: f32 tolerance.
      assertClose(await floats(gpu, dweight), bwd.dweight, F32_DW, `f16 dweight ${what}`);
      // The fused kernel normalizes the residual as stored in f16.
      const resWant = x.map((v, i) => v + branch[i]);
      assertClose(await floats(gpu, res), resWant, F16, `f16 residualOut ${what}`);
      const stored = await floats(gpu, res);
      assertClose(await floats(gpu, rout), rmsnormRef(stored, weight, EPS).out, F16, `f16 fused out ${what}`);
      for (const t of [tx, tb, tw, tdout, out, rstd, dx, dweight, res, rout, rrstd]) gpu.release(t);
    }
  }
});

Deno.test("rmsnorm forward and backward are bit-identical run to run", async () => {
  const gpu = await testGpu();
  const [N, C] = [130, 768];
  const { tx, tw, tdout } = uploaded(gpu, N, C, 51);
  const runs: Float32Array[][] = [];
  for (let run = 0; run < 2; run++) {
    const out = gpu.tensor([N, C], "f32");
    const rstd = gpu.tensor([N], "f32");
    const dx = gpu.tensor([N, C], "f32");
    const dweight = gpu.tensor([C], "f32");
    const rec = gpu.recorder();
    rmsnormForward(rec, { out, rstd, x: tx, weight: tw, eps: EPS });
    rmsnormBackward(rec, { dx, dweight, dout: tdout, x: tx, weight: tw, rstd });
    rec.submit();
    runs.push([
      await floats(gpu, out),
      await floats(gpu, rstd),
      await floats(gpu, dx),
      await floats(gpu, dweight),
    ]);
    for (const t of [out, rstd, dx, dweight]) gpu.release(t);
  }
  for (let i = 0; i < runs[0].length; i++) {
    assert.deepEqual(new Uint32Array(runs[1][i].buffer), new Uint32Array(runs[0][i].buffer), `output ${i}`);
  }
  for (const t of [tx, tw, tdout]) gpu.release(t);
});

Deno.test("rmsnorm forwards reading staged textures give the same bits as reading storage", async () => {
  const gpu = await testGpu();
  for (const [dtype, threadPerRow] of dtypesAndLayouts(gpu)) {
    for (const [n, c] of [[7, 64], [33, 768]]) {
      const { x, weight } = data(n, c, 40 + c);
      const branch = randomArray(n * c, 50 + c, 1);
      const tx = gpu.tensor([n, c], dtype, { data: x });
      const tb = gpu.tensor([n, c], dtype, { data: branch });
      const tw = gpu.tensor([c], dtype, { data: weight });
      const bits: number[][] = [];
      for (const texels of [false, true]) {
        const out = gpu.tensor([n, c], dtype);
        const rstd = gpu.tensor([n], "f32");
        const sum = gpu.tensor([n, c], dtype);
        const inPlace = gpu.tensor([n, c], dtype, { data: x });
        const common = { out, rstd, weight: tw, eps: EPS, texels, threadPerRow };
        const read = async (t: Tensor) => [...new Uint32Array((await gpu.readFloats(t)).buffer)];
        const run = async (record: (rec: Recorder) => void, ...extra: Tensor[]) => {
          const rec = gpu.recorder();
          record(rec);
          rec.submit();
          return (await Promise.all([out, rstd, ...extra].map(read))).flat();
        };
        bits.push([
          ...await run((rec) => rmsnormForward(rec, { ...common, x: tx })),
          ...await run(
            (rec) => residualRmsnormForward(rec, { ...common, residualOut: sum, x: tx, branch: tb }),
            sum,
          ),
          ...await run(
            (rec) => residualRmsnormForward(rec, { ...common, residualOut: inPlace, x: inPlace, branch: tb }),
            inPlace,
          ),
        ]);
        for (const t of [out, rstd, sum, inPlace]) gpu.release(t);
      }
      const what = `${dtype} [${n}, ${c}] threadPerRow=${threadPerRow}`;
      assert.deepEqual(bits[1], bits[0], `${what}: texel reads differ from storage reads`);
      for (const t of [tx, tb, tw]) gpu.release(t);
    }
  }
});

Deno.test("rmsnorm backward reading staged textures gives the same bits as reading storage", async () => {
  const gpu = await testGpu();
  for (const [dtype, threadPerRow] of dtypesAndLayouts(gpu)) {
    for (const [n, c] of [[7, 64], [130, 768]]) {
      const { x, weight, dout } = data(n, c, 60 + c);
      const tx = gpu.tensor([n, c], dtype, { data: x });
      const tw = gpu.tensor([c], dtype, { data: weight });
      const td = gpu.tensor([n, c], dtype, { data: dout });
      const rstd = gpu.tensor([n], "f32");
      const out = gpu.tensor([n, c], dtype);
      const rec = gpu.recorder();
      rmsnormForward(rec, { out, rstd, x: tx, weight: tw, eps: EPS });
      rec.submit();
      const bits: number[][] = [];
      for (const texels of [false, true]) {
        const dx = gpu.tensor([n, c], dtype, { data: dout }); // accumulated into by the second call
        const dweight = gpu.tensor([c], "f32");
        const rec = gpu.recorder();
        const args = { dx, dweight, dout: td, x: tx, weight: tw, rstd, texels, threadPerRow };
        rmsnormBackward(rec, args);
        rmsnormBackward(rec, { ...args, accumulate: true });
        rec.submit();
        const read = async (t: Tensor) => [...new Uint32Array((await gpu.readFloats(t)).buffer)];
        bits.push([...await read(dx), ...await read(dweight)]);
        for (const t of [dx, dweight]) gpu.release(t);
      }
      const what = `${dtype} [${n}, ${c}] threadPerRow=${threadPerRow}`;
      assert.deepEqual(bits[1], bits[0], `${what}: texel reads differ from storage reads`);
      for (const t of [tx, tw, td, rstd, out]) gpu.release(t);
    }
  }
});

Deno.test("the backward takes the warp layout where a thread per row would loop past the loop limit", async () => {
  const gpu = await testGpu();
  const [N, C] = [130, 64];
  const { x, weight, dout, tx, tw, tdout: td } = uploaded(gpu, N, C, 77);
  const out = gpu.tensor([N, C]);
  const rstd = gpu.tensor([N]);
  const dx = gpu.tensor([N, C]);
  const dweight = gpu.tensor([C]);
  const measured = gpu.loopLimit;
  try {
    let rec = gpu.recorder();
    rmsnormForward(rec, { out, rstd, x: tx, weight: tw, eps: EPS });
    rec.submit();
    // Its dweight sum loops over 130 / 16 rows in each lane: 9 trips, 1 to end, 5 in the lane tree.
    gpu.loopLimit = 8;
    const args = { dx, dweight, dout: td, x: tx, weight: tw, rstd };
    assert.throws(
      () => rmsnormBackward(gpu.recorder(), { ...args, threadPerRow: true }),
      /^GpuError: rmsnormBackward: one invocation would make 15 loop trips, past the 8 .*; use threadPerRow: false$/,
    );
    rec = gpu.recorder();
    rmsnormBackward(rec, args);
    rec.submit();
    const want = rmsnormBackwardRef(dout, x, weight, EPS);
    assertClose(await floats(gpu, dx), want.dx, F32_DX, "dx");
    assertClose(await floats(gpu, dweight), want.dweight, F32_DW, "dweight");
  } finally {
    gpu.loopLimit = measured;
    for (const t of [tx, tw, td, out, rstd, dx, dweight]) gpu.release(t);
  }
});

Deno.test("rmsnorm kernels refuse bad shapes, dtypes, eps and overlapping outputs with the argument named", async () => {
  const gpu = await testGpu();
  const x = gpu.tensor([4, 8], "f32", { label: "x" });
  const w = gpu.tensor([8], "f32", { label: "w" });
  const w7 = gpu.tensor([7], "f32", { label: "w7" });
  const out = gpu.tensor([4, 8], "f32", { label: "out" });
  const rstd = gpu.tensor([4], "f32", { label: "rstd" });
  const rstd5 = gpu.tensor([5], "f32", { label: "rstd5" });
  const u = gpu.tensor([4, 8], "u32", { label: "u" });
  const dw16 = gpu.tensor([8], "f16", { label: "dw16" });
  const rec = gpu.recorder();
  assert.throws(
    () => rmsnormForward(rec, { out, rstd, x, weight: w7, eps: EPS }),
    /rmsnormForward: weight "w7" has shape \[7\], expected \[8\]/,
  );
  assert.throws(
    () => rmsnormForward(rec, { out, rstd: rstd5, x, weight: w, eps: EPS }),
    /rmsnormForward: rstd "rstd5" has 5 elements, expected 4/,
  );
  assert.throws(
    () => rmsnormForward(rec, { out, rstd, x: u, weight: w, eps: EPS }),
    /rmsnormForward: x "u" is u32/,
  );
  assert.throws(() => rmsnormForward(rec, { out, rstd, x, weight: w, eps: -1 }), /rmsnormForward: eps -1/);
  assert.throws(
    () => rmsnormForward(rec, { out: x, rstd, x, weight: w, eps: EPS }),
    /rmsnormForward: out "x" overlaps x "x"/,
  );
  assert.throws(
    () => rmsnormBackward(rec, { dx: out, dweight: dw16, dout: x, x, weight: w, rstd }),
    /rmsnormBackward: dweight "dw16" is f16, expected f32/,
  );
  assert.throws(
    () => rmsnormBackward(rec, { dx: x, dweight: w, dout: out, x, weight: w7, rstd }),
    /rmsnormBackward: weight "w7"/,
  );
  assert.throws(
    () =>
      residualRmsnormForward(rec, {
        residualOut: out.view(0, [3, 8]),
        out,
        rstd,
        x,
        branch: x,
        weight: w,
        eps: EPS,
      }),
    /residualRmsnormForward: residualOut ".*" has shape \[3, 8\], expected \[4, 8\]/,
  );
  for (const t of [x, w, w7, out, rstd, rstd5, u, dw16]) gpu.release(t);
});
