import assert from "node:assert/strict";
import type { Gpu } from "../kernels/device.ts";
import { cachedAttention } from "../kernels/cached_attention.ts";
import { kvCacheWrite, selectPosition } from "../kernels/kv_cache.ts";
import { TexelCache } from "../kernels/texel_cache.ts";
import { assertClose, randomArray, testGpu } from "./harness.ts";
import { attentionRef } from "./reference/attention.ts";

// (B, NH, NKV, HS, Tmax): plain heads, grouped-query heads, odd Tmax.
const SHAPES = [[1, 2, 2, 4, 5], [2, 4, 2, 8, 33], [3, 4, 1, 16, 70]] as const;

Deno.test("decoding token by token through the cache equals causal attention over the whole sequence", async () => {
  const gpu = await testGpu();
  // Storage reads and texel reads (the software-adapter kernel), whichever this adapter defaults to.
  for (const texels of [false, true]) {
    for (const shape of SHAPES) await decodeAll(gpu, shape, texels);
  }
});

Deno.test("the storage kernel split into chunks of the cache decodes as one workgroup per head does", async () => {
  const gpu = await testGpu();
  // One position a chunk, chunks that do not divide Tmax, and a chunk longer than a workgroup.
  for (const chunk of [1, 8, 65]) {
    for (const shape of SHAPES) await decodeAll(gpu, shape, false, { chunk });
  }
});

Deno.test("decoding with kept texel copies of the caches matches causal attention, copying only at the first step", async () => {
  const gpu = await testGpu();
  for (const shape of SHAPES) await decodeAll(gpu, shape, true, { mirrored: true });
});

/**
 * Decodes every position of random keys and values one step at a time and checks the
 * outputs against causal attention. With `mirrored`, a TexelCache keeps texel copies of
 * the caches and the output, written by the kernels that produce them: only the first
 * step copies (the caches, into their new kept copies).
 */
async function decodeAll(
  gpu: Gpu,
  [B, NH, NKV, HS, Tmax]: (typeof SHAPES)[number],
  texels: boolean,
  options: { mirrored?: boolean; chunk?: number } = {},
) {
  {
    const row = (NH + 2 * NKV) * HS;
    const T = Tmax - 1; // decode all but the last slot
    const all = randomArray(B * T * row, B + HS);
    const want = attentionRef(all, { B, T, NH, NKV, HS }, 1 / Math.sqrt(HS)).out; // (B, T, NH·HS)
    const kCache = gpu.tensor([B, Tmax, NKV * HS], "f32", { label: "k cache" });
    const vCache = gpu.tensor([B, Tmax, NKV * HS], "f32", { label: "v cache" });
    const qkv = gpu.tensor([B, 1, row], "f32", { label: "token qkv" });
    const out = gpu.tensor([B, NH * HS], "f32", { label: "token out" });
    const position = gpu.tensor([1], "u32", { label: "position" });
    const texelCache = options.mirrored
      ? new TexelCache(gpu, [], { mirrored: [kCache, vCache, out] })
      : undefined;
    const got = new Float64Array(want.length);
    for (let t = 0; t < T; t++) {
      const token = new Float64Array(B * row);
      for (let b = 0; b < B; b++) token.set(all.subarray((b * T + t) * row, (b * T + t + 1) * row), b * row);
      gpu.write(qkv, token);
      gpu.write(position, [t]);
      const copies = gpu.stats.copies;
      const rec = gpu.recorder({ texelCache });
      kvCacheWrite(rec, { kCache, vCache, qkv, position, nHead: NH, nKvHead: NKV });
      cachedAttention(rec, {
        out,
        qkv,
        kCache,
        vCache,
        position,
        nHead: NH,
        nKvHead: NKV,
        texels,
        chunk: options.chunk,
      });
      rec.submit();
      if (texelCache) assert.equal(gpu.stats.copies - copies, t === 0 ? 2 : 0, `copies at step ${t}`);
      const o = await gpu.readFloats(out);
      for (let b = 0; b < B; b++) got.set(o.subarray(b * NH * HS, (b + 1) * NH * HS), (b * T + t) * NH * HS);
    }
    // f32 sums over at most 70 keys: 1e-5 + 1e-5·|ref|.
    assertClose(
      got,
      want,
      { atol: 1e-5, rtol: 1e-5 },
      `B${B} NH${NH} NKV${NKV} HS${HS} T${T} texels ${texels}${
        texelCache ? " mirrored" : ""
      } chunk ${options.chunk}`,
    );
    texelCache?.release();
    for (const x of [kCache, vCache, qkv, out, position]) gpu.release(x);
  }
}

