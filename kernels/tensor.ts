/**
 * A tensor is a typed, shaped range of a GPU buffer: its own buffer, or a view
 * into a flat one (llm.c style: all parameters in one buffer, each tensor an
 * offset and a shape).
 *
 * @module
 */

import { GpuError } from "./errors.ts";

/**
 * Element types a tensor can hold: floats for weights and activations (f16
 * needs `shader-f16`), u32 for token ids and counts, i32 for signed indices.
 *
 * @example
 * ```ts
 * const dtype: DType = gpu.features.f16 ? "f16" : "f32";
 * const hidden = gpu.tensor([12, 64, 128], dtype, { label: "hidden" });
 * ```
 */
export type DType = "f32" | "f16" | "u32" | "i32";

/**
 * Host data accepted for uploads: a typed array or a plain array with one value
 * per element, converted to the tensor's dtype on the way.
 *
 * @example
 * ```ts
 * const data: TensorData = Uint32Array.from(tokenizer.encode("ROMEO:"));
 * const tokens = gpu.tensor([1, data.length], "u32", { label: "prompt", data });
 * ```
 */
export type TensorData =
  | Float32Array
  | Float64Array
  | Uint32Array
  | Int32Array
  | Uint16Array
  | readonly number[];

const BYTES: Record<DType, number> = { f32: 4, f16: 2, u32: 4, i32: 4 };

/**
 * A shaped, typed range of a GPU buffer: what every kernel reads and writes.
 * Allocate one with `gpu.tensor()`, read it with `gpu.read()`, and free its
 * buffer with `gpu.release()`.
 *
 * @example
 * ```ts
 * const x = gpu.tensor([2, 3], "f32", { label: "x", data: [1, 2, 3, 4, 5, 6] });
 * const row = x.view(3, [3], "x row 1");
 * console.log(row.byteOffset, await gpu.read(row)); // 12 Float32Array(3) [4, 5, 6]
 * gpu.release(x);
 * ```
 */
export class Tensor {
  /** The buffer holding the data. */
  readonly buffer: GPUBuffer;
  /** Byte offset of element 0 in the buffer. */
  readonly byteOffset: number;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
  /** Names the tensor in errors and profiles. */
  readonly label: string;
  /** Number of elements. */
  readonly length: number;

  /**
   * Wraps a buffer range; `gpu.tensor()` and {@link Tensor.view} are the usual ways in.
   *
   * @param buffer The buffer.
   * @param byteOffset Where element 0 sits.
   * @param shape Dimensions.
   * @param dtype Element type.
   * @param label A name.
   * @example
   * ```ts
   * const t = gpu.tensor([4, 8]);           // owns a buffer
   * const row = t.view(8, [8], "row 1");     // a view of its second row
   * ```
   */
  constructor(
    buffer: GPUBuffer,
    byteOffset: number,
    shape: readonly number[],
    dtype: DType,
    label: string,
  ) {
    this.buffer = buffer;
    this.byteOffset = byteOffset;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.label = label;
    this.length = shape.reduce((a, b) => a * b, 1);
    if (byteOffset + this.byteLength > buffer.size) {
      throw new GpuError(
        `Tensor "${label}" [${
          shape.join(", ")
        }] at byte ${byteOffset} overruns its buffer of ${buffer.size} bytes`,
      );
    }
  }

  /**
   * Bytes per element of `dtype`.
   *
   * @param dtype An element type.
   * @returns 2 or 4.
   */
  static bytesPerElement(dtype: DType): number {
    return BYTES[dtype];
  }

  /** Bytes of data (not padded). */
  get byteLength(): number {
    return this.length * BYTES[this.dtype];
  }

  /**
   * A tensor over part of this one's buffer, `elementOffset` elements in.
   *
   * @param elementOffset First element of the view, counted in this tensor's dtype.
   * @param shape Shape of the view.
   * @param label Name of the view.
   * @returns The view (shares the buffer).
   */
  view(elementOffset: number, shape: readonly number[], label?: string): Tensor {
    const length = shape.reduce((a, b) => a * b, 1);
    if (elementOffset < 0 || elementOffset + length > this.length) {
      throw new GpuError(
        `View [${
          shape.join(", ")
        }] at element ${elementOffset} does not fit in "${this.label}" of ${this.length} elements`,
      );
    }
    return new Tensor(
      this.buffer,
      this.byteOffset + elementOffset * BYTES[this.dtype],
      shape,
      this.dtype,
      label ?? `${this.label}[${elementOffset}..]`,
    );
  }

  /**
   * The same data under another shape with as many elements.
   *
   * @param shape The new shape.
   * @returns A view with that shape.
   */
  reshape(shape: readonly number[]): Tensor {
    const length = shape.reduce((a, b) => a * b, 1);
    if (length !== this.length) {
      throw new GpuError(
        `Cannot reshape "${this.label}" [${this.shape.join(", ")}] to [${
          shape.join(", ")
        }]: element counts differ`,
      );
    }
    return new Tensor(this.buffer, this.byteOffset, shape, this.dtype, this.label);
  }

  /**
   * The buffer range to bind: storage bindings must be a multiple of 4 bytes,
   * so an odd-length f16 tensor binds one padding element (buffers are padded).
   *
   * @returns Buffer, offset and size for a bind group entry.
   */
  range(): { buffer: GPUBuffer; offset: number; size: number } {
    const size = Math.max(4, Math.ceil(this.byteLength / 4) * 4);
    return { buffer: this.buffer, offset: this.byteOffset, size };
  }
}
