import assert from "node:assert/strict";
import { requestGpu } from "../kernels/device.ts";
import { GpuError, GpuOutOfMemoryError, ShaderCompileError } from "../kernels/errors.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "../kernels/recorder.ts";
import { Tensor } from "../kernels/tensor.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { testGpu } from "./harness.ts";

Deno.test("the device gets the adapter's real limits and the features it offers", async () => {
  const gpu = await testGpu();
  const adapterLimits = gpu.adapter.limits;
  assert.equal(gpu.limits.maxStorageBufferBindingSize, adapterLimits.maxStorageBufferBindingSize);
  assert.equal(gpu.limits.maxBufferSize, adapterLimits.maxBufferSize);
  assert.equal(gpu.limits.maxComputeWorkgroupStorageSize, adapterLimits.maxComputeWorkgroupStorageSize);
  assert.equal(gpu.limits.maxComputeInvocationsPerWorkgroup, adapterLimits.maxComputeInvocationsPerWorkgroup);
  // CI installs an adapter with both; the point of the suite is to exercise them.
  assert.ok(gpu.info.features.includes("shader-f16"), "adapter offers shader-f16");
  assert.equal(gpu.features.f16, true, `f16 on (problem: ${gpu.f16Problem})`);
  assert.equal(gpu.features.timestamps, gpu.info.features.includes("timestamp-query"));
  assert.ok(gpu.info.name.length > 0);
  assert.ok(gpu.info.backend.length > 0);
});

Deno.test("tensors round-trip in every dtype, including odd f16 lengths", async () => {
  const gpu = await testGpu();
  const cases: [Tensor["dtype"], number[]][] = [
    ["f32", [1.5, -2.25, Math.fround(3e-8), Math.fround(1e30), 0]],
    ["f16", [1.5, -2.25, 65504, 2 ** -14, 7]],
    ["u32", [0, 1, 4294967295, 65536, 7]],
    ["i32", [-2147483648, -1, 0, 2147483647, 5]],
  ];
  for (const [dtype, values] of cases) {
    const t = gpu.tensor([values.length], dtype, { label: `roundtrip ${dtype}`, data: values });
    assert.deepEqual([...await gpu.read(t)], values, dtype);
    gpu.release(t);
  }
  const rounded = gpu.tensor([3], "f16", { data: [0.1, 1 / 3, 1000.7] });
  assert.deepEqual([...await gpu.read(rounded)], [0.1, 1 / 3, 1000.7].map(Math.f16round));
  gpu.release(rounded);
});

Deno.test("views and reshapes address parts of one flat buffer", async () => {
  const gpu = await testGpu();
  const flat = gpu.tensor([4, 8], "f32", { label: "flat", data: Array.from({ length: 32 }, (_, i) => i) });
  const row2 = flat.view(16, [8], "row 2");
  assert.equal(row2.byteOffset, 64);
  assert.deepEqual([...await gpu.read(row2)], [16, 17, 18, 19, 20, 21, 22, 23]);
  gpu.write(row2, [0, 0, 0, 0, 0, 0, 0, 0]);
  const all = await gpu.read(flat.reshape([32]));
  assert.equal(all[15], 15);
  assert.equal(all[16], 0);
  assert.equal(all[24], 24);
  assert.throws(() => flat.view(30, [4]), /does not fit/);
  assert.throws(() => flat.reshape([5, 7]), /element counts differ/);
  assert.throws(() => gpu.write(flat, [1, 2, 3]), /Cannot write 3 values/);
  gpu.release(flat);
});

Deno.test("buffers, pipelines and bind groups carry labels", async () => {
  const gpu = await testGpu();
  const t = gpu.tensor([4], "f32", { label: "labelled tensor" });
  assert.equal(t.buffer.label, "labelled tensor");
  const pipeline = gpu.pipelines.get("labelled kernel", fillKernel(4, 1));
  assert.equal(pipeline.label, "labelled kernel");
  assert.equal(gpu.bindGroups.get(pipeline, [t]).label, "labelled kernel:bind");
  gpu.release(t);
});

