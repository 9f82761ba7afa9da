/**
 * A small seeded generator (xoshiro128**) whose whole state is four u32 words,
 * so a checkpoint can store it and a resumed run draws the same batches.
 *
 * @module
 */

/**
 * Seeded random numbers with a serialisable state: it draws training batches,
 * initial weights and samples, and a checkpoint stores its four words.
 *
 * @example
 * ```ts
 * const rng = new Rng(1337);
 * const weight = 0.02 * rng.normal();
 * const saved = rng.state();
 * console.log(Rng.fromState(saved).uniform() === rng.uniform()); // true
 * ```
 */
export class Rng {
  #s: Uint32Array;

  /**
   * Seeds the generator; equal seeds give equal streams.
   *
   * @param seed Any integer (its low 53 bits are used).
   * @example
   * ```ts
   * const rng = new Rng(1337);
   * rng.int(10); // 0..9
   * ```
   */
  constructor(seed: number) {
    // splitmix32 spreads the seed over the state so nearby seeds give unrelated streams.
    let x = (seed >>> 0) ^ Math.floor(seed / 2 ** 32);
    const next = () => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#s = Uint32Array.of(next(), next(), next(), next());
    if (this.#s.every((w) => w === 0)) this.#s[0] = 1;
  }

  /**
   * Restores a generator from {@link Rng.state}.
   *
   * @param state Four u32 words.
   * @returns The generator, continuing where the saved one stopped.
   */
  static fromState(state: readonly number[]): Rng {
    const rng = new Rng(0);
    rng.#s = Uint32Array.from(state);
    return rng;
  }

  /**
   * The state, for checkpoints.
   *
   * @returns Four u32 words; {@link Rng.fromState} continues from them.
   */
  state(): number[] {
    return [...this.#s];
  }

  /**
   * The next 32 random bits.
   *
   * @returns A u32.
   */
  nextU32(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /**
   * Uniform in [0, 1) with 53 random bits.
   *
   * @returns A float.
   */
  uniform(): number {
    return ((this.nextU32() >>> 5) * 67108864 + (this.nextU32() >>> 6)) / 9007199254740992;
  }

  /**
   * Uniform integer in [0, n), without modulo bias.
   *
   * @param n Exclusive upper bound, 1..2^32.
   * @returns The integer.
   */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /**
   * Standard normal (Box-Muller).
   *
   * @returns A float.
   */
  normal(): number {
    const u = 1 - this.uniform(); // (0, 1]: log stays finite
    const v = this.uniform();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
