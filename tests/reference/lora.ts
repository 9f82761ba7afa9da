/**
 * Float64 reference of LoRA adapters as a {@link ProjectionHook} of the model
 * reference: y[:, block] += s·dropout(x)·Aᵀ·Bᵀ and its backward, with the same
 * dropout masks as the GPU (same seeds and streams).
 *
 * @module
 */

import type { ModelConfig } from "../../model/config.ts";
import { type LoraConfig, loraLayout, type LoraModule, loraScale } from "../../model/lora.ts";
import { loraDropoutStream } from "../../model/lora_adapters.ts";
import { keepRef } from "./dropout.ts";
import { matmulRef } from "./matmul.ts";
import type { DropoutRef, ProjectionHook, ProjectionSiteRef } from "./model.ts";

/**
 * Adapters with the given values, as a hook for `modelRef`; after the model's
 * backward, `grads` holds d loss / d (flat adapter values).
 *
 * @param model The base architecture.
 * @param config The adapter settings.
 * @param values Flat adapter values (loraLayout(...).total).
 * @param drop The step's dropout seeds (its p is ignored: the adapter's own dropout applies).
 * @returns The hook and the gradient it fills.
 */
export function loraRef(
  model: ModelConfig,
  config: LoraConfig,
  values: Float64Array,
  drop?: DropoutRef,
): { hook: ProjectionHook; grads: Float64Array } {
  const layout = loraLayout(model, config);
  const s = loraScale(config);
  const r = config.rank;
  const grads = new Float64Array(layout.total);
  const saved = new Map<LoraModule, { input: Float64Array; h: Float64Array }>();
  const modulesAt = (l: number, site: ProjectionSiteRef) =>
    layout.modules.filter((m) => m.layer === l && m.site === site);
  const a = (m: LoraModule) => values.subarray(m.a.offset, m.a.offset + m.a.length);
  const b = (m: LoraModule) => values.subarray(m.b.offset, m.b.offset + m.b.length);
  const keep = (m: LoraModule, i: number) =>
    !drop || config.dropout === 0 ||
    keepRef(drop.run, drop.step, loraDropoutStream(layout, m, drop.micro), i, config.dropout);
  const masked = (m: LoraModule, x: Float64Array) =>
    x.map((v, i) => keep(m, i) ? (drop && config.dropout > 0 ? v / (1 - config.dropout) : v) : 0);

  const hook: ProjectionHook = {
    forward(l, site, x, y) {
      const out = Float64Array.from(y);
      for (const m of modulesAt(l, site)) {
        const N = x.length / m.inFeatures;
        const W = y.length / N;
        const input = masked(m, x);
        const h = matmulRef(input, a(m), { m: N, n: r, k: m.inFeatures, transposeB: true });
        const delta = matmulRef(h, b(m), { m: N, n: m.outFeatures, k: r, transposeB: true });
        for (let n = 0; n < N; n++) {
          for (let j = 0; j < m.outFeatures; j++) {
            out[n * W + m.column + j] += s * delta[n * m.outFeatures + j];
          }
        }
        saved.set(m, { input, h });
      }
      return out;
    },
    backward(l, site, dy) {
      let dx: Float64Array | null = null;
      for (const m of modulesAt(l, site)) {
        const { input, h } = saved.get(m)!;
        const N = input.length / m.inFeatures;
        const W = dy.length / N;
        const g = new Float64Array(N * m.outFeatures);
        for (let n = 0; n < N; n++) {
          for (let j = 0; j < m.outFeatures; j++) g[n * m.outFeatures + j] = s * dy[n * W + m.column + j];
        }
        const dB = matmulRef(g, h, { m: m.outFeatures, n: r, k: N, transposeA: true });
        const dh = matmulRef(g, b(m), { m: N, n: r, k: m.outFeatures });
        const dA = matmulRef(dh, input, { m: r, n: m.inFeatures, k: N, transposeA: true });
        dB.forEach((v, i) => grads[m.b.offset + i] += v);
        dA.forEach((v, i) => grads[m.a.offset + i] += v);
        const dInput = masked(m, matmulRef(dh, a(m), { m: N, n: m.inFeatures, k: r }));
        dx = dx ? dx.map((v, i) => v + dInput[i]) : dInput;
      }
      return dx;
    },
  };
  return { hook, grads };
}