Deno.test("pipelines are cached by WGSL text and bind groups by bound ranges", async () => {
  const gpu = await testGpu();
  const out = gpu.tensor([24], "f32", { label: "cache out" });
  const a = gpu.pipelines.get("fill", fillKernel(8, 2));
  assert.equal(gpu.pipelines.get("fill again", fillKernel(8, 2)), a);
  assert.notEqual(gpu.pipelines.get("fill", fillKernel(8, 3)), a);

  const run = () => {
    const rec = gpu.recorder();
    rec.dispatch(a, [out], 1);
    rec.dispatch(a, [out.view(16, [8])], 1); // 64 bytes in: aligned on every device
    rec.submit();
  };
  run();
  await gpu.sync();
  const before = { ...gpu.stats };
  for (let i = 0; i < 5; i++) run();
  await gpu.sync();
  assert.equal(gpu.stats.bindGroups, before.bindGroups, "no bind group created by replays");
  assert.equal(gpu.stats.pipelines, before.pipelines, "no pipeline created by replays");
  assert.equal(gpu.stats.buffers, before.buffers, "no buffer created by replays");
  assert.equal(gpu.stats.textures, before.textures, "no texture created by replays");
  assert.equal(gpu.stats.submits, before.submits + 5);
  assert.equal(gpu.stats.dispatches, before.dispatches + 10);
  const got = [...await gpu.read(out)];
  assert.deepEqual(got, [...Array(8).fill(2), ...Array(8).fill(0), ...Array(8).fill(2)]);
  gpu.release(out);
});

Deno.test("a shader compile error names line:col and shows the WGSL line", async () => {
  const gpu = await requestGpu();
  const code = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n" +
    "@compute @workgroup_size(1) fn main() {\n" +
    "  let bad: f32 = 1u;\n" +
    "  x[0] = bad;\n}\n";
  gpu.pipelines.get("broken kernel", code);
  await assert.rejects(gpu.check(), (error: unknown) => {
    assert.ok(error instanceof ShaderCompileError);
    assert.match(error.message, /^Shader "broken kernel" failed to compile at 3:\d+: /);
    assert.ok(!error.message.includes("\n"), "one line");
    assert.ok(error.detail.includes("3 |   let bad: f32 = 1u;"), error.detail);
    assert.match(error.detail, /\^/);
    return true;
  });
  gpu.destroy();
});

Deno.test("validation errors surface at the next check as one-line GpuErrors", async () => {
  const gpu = await requestGpu();
  const small = gpu.tensor([4], "f32", { label: "small" });
  const pipeline = gpu.pipelines.get("fill 64", fillKernel(64, 1));
  const rec = gpu.recorder();
  // A 16-byte binding where the shader's array is runtime-sized is fine; an
  // unaligned copy is not, and WebGPU reports it asynchronously.
  rec.dispatch(pipeline, [small], 1);
  rec.encoder.copyBufferToBuffer(small.buffer, 2, small.buffer, 8, 4);
  rec.submit();
  await assert.rejects(gpu.sync(), (error: unknown) => {
    assert.ok(error instanceof GpuError);
    assert.match(error.message, /^GPU error: /);
    assert.ok(!error.message.includes("\n"));
    return true;
  });
  gpu.destroy();
});

Deno.test("a buffer beyond the device's limit fails with the bytes and what to lower", async () => {
  const gpu = await testGpu();
  const tooMany = Math.floor(gpu.limits.maxBufferSize / 4) + 1024;
  assert.throws(() => gpu.tensor([tooMany], "f32", { label: "activations" }), (error: unknown) => {
    assert.ok(error instanceof GpuOutOfMemoryError);
    assert.match(error.message, /Buffer "activations" needs [\d.]+ GiB but this device allows [\d.]+ GiB/);
    assert.match(error.message, /lower batch_size, block_size or n_embd/);
    return true;
  });
  const big = gpu.tensor([4], "f32", { label: "huge binding" });
  const fake = { buffer: big.buffer, offset: 0, size: gpu.limits.maxStorageBufferBindingSize + 4 };
  assert.throws(
    () => gpu.bindGroups.get(gpu.pipelines.get("fill", fillKernel(4, 1)), [fake]),
    /binds at most/,
  );
  gpu.release(big);
});

Deno.test("a lost device is reported, with listeners told, instead of hanging", async () => {
  const gpu = await requestGpu();
  const t = gpu.tensor([4], "f32", { label: "before loss", data: [1, 2, 3, 4] });
  let told = "";
  gpu.onLost((error) => told = error.message);
  gpu.device.destroy(); // as a driver reset would, without going through gpu.destroy()
  await gpu.device.lost;
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.ok(gpu.isLost);
  assert.match(told, /The GPU device was lost/);
  await assert.rejects(gpu.read(t), /The GPU device was lost/);
});