Deno.test("a prefill writes every position's keys and values into the cache at once", async () => {
  const gpu = await testGpu();
  const [B, NH, NKV, HS, T] = [2, 2, 1, 4, 6];
  const row = (NH + 2 * NKV) * HS;
  const all = randomArray(B * T * row, 3);
  const qkv = gpu.tensor([B, T, row], "f32", { data: all });
  const kCache = gpu.tensor([B, 8, NKV * HS], "f32");
  const vCache = gpu.tensor([B, 8, NKV * HS], "f32");
  const rec = gpu.recorder();
  kvCacheWrite(rec, { kCache, vCache, qkv, position: 0, nHead: NH, nKvHead: NKV });
  rec.submit();
  const k = await gpu.readFloats(kCache);
  const v = await gpu.readFloats(vCache);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let c = 0; c < HS; c++) {
        const source = (b * T + t) * row + NH * HS + c;
        assert.equal(k[(b * 8 + t) * HS + c], Math.fround(all[source]));
        assert.equal(v[(b * 8 + t) * HS + c], Math.fround(all[source + HS]));
      }
    }
  }
  assert.throws(
    () => kvCacheWrite(gpu.recorder(), { kCache, vCache, qkv, position: 3, nHead: NH, nKvHead: NKV }),
    /does not fit/,
  );
  for (const x of [qkv, kCache, vCache]) gpu.release(x);
});

Deno.test("f16 caches decode within f16 precision, by storage and by texel reads", async () => {
  const gpu = await testGpu();
  if (!gpu.features.f16) return;
  for (const texels of [false, true]) await decodeF16(gpu, texels);
  await decodeF16(gpu, false, 4); // three chunks, the combine writing f16
});

async function decodeF16(gpu: Gpu, texels: boolean, chunk?: number) {
  const [B, NH, NKV, HS, Tmax] = [2, 4, 2, 8, 9];
  const row = (NH + 2 * NKV) * HS;
  const T = Tmax;
  const all = Float64Array.from(randomArray(B * T * row, 5), Math.f16round);
  const want = attentionRef(all, { B, T, NH, NKV, HS }, 1 / Math.sqrt(HS)).out;
  const qkvAll = gpu.tensor([B, T, row], "f16", { data: all });
  const kCache = gpu.tensor([B, Tmax, NKV * HS], "f16");
  const vCache = gpu.tensor([B, Tmax, NKV * HS], "f16");
  const qkv = gpu.tensor([B, 1, row], "f16");
  const out = gpu.tensor([B, NH * HS], "f16");
  const position = gpu.tensor([1], "u32", { data: [T - 1] });
  const last = new Float64Array(B * row);
  for (let b = 0; b < B; b++) last.set(all.subarray((b * T + T - 1) * row, (b * T + T) * row), b * row);
  gpu.write(qkv, last);
  const rec = gpu.recorder();
  kvCacheWrite(rec, { kCache, vCache, qkv: qkvAll, position: 0, nHead: NH, nKvHead: NKV });
  cachedAttention(rec, { out, qkv, kCache, vCache, position, nHead: NH, nKvHead: NKV, texels, chunk });
  rec.submit();
  const got = await gpu.readFloats(out);
  const wantLast = new Float64Array(B * NH * HS);
  for (let b = 0; b < B; b++) {
    wantLast.set(want.subarray((b * T + T - 1) * NH * HS, (b * T + T) * NH * HS), b * NH * HS);
  }
  assertClose(got, wantLast, { atol: 2e-3, rtol: 2e-3 }, `f16 decode, texels ${texels} chunk ${chunk}`); // 2^-11 per f16 rounding
  for (const x of [qkvAll, kCache, vCache, qkv, out, position]) gpu.release(x);
}

Deno.test("cachedAttention refuses texels for a head size not a multiple of 4, and a chunk of no positions", async () => {
  const gpu = await testGpu();
  const [B, NH, HS, Tmax] = [1, 2, 6, 4];
  const kCache = gpu.tensor([B, Tmax, NH * HS]);
  const vCache = gpu.tensor([B, Tmax, NH * HS]);
  const qkv = gpu.tensor([B, 1, 3 * NH * HS]);
  const out = gpu.tensor([B, NH * HS]);
  const position = gpu.tensor([1], "u32");
  const rec = gpu.recorder();
  const args = { out, qkv, kCache, vCache, position, nHead: NH, nKvHead: NH };
  assert.throws(
    () => cachedAttention(rec, { ...args, texels: true }),
    /^GpuError: cachedAttention: texel reads need a head size that is a multiple of 4 \(got 6\)/,
  );
  cachedAttention(rec, args); // storage reads
  rec.finish();
  assert.throws(
    () => cachedAttention(gpu.recorder(), { ...args, chunk: 0 }),
    /^GpuError: cachedAttention: chunk must be a positive whole number of positions, got 0$/,
  );
  for (const x of [kCache, vCache, qkv, out, position]) gpu.release(x);
});

