/**
 * Helpers that every kernel file uses to write its WGSL: binding declarations in
 * one place (with the access mode that aliasing demands), dtype names, literals,
 * and argument checks that fail with a clear message.
 *
 * @module
 */

import { GpuError } from "./errors.ts";
import type { Binding } from "./pipeline.ts";
import type { DType, Tensor } from "./tensor.ts";

/** One storage binding of a kernel. */
export interface StorageDecl {
  /** The WGSL variable name. */
  name: string;
  /** The tensor bound. */
  tensor: Tensor;
  /** The kernel writes it. */
  write?: boolean;
  /** Element type override (e.g. `vec4<f32>`); default the tensor's dtype. */
  element?: string;
}

/**
 * Declares storage bindings 0..n-1 in the order given and returns the WGSL and
 * the matching binding list for `Recorder.dispatch`.
 *
 * WebGPU forbids binding one buffer read-only and read-write in the same
 * dispatch, even for disjoint ranges, so an input that shares a buffer with an
 * output (two views of one flat buffer) is declared `read_write` too. The access
 * mode is part of the WGSL text, hence of the pipeline cache key.
 *
 * @param decls Bindings in order: read-only inputs first, outputs next, by convention.
 * @param uniform Optional uniform struct bound last: `[variableName, structName, buffer]`.
 * @returns `wgsl` (enable directive + declarations) and `bindings`.
 * @example
 * ```ts
 * const { wgsl, bindings } = declare([{ name: "x", tensor: x }, { name: "out", tensor: out, write: true }]);
 * ```
 */
export function declare(
  decls: readonly StorageDecl[],
  uniform?: readonly [string, string, GPUBuffer],
): { wgsl: string; bindings: Binding[] } {
  const written = new Set(decls.filter((d) => d.write).map((d) => d.tensor.buffer));
  const lines = decls.map((d, i) => {
    const access = d.write || written.has(d.tensor.buffer) ? "read_write" : "read";
    return `@group(0) @binding(${i}) var<storage, ${access}> ${d.name}: array<${
      d.element ?? d.tensor.dtype
    }>;`;
  });
  const bindings: Binding[] = decls.map((d) => d.tensor);
  if (uniform) {
    lines.push(`@group(0) @binding(${decls.length}) var<uniform> ${uniform[0]}: ${uniform[1]};`);
    bindings.push({ buffer: uniform[2] });
  }
  const f16 = decls.some((d) => d.tensor.dtype === "f16" || d.element?.includes("f16"));
  return { wgsl: (f16 ? "enable f16;\n" : "") + lines.join("\n"), bindings };
}

/**
 * A WGSL float literal for `value` (exponent form, always a float).
 *
 * @param value A finite number.
 * @returns e.g. `1e-5`, `-2.5e+0`.
 */
export function float(value: number): string {
  if (!Number.isFinite(value)) throw new GpuError(`Cannot bake ${value} into WGSL; pass a finite number`);
  return value.toExponential();
}

/**
 * Checks a tensor's shape, naming the kernel and argument on mismatch.
 *
 * @param kernel Kernel name for the message.
 * @param name Argument name.
 * @param tensor The tensor.
 * @param shape Expected dimensions.
 */
export function expectShape(kernel: string, name: string, tensor: Tensor, shape: readonly number[]): void {
  if (tensor.shape.length !== shape.length || tensor.shape.some((d, i) => d !== shape[i])) {
    throw new GpuError(
      `${kernel}: ${name} "${tensor.label}" has shape [${tensor.shape.join(", ")}], expected [${
        shape.join(", ")
      }]`,
    );
  }
}

/**
 * Checks that a tensor has `length` elements (any shape).
 *
 * @param kernel Kernel name for the message.
 * @param name Argument name.
 * @param tensor The tensor.
 * @param length Expected element count.
 */
export function expectLength(kernel: string, name: string, tensor: Tensor, length: number): void {
  if (tensor.length !== length) {
    throw new GpuError(
      `${kernel}: ${name} "${tensor.label}" has ${tensor.length} elements, expected ${length}`,
    );
  }
}

/**
 * Checks a tensor's dtype is one of `allowed`.
 *
 * @param kernel Kernel name for the message.
 * @param name Argument name.
 * @param tensor The tensor.
 * @param allowed Accepted dtypes.
 */
export function expectDType(kernel: string, name: string, tensor: Tensor, allowed: readonly DType[]): void {
  if (!allowed.includes(tensor.dtype)) {
    throw new GpuError(
      `${kernel}: ${name} "${tensor.label}" is ${tensor.dtype}, expected ${allowed.join(" or ")}`,
    );
  }
}

/**
 * Rejects f16 tensors on a device without usable f16.
 *
 * @param kernel Kernel name for the message.
 * @param f16 Whether the device has usable f16.
 * @param tensors The kernel's tensors.
 */
export function expectF16Support(kernel: string, f16: boolean, tensors: readonly Tensor[]): void {
  if (!f16 && tensors.some((t) => t.dtype === "f16")) {
    throw new GpuError(
      `${kernel}: f16 tensors need a device with usable shader-f16; use f32 on this adapter`,
    );
  }
}
