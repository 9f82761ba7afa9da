import assert from "node:assert/strict";
import { addColumns, copyColumns } from "../kernels/columns.ts";
import { assertClose, randomArray, testGpu } from "./harness.ts";

/** Float64 reference: out[r, column + j] += scale · x[r, j]. */
function addColumnsRef(
  out: Float64Array,
  W: number,
  x: Float64Array,
  w: number,
  column: number,
  scale: number,
) {
  const result = Float64Array.from(out);
  for (let r = 0; r < x.length / w; r++) {
    for (let j = 0; j < w; j++) result[r * W + column + j] += scale * x[r * w + j];
  }
  return result;
}

/** Float64 reference: out[r, j] = scale · x[r, column + j]. */
function copyColumnsRef(x: Float64Array, W: number, w: number, column: number, scale: number) {
  const rows = x.length / W;
  return Float64Array.from(
    { length: rows * w },
    (_, i) => scale * x[Math.floor(i / w) * W + column + (i % w)],
  );
}

// Rows and widths that are not multiples of the 256-thread workgroup; blocks at the start, middle and end.
const SHAPES = [
  { rows: 7, W: 40, w: 8, column: 0 },
  { rows: 13, W: 40, w: 8, column: 24 },
  { rows: 5, W: 33, w: 11, column: 22 },
  { rows: 300, W: 12, w: 12, column: 0 },
];

Deno.test("addColumns adds a scaled block of columns, f32 and f16, matching the float64 reference", async () => {
  const gpu = await testGpu();
  for (const dtype of ["f32", "f16"] as const) {
    for (const { rows, W, w, column } of SHAPES) {
      const out = randomArray(rows * W, 1 + column);
      const x = randomArray(rows * w, 2 + W);
      const outT = gpu.tensor([rows, W], dtype, { data: Float32Array.from(out) });
      const xT = gpu.tensor([rows, w], "f32", { data: Float32Array.from(x) });
      const rec = gpu.recorder();
      addColumns(rec, { out: outT, x: xT, column, scale: 1.75 });
      rec.submit();
      const got = await gpu.readFloats(outT);
      const want = addColumnsRef(Float64Array.from(Float32Array.from(out)), W, x, w, column, 1.75);
      // f32: rounding of one multiply-add; f16: the stored result's 11 bits.
      const tol = dtype === "f32" ? { atol: 1e-6, rtol: 1e-6 } : { atol: 2e-3, rtol: 2e-3 };
      assertClose(got, want, tol, `${dtype} addColumns ${rows}x${W} [${column}, ${column + w})`);
      gpu.release(outT);
      gpu.release(xT);
    }
  }
});

Deno.test("copyColumns copies a scaled block of columns, f32 and f16, matching the float64 reference", async () => {
  const gpu = await testGpu();
  for (const dtype of ["f32", "f16"] as const) {
    for (const { rows, W, w, column } of SHAPES) {
      const x = randomArray(rows * W, 3 + column);
      const xT = gpu.tensor([rows, W], dtype, { data: Float32Array.from(x) });
      const outT = gpu.tensor([rows, w], "f32");
      const rec = gpu.recorder();
      copyColumns(rec, { out: outT, x: xT, column, scale: -0.5 });
      rec.submit();
      const stored = await gpu.readFloats(xT); // what the kernel read (f16-rounded for f16)
      assertClose(await gpu.readFloats(outT), copyColumnsRef(Float64Array.from(stored), W, w, column, -0.5), {
        atol: 1e-7,
        rtol: 1e-7,
      }, `${dtype} copyColumns ${rows}x${W} [${column}, ${column + w})`);
      gpu.release(outT);
      gpu.release(xT);
    }
  }
});

Deno.test("the column kernels refuse a block outside the matrix and mismatched rows", async () => {
  const gpu = await testGpu();
  const wide = gpu.tensor([4, 10], "f32");
  const narrow = gpu.tensor([4, 4], "f32");
  const rec = gpu.recorder();
  assert.throws(
    () => addColumns(rec, { out: wide, x: narrow, column: 7, scale: 1 }),
    /columns \[7, 11\) lie outside/,
  );
  const short = gpu.tensor([3, 4], "f32");
  assert.throws(
    () => copyColumns(rec, { out: short, x: wide, column: 0, scale: 1 }),
    /has 4 rows but .* has 3/,
  );
  for (const t of [wide, narrow, short]) gpu.release(t);
});