Deno.test("cachedAttention refuses chunks past workgroup memory, the dispatch limit or llvmpipe's loops", async () => {
  const gpu = await testGpu();
  const [HS, Tmax] = [8, 70000];
  const kCache = gpu.tensor([1, Tmax, HS]);
  const vCache = gpu.tensor([1, Tmax, HS]);
  const qkv = gpu.tensor([1, 1, 3 * HS]);
  const out = gpu.tensor([1, HS]);
  const position = gpu.tensor([1], "u32");
  const args = { out, qkv, kCache, vCache, position, nHead: 1, nKvHead: 1, texels: false };
  assert.throws(
    () => cachedAttention(gpu.recorder(), { ...args, chunk: Tmax }),
    /a chunk of 70000 positions needs 280288 bytes of workgroup memory, past the adapter's \d+; use a smaller chunk$/,
  );
  if (Tmax > gpu.limits.maxComputeWorkgroupsPerDimension) {
    assert.throws(
      () => cachedAttention(gpu.recorder(), { ...args, chunk: 1 }),
      /70000 chunks of 1 positions exceed the \d+ workgroups a dispatch allows; use a larger chunk$/,
    );
  }
  // Combining makes 3 loop trips per chunk; llvmpipe stops a shader's loops past 65535. (A chunk's own loops
  // stay short of that wherever its scores fit workgroup memory.)
  if (Number.isFinite(gpu.loopLimit)) {
    assert.throws(
      () => cachedAttention(gpu.recorder(), { ...args, chunk: 2 }),
      /loop trips.*use a larger chunk$/,
    );
  }
  const rec = gpu.recorder();
  cachedAttention(rec, args); // 274 chunks of 256
  rec.finish();
  for (const x of [kCache, vCache, qkv, out, position]) gpu.release(x);
});

Deno.test("a cache longer than workgroup memory holds decodes at its first, middle and last positions", async () => {
  const gpu = await testGpu();
  // 9000 positions: 36 KB of scores, past the 16 KiB a workgroup is sure to have (and lavapipe's 32 KiB).
  const [B, NH, NKV, HS, Tmax] = [2, 4, 2, 8, 9000];
  const width = NKV * HS;
  const keys = randomArray(B * Tmax * width, 11, 2);
  const values = randomArray(B * Tmax * width, 12);
  const q = randomArray(B * NH * HS, 13, 2);
  const kCache = gpu.tensor([B, Tmax, width], "f32", { data: keys });
  const vCache = gpu.tensor([B, Tmax, width], "f32", { data: values });
  const qkv = gpu.tensor([B, 1, (NH + 2 * NKV) * HS], "f32");
  const token = new Float64Array(qkv.length);
  for (let b = 0; b < B; b++) token.set(q.subarray(b * NH * HS, (b + 1) * NH * HS), b * (NH + 2 * NKV) * HS);
  gpu.write(qkv, token);
  const out = gpu.tensor([B, NH * HS], "f32");
  const position = gpu.tensor([1], "u32");
  const texelBytes = (Tmax + 64) * 4;
  const args = { out, qkv, kCache, vCache, position, nHead: NH, nKvHead: NKV };
  for (const at of [0, 4500, Tmax - 1]) {
    gpu.write(position, [at]);
    const rec = gpu.recorder();
    cachedAttention(rec, args);
    rec.submit();
    const want = new Float64Array(B * NH * HS);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < NH; h++) {
        const kv = Math.floor(h / (NH / NKV)) * HS;
        const row = (t: number) => (b * Tmax + t) * width + kv;
        const scores = Array.from({ length: at + 1 }, (_, t) => {
          let dot = 0;
          for (let d = 0; d < HS; d++) dot += q[(b * NH + h) * HS + d] * keys[row(t) + d];
          return dot / Math.sqrt(HS);
        });
        const top = Math.max(...scores);
        const weights = scores.map((s) => Math.exp(s - top));
        const total = weights.reduce((a, w) => a + w, 0);
        for (let d = 0; d < HS; d++) {
          want[(b * NH + h) * HS + d] = weights.reduce((a, w, t) => a + w * values[row(t) + d], 0) / total;
        }
      }
    }
    assertClose(await gpu.readFloats(out), want, { atol: 1e-5, rtol: 1e-4 }, `position ${at} of ${Tmax}`);
  }
  if (texelBytes > gpu.limits.maxComputeWorkgroupStorageSize) {
    assert.throws(
      () => cachedAttention(gpu.recorder(), { ...args, texels: true }),
      /texel reads need 36256 bytes of workgroup memory for a cache of 9000 positions \(the adapter has \d+\); leave texels unset$/,
    );
  }
  for (const x of [kCache, vCache, qkv, out, position]) gpu.release(x);
});

Deno.test("selectPosition picks one position's row of every sequence", async () => {
  const gpu = await testGpu();
  const x = gpu.tensor([2, 3, 4], "f32", { data: Array.from({ length: 24 }, (_, i) => i) });
  const out = gpu.tensor([2, 4], "f32");
  const position = gpu.tensor([1], "u32", { data: [1] });
  const rec = gpu.recorder();
  selectPosition(rec, { out, x, position });
  rec.submit();
  assert.deepEqual([...await gpu.readFloats(out)], [4, 5, 6, 7, 16, 17, 18, 19]);
  for (const t of [x, out, position]) gpu.release(t);
});