Deno.test("grid() covers more workgroups than one dimension allows", async () => {
  const gpu = await testGpu();
  const limit = gpu.limits.maxComputeWorkgroupsPerDimension;
  const count = limit + 1001;
  const [x, y] = grid(gpu, count);
  assert.ok(x <= limit && y > 1 && x * y >= count);
  assert.deepEqual(grid(gpu, 10), [10, 1]);
  const code = `@group(0) @binding(0) var<storage, read_write> hits: array<u32>;
@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let g = ${WGSL_LINEAR_WORKGROUP};
  if (g >= ${count}u) { return; }
  hits[g] = g + 1u;
}`;
  const hits = gpu.tensor([count], "u32", { label: "hits" });
  const rec = gpu.recorder();
  rec.dispatch(gpu.pipelines.get("grid test", code), [hits], [x, y]);
  assert.throws(() => rec.dispatch(gpu.pipelines.get("grid test", code), [hits], limit + 1), /use grid\(\)/);
  rec.submit();
  const got = await gpu.read(hits);
  for (let i = 0; i < count; i++) {
    if (got[i] !== i + 1) assert.fail(`workgroup ${i} did not run (got ${got[i]})`);
  }
  gpu.release(hits);
});

Deno.test("GpuTimer times copies and clears too, labelled by their tensors", async () => {
  const gpu = await testGpu();
  if (!gpu.features.timestamps) return;
  const a = gpu.tensor([1 << 16], "f32", { label: "source", data: new Float32Array(1 << 16).fill(3) });
  const b = gpu.tensor([1 << 16], "f32", { label: "target" });
  const timer = new GpuTimer(gpu, 4);
  const rec = gpu.recorder({ timer });
  rec.copy(b, a);
  rec.dispatch(gpu.pipelines.get("fill", fillKernel(64, 5)), [b], 1);
  rec.clear(a);
  rec.submit();
  const times = await timer.read();
  assert.deepEqual(times.map((t) => t.label), ["copy source", "fill", "clear source"]);
  for (const t of times) assert.ok(t.ms >= 0 && t.ms < 10_000, `${t.label}: ${t.ms} ms`);
  const got = await gpu.readFloats(b);
  assert.deepEqual([got[0], got[64]], [5, 3], "the copy ran before the fill, which wrote the first 64");
  assert.equal((await gpu.readFloats(a))[0], 0, "cleared");
  gpu.release(a);
  gpu.release(b);
});

Deno.test("GpuTimer times each dispatch by label where timestamps exist", async () => {
  const gpu = await testGpu();
  if (!gpu.features.timestamps) {
    assert.match(GpuTimer.unavailableReason(gpu), /not available/);
    assert.throws(() => new GpuTimer(gpu), GpuError);
    return;
  }
  const out = gpu.tensor([64], "f32", { label: "timed" });
  const timer = new GpuTimer(gpu, 4);
  const rec = gpu.recorder({ timer });
  rec.dispatch(gpu.pipelines.get("first", fillKernel(64, 1)), [out], 1);
  rec.dispatch(gpu.pipelines.get("second", fillKernel(64, 2)), [out], 1);
  rec.submit();
  const times = await timer.read();
  assert.deepEqual(times.map((t) => t.label), ["first", "second"]);
  for (const t of times) assert.ok(t.ms >= 0 && t.ms < 10_000, `${t.label}: ${t.ms} ms`);
  assert.deepEqual([...await gpu.read(out)].slice(0, 2), [2, 2]);
  gpu.release(out);
});

Deno.test("copy and clear move whole tensors inside one recording", async () => {
  const gpu = await testGpu();
  const a = gpu.tensor([6], "f32", { data: [1, 2, 3, 4, 5, 6] });
  const b = gpu.tensor([6], "f32");
  const rec = gpu.recorder();
  rec.copy(b, a);
  rec.clear(a);
  rec.submit();
  assert.deepEqual([...await gpu.read(b)], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual([...await gpu.read(a)], [0, 0, 0, 0, 0, 0]);
  assert.throws(() => gpu.recorder().copy(gpu.tensor([2]), a), /sizes differ/);
  gpu.release(a);
  gpu.release(b);
});

/** A kernel writing `value` into the first `n` elements of binding 0. */
function fillKernel(n: number, value: number): string {
  return `@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= min(${n}u, arrayLength(&out))) { return; }
  out[gid.x] = ${value.toFixed(1)};
}`;
}
