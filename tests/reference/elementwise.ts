/** Float64 references of the elementwise kernels. @module */

/** a + b. */
export function addRef(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  return Float64Array.from(a, (v, i) => v + b[i]);
}

/** x · factor. */
export function scaleRef(x: ArrayLike<number>, factor: number): Float64Array {
  return Float64Array.from(x, (v) => v * factor);
}
