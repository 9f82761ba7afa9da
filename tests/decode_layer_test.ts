import assert from "node:assert/strict";
import type { Gpu } from "../kernels/device.ts";
import { decodeLayer, decodeLayerFits, decodeLayerTrips } from "../kernels/decode_layer.ts";
import { TexelCache } from "../kernels/texel_cache.ts";
import { headSize, resolveModelConfig } from "../model/config.ts";
import { type KvCache, Llama } from "../model/model.ts";
import { initialParameters, paramLayout } from "../model/params.ts";
import { Rng } from "../model/rng.ts";
import { assertClose, testGpu } from "./harness.ts";

// Plain and grouped-query heads, head sizes 8 and 16, widths that are not multiples of
// the 8 lanes, caches whose length is not a multiple of 8, one to three sequences; and
// 96 sequences, which one workgroup looping over them decoded wrong on lavapipe (its
// loops stop after 65535 trips an invocation: ~850 a sequence here).
const SHAPES = [
  { B: 1, n_layer: 1, n_head: 2, n_kv_head: 2, n_embd: 16, mlp_hidden: 44, block_size: 5 },
  { B: 2, n_layer: 2, n_head: 4, n_kv_head: 2, n_embd: 32, mlp_hidden: 84, block_size: 13 },
  { B: 3, n_layer: 1, n_head: 3, n_kv_head: 1, n_embd: 48, mlp_hidden: 128, block_size: 10 },
  { B: 96, n_layer: 1, n_head: 4, n_kv_head: 4, n_embd: 128, mlp_hidden: 512, block_size: 2 },
] as const;

Deno.test("a decoding step in two dispatches a layer matches the separate kernels at every position", async () => {
  const gpu = await testGpu();
  for (const shape of SHAPES) await compareSteps(gpu, shape);
});

/**
 * Decodes a random token sequence to the end of the cache with the fused layers
 * and with the separate kernels (each with its own cache), and compares the final
 * hidden state of every step. The fused path reads its caches through kept texel
 * copies that its query dispatch writes, as a Generator does.
 */
async function compareSteps(gpu: Gpu, shape: (typeof SHAPES)[number]) {
  const { B, ...sizes } = shape;
  const config = resolveModelConfig({ ...sizes, vocab_size: 29 });
  const block = new Llama(gpu, config, { batchSize: B, training: false });
  block.upload(initialParameters(paramLayout(config), config, new Rng(5)));
  const T = config.block_size;
  const kvWidth = config.n_kv_head * headSize(config);
  const path = () => {
    const step = new Llama(gpu, config, { batchSize: B, blockSize: 1, training: false, weightsFrom: block });
    const layers = Array.from({ length: config.n_layer }, () => [B, T, kvWidth]);
    const cache: KvCache = {
      k: layers.map((s) => gpu.tensor(s)),
      v: layers.map((s) => gpu.tensor(s)),
      position: gpu.tensor([1], "u32"),
    };
    return { step, cache, tokens: gpu.tensor([B, 1], "u32") };
  };
  const [fused, separate] = [path(), path()];
  const texels = new TexelCache(gpu, [block.params], { mirrored: [...fused.cache.k, ...fused.cache.v] });
  const rng = new Rng(9);
  for (let t = 0; t < T; t++) {
    const tokens = Array.from({ length: B }, () => Math.floor(rng.uniform() * config.vocab_size));
    for (const p of [fused, separate]) {
      gpu.write(p.tokens, tokens);
      gpu.write(p.cache.position, [t]);
    }
    const dispatches = gpu.stats.dispatches;
    let rec = gpu.recorder({ texelCache: texels });
    fused.step.forwardHidden(rec, { tokens: fused.tokens, cache: fused.cache, fusedDecode: true });
    rec.submit();
    assert.equal(
      gpu.stats.dispatches - dispatches,
      2 + 2 * config.n_layer,
      "embedding, 2 a layer, final norm",
    );
    rec = gpu.recorder();
    separate.step.forwardHidden(rec, { tokens: separate.tokens, cache: separate.cache, fusedDecode: false });
    rec.submit();
    const want = await gpu.readFloats(separate.step.acts.lnf);
    // f32 sums in another order, over at most 13 positions and 128 channels.
    assertClose(
      await gpu.readFloats(fused.step.acts.lnf),
      want,
      { atol: 2e-5, rtol: 2e-5 },
      `step ${t} ${JSON.stringify(shape)}`,
    );
  }
  texels.release();
  for (const p of [fused, separate]) {
    p.step.release();
    for (const x of [...p.cache.k, ...p.cache.v, p.cache.position, p.tokens]) gpu.release(x);
  }
  block.release();
}

Deno.test("decodeLayer fits only shapes whose loop trips stay within the adapter's loop limit", async () => {
  const gpu = await testGpu();
  // TinyLlama's width with a smaller MLP (its own does not fit lavapipe's workgroup memory):
  // forced past the fit on lavapipe, one sequence decoded wrong; with 4096 (61522 trips) right.
  const shape = { B: 1, C: 2048, NH: 32, NKV: 4, HS: 64, H: 4800, Tmax: 2 };
  const trips = decodeLayerTrips(shape);
  assert.ok(trips > 65535 && decodeLayerTrips({ ...shape, H: 4096 }) < 65535, `${trips} trips`);
  assert.equal(decodeLayerTrips({ ...shape, B: 96 }), trips, "a workgroup per sequence");
  const measured = gpu.loopLimit;
  try {
    gpu.loopLimit = trips - 1; // the check that ends the last loop is not counted against it
    assert.ok(decodeLayerFits(gpu, shape) || gpu.limits.maxComputeWorkgroupStorageSize < 29536);
    gpu.loopLimit = trips - 2;
    assert.equal(decodeLayerFits(gpu, shape), false);
  } finally {
    gpu.loopLimit = measured;
  }
});

Deno.test("decodeLayer refuses a shape it does not fit, saying to use the separate kernels", async () => {
  const gpu = await testGpu();
  const t = (shape: number[]) => gpu.tensor(shape);
  const C = 20; // HS = 5: not a multiple of 8
  const weights = {
    attnNorm: t([C]),
    qkv: t([3 * C, C]),
    attnOut: t([C, C]),
    mlpNorm: t([C]),
    gateUp: t([16, C]),
    down: t([C, 8]),
  };
  const args = {
    resid: t([1, C]),
    qkv: t([1, 1, 3 * C]),
    kCache: t([1, 4, C]),
    vCache: t([1, 4, C]),
    position: gpu.tensor([1], "u32"),
    weights,
    nHead: 4,
    nKvHead: 4,
    eps: 1e-5,
    theta: 10000,
  };
  assert.throws(() => decodeLayer(gpu.recorder(), args), /does not fit .*use the separate kernels/);
  for (
    const x of [args.resid, args.qkv, args.kCache, args.vCache, args.position, ...Object.values(weights)]
  ) {
    gpu.release(x);
  }
});
