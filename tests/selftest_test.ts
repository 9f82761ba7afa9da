import assert from "node:assert/strict";
import { expectLoopTrips, judge, measureLoopLimit, runSelfTest } from "../kernels/selftest.ts";
import { testGpu } from "./harness.ts";

Deno.test("the f32 and f16 self-test kernels agree with the CPU", async () => {
  const gpu = await testGpu();
  const f32 = await runSelfTest(gpu, "f32");
  assert.ok(f32.ok, f32.reason);
  assert.ok(f32.maxError <= 1e-6);
  const f16 = await runSelfTest(gpu, "f16");
  assert.ok(f16.ok, f16.reason);
  assert.ok(f16.maxError > 0, "f16 really rounds: its error is not zero");
});

Deno.test("all-zero f16 output is called out as the known runtime bug", () => {
  const verdict = judge("f16", [0, 0, 0], [1, -2, 0.5]);
  assert.equal(verdict.ok, false);
  assert.match(verdict.reason, /only zeros/);
});

Deno.test("wrong or NaN output fails the self-test with the size of the error", () => {
  assert.match(judge("f32", [1, 2, 3.1], [1, 2, 3]).reason, /differ from the CPU by 2\.50e-2/);
  assert.equal(judge("f32", [1, NaN], [1, 2]).ok, false);
  assert.equal(judge("f16", [1.0005, 2], [1, 2]).ok, true);
});

Deno.test("the loop limit probe finds llvmpipe's cap, or none on other adapters", async () => {
  const gpu = await testGpu();
  const limit = await measureLoopLimit(gpu);
  assert.equal(limit, gpu.loopLimit);
  if (/llvmpipe/.test(gpu.info.name)) assert.equal(limit, 65535);
});

Deno.test("expectLoopTrips allows the limit's iterations plus the check that ends the loop, not one more", async () => {
  const gpu = await testGpu();
  const measured = gpu.loopLimit;
  try {
    gpu.loopLimit = 100;
    expectLoopTrips(gpu, "k", 101, "fix it");
    assert.throws(
      () => expectLoopTrips(gpu, "k", 102, "fix it"),
      /^GpuError: k: one invocation would make 102 loop trips, past the 100 this adapter runs .*; fix it$/,
    );
  } finally {
    gpu.loopLimit = measured;
  }
});
