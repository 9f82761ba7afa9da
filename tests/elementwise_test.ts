import assert from "node:assert/strict";
import { add, cast, fill, scale } from "../kernels/elementwise.ts";
import { assertClose, randomArray, testGpu } from "./harness.ts";
import { addRef, scaleRef } from "./reference/elementwise.ts";

// Lengths: 1, a non-multiple of the 256-wide workgroup, and more than one workgroup.
const LENGTHS = [1, 7, 33 * 65, 70_001];
const F32 = { atol: 1e-6, rtol: 1e-6 }; // one f32 rounding of the result
const F16 = { atol: 1e-3, rtol: 1e-3 }; // f16 has 11 significant bits: 2^-11 ≈ 4.9e-4 relative

Deno.test("add matches the reference, out of place and in place, f32 and f16", async () => {
  const gpu = await testGpu();
  for (const n of LENGTHS) {
    const a = randomArray(n, 1, 3);
    const b = randomArray(n, 2, 3);
    const ta = gpu.tensor([n], "f32", { data: a });
    const tb = gpu.tensor([n], "f32", { data: b });
    const out = gpu.tensor([n], "f32");
    const rec = gpu.recorder();
    add(rec, { out, a: ta, b: tb });
    add(rec, { out: ta, a: ta, b: tb }); // ta += tb
    rec.submit();
    const want = addRef(a, b);
    assertClose(await gpu.read(out), want, F32, `add n=${n}`);
    assertClose(await gpu.read(ta), want, F32, `add in place n=${n}`);

    const h = gpu.tensor([n], "f16", { data: b });
    const hout = gpu.tensor([n], "f16");
    const rec16 = gpu.recorder();
    add(rec16, { out: hout, a: h, b: h });
    rec16.submit();
    assertClose(
      await gpu.read(hout),
      scaleRef(Float64Array.from(b, Math.f16round), 2),
      F16,
      `add f16 n=${n}`,
    );
    for (const t of [ta, tb, out, h, hout]) gpu.release(t);
  }
});

Deno.test("scale and fill match the reference", async () => {
  const gpu = await testGpu();
  for (const n of LENGTHS) {
    const x = randomArray(n, 3, 10);
    const tx = gpu.tensor([n], "f32", { data: x });
    const out = gpu.tensor([n], "f32");
    const filled = gpu.tensor([n], "u32");
    const rec = gpu.recorder();
    scale(rec, { out, x: tx, factor: -0.37 });
    scale(rec, { out: tx, x: tx, factor: 2 });
    fill(rec, { out: filled, value: 7 });
    rec.submit();
    assertClose(await gpu.read(out), scaleRef(x, -0.37), F32, `scale n=${n}`);
    assertClose(await gpu.read(tx), scaleRef(x, 2), F32, `scale in place n=${n}`);
    assert.ok((await gpu.read(filled)).every((v) => v === 7));
    for (const t of [tx, out, filled]) gpu.release(t);
  }
});

Deno.test("cast rounds f32 to the nearest f16 and back exactly", async () => {
  const gpu = await testGpu();
  for (const n of LENGTHS) {
    const x = randomArray(n, 4, 100);
    const tx = gpu.tensor([n], "f32", { data: x });
    const h = gpu.tensor([n], "f16");
    const back = gpu.tensor([n], "f32");
    const rec = gpu.recorder();
    cast(rec, { out: h, x: tx });
    cast(rec, { out: back, x: h });
    rec.submit();
    const want = Float64Array.from(x, (v) => Math.f16round(Math.fround(v)));
    assertClose(await gpu.read(back), want, { atol: 0, rtol: 0 }, `cast n=${n}`);
    for (const t of [tx, h, back]) gpu.release(t);
  }
});

Deno.test("elementwise kernels refuse mismatched lengths and dtypes with the argument named", async () => {
  const gpu = await testGpu();
  const a = gpu.tensor([4]);
  const b = gpu.tensor([5]);
  const u = gpu.tensor([4], "u32");
  assert.throws(() => add(gpu.recorder(), { out: a, a, b }), /add: b ".*" has 5 elements, expected 4/);
  assert.throws(() => cast(gpu.recorder(), { out: a, x: u }), /cast: x ".*" is u32, expected f32 or f16/);
  for (const t of [a, b, u]) gpu.release(t);
});
