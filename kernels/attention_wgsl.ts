/**
 * The WGSL of the attention kernels (see `attention.ts`), generated per size and
 * plan: unrolled over a thread's rows, the vec4s of a head and the streamed rows
 * of a chunk, with the loops, loads and masks each plan needs.
 *
 * @module
 */

import type { AttentionPlan } from "./attention.ts";
import { GpuError } from "./errors.ts";
import { float } from "./wgsl.ts";

/** Workgroup memory budget, bytes: what NVIDIA and others give without opting in. */
const SHARED_BYTES = 16384;
/** A finite stand-in for −∞ (WGSL has no infinity literal); exp2 of it minus anything is 0. */
const NEG_BIG = "-1e30";

/** The sizes a kernel is generated for (B and T only bound the grid and the loop-trip count). */
export interface AttentionSizes {
  B: number;
  T: number;
  NH: number;
  NKV: number;
  HS: number;
  scale: number;
}

/** `n` pieces `piece(i)` joined: the generated code is unrolled over rows, vec4s and chunk rows. */
function each(n: number, piece: (i: number) => string, joiner = "\n  "): string {
  return Array.from({ length: n }, (_, i) => piece(i)).join(joiner);
}

/**
 * Cuts of a block's diagonal span (see {@link diagonalCuts}). Two ran the
 * kernels in 0.85× the time at HS 32, T 64 and 0.95× at HS 64, T 256 on lavapipe,
 * side by side; three was slower than two, and two compile in 1.6× the time of none.
 */
const DIAGONAL_LEVELS = 2;

/**
 * The cuts of {@link AttentionWgsl.cuts} for a plan without workgroup memory: R − ⌊R/2⌋,
 * R − ⌊R/4⌋, ... ({@link DIAGONAL_LEVELS} of them), each a whole number of
 * chunks into the block so no chunk straddles one. Each cut adds a loop over
 * the rows after it to the kernel: code to compile, against diagonal work saved.
 */
function diagonalCuts(plan: AttentionPlan): number[] {
  const cuts: number[] = [];
  for (let level = 1; level <= DIAGONAL_LEVELS; level++) {
    const h = plan.rows - Math.floor(plan.rows / 2 ** level);
    const last = cuts[cuts.length - 1] ?? 0;
    if (h > last && h < plan.rows && (h * plan.threads) % plan.chunk === 0) cuts.push(h);
  }
  return cuts;
}

/** One streamed matrix: rows of one head in a (B, T, stride) tensor. */
interface Stream {
  /** The WGSL array. */
  array: string;
  /** WGSL expression: vec4 index of this head's row 0 of batch b. */
  base: string;
  /** Row stride in vec4s (a WGSL constant). */
  stride: string;
}

/** What a loop body reads: vec4 d of chunk row c of stream A or B, and the rows' statistics. */
interface Access {
  a(c: number, d: number): string;
  b(c: number, d: number): string;
  /** A row statistic (0: lse·log2 e, 1: D) of the chunk's rows, as f32 or vecC<f32>. */
  scalars(which: 0 | 1): string;
}

/** Generates the WGSL of one size and plan. Row ρ of a thread is `first + ρ·WG + lid`. */
export class AttentionWgsl {
  readonly H4: number;
  readonly R: number;
  readonly C: number;
  readonly blocks: number;
  readonly tile: number;
  readonly name: string;
  /** ρ = 0..R-1. */
  readonly all: readonly number[];
  /**
   * Where the block's own span (its diagonal) is cut, in rows of the thread
   * (ascending): past the query rows before `h`·WG a query block streams only
   * its rows from h on; see {@link streamSegments}. Empty with workgroup memory.
   */
  readonly cuts: readonly number[];

  constructor(readonly s: AttentionSizes, readonly plan: AttentionPlan) {
    this.H4 = s.HS / 4;
    this.R = plan.rows;
    this.C = plan.chunk;
    this.all = Array.from({ length: plan.rows }, (_, r) => r);
    this.cuts = plan.shared ? [] : diagonalCuts(plan);
    const block = plan.rows * plan.threads;
    this.blocks = Math.ceil(s.T / block);
    // Two tiles of HS floats per row, plus lse and D per row, within the budget.
    const fit = Math.floor(SHARED_BYTES / (2 * s.HS * 4 + 8));
    this.tile = Math.max(4, Math.min(64, Math.floor(fit / 4) * 4));
    const source = plan.shared ? ` tile${this.tile}` : plan.textures ? " texels" : " direct";
    const cut = this.cuts.length > 0 ? ` cut${this.cuts.join(",")}` : "";
    this.name = `${plan.rows}x${plan.threads}/${plan.chunk}${source}${cut}`;
  }

  /**
   * An upper bound on the loop trips of one invocation that streams all T rows
   * `passes` times (dK/dV: once per query head of its kv head), as
   * `expectLoopTrips` counts them (a loop's iterations and the check that ends it).
   */
  loopTrips(passes: number): number {
    const { C, tile, plan, H4 } = this;
    const { T } = this.s;
    const loop = (n: number) => n + 1;
    const tiles = Math.ceil(T / tile);
    const perPass = plan.shared
      ? loop(tiles) +
        tiles * (loop(Math.ceil((tile * H4) / plan.threads)) + loop(Math.ceil(tile / plan.threads)) +
            loop(Math.ceil(tile / C)))
      : Math.ceil(T / C) + this.cuts.length + 1; // a loop per segment, whose chunks tile [0, T)
    return loop(passes) + passes * perPass;
  }

  /** The dispatch: (heads × row blocks, B). */
  grid(heads: number, B: number): [number, number] {
    const x = heads * this.blocks;
    if (x > 65535 || B > 65535) {
      throw new GpuError(
        `attention: ${heads} heads × ${this.blocks} row blocks or batch ${B} exceeds 65535 workgroups per dimension; shorten the sequence or batch`,
      );
    }
    return [x, B];
  }

  /** A value per chunk row from `part(c)`: f32 or vecC<f32>. */
  vec(part: (c: number) => string): string {
    return this.C === 1 ? part(0) : `vec${this.C}<f32>(${each(this.C, part, ", ")})`;
  }

  /** `x` splatted over the chunk rows, as f32 or u32. */
  splat(x: string, type: "f32" | "u32"): string {
    return this.C === 1 ? x : `vec${this.C}<${type}>(${x})`;
  }

  /** Row indices i0, i0 + 1, ... of the chunk (u32 or vecC<u32>). */
  iota(i0: string): string {
    return this.C === 1
      ? i0
      : `vec${this.C}<u32>(${i0}) + vec${this.C}<u32>(${each(this.C, (c) => `${c}u`, ", ")})`;
  }

  /** Chunk row c of a per-chunk value. */
  comp(v: string, c: number): string {
    return this.C === 1 ? v : `${v}.${"xyzw"[c]}`;
  }

  /** Maximum over the chunk rows. */
  hmax(v: string): string {
    if (this.C === 1) return v;
    if (this.C === 2) return `max(${v}.x, ${v}.y)`;
    return `max(max(${v}.x, ${v}.y), max(${v}.z, ${v}.w))`;
  }

  /** Sum over the chunk rows. */
  hsum(v: string): string {
    return this.C === 1 ? v : `dot(${v}, vec${this.C}<f32>(1.0))`;
  }

  /** vec4 `index` of `array` as f32s: a fetch from its staged copy with texels, else a storage load. */
  read(array: string, index: string): string {
    return this.plan.textures ? `fetch_${array}(${index})` : `vec4<f32>(${array}[${index}])`;
  }

  /** Per-row code for the rows of `set` (default all, ρ = 0..R-1). */
  rows(piece: (r: number) => string, joiner = "\n  ", set: readonly number[] = this.all): string {
    return set.map(piece).join(joiner);
  }

  /** Per-row, per-vec4 code. */
  rowVecs(piece: (r: number, d: number) => string, joiner = "\n  "): string {
    return each(this.R, (r) => each(this.H4, (d) => piece(r, d), joiner), joiner);
  }

  header(decls: string): string {
    const { s, plan, H4, tile } = this;
    const shared = plan.shared
      ? `var<workgroup> ta: array<vec4<f32>, ${tile * H4}>;
var<workgroup> tb: array<vec4<f32>, ${tile * H4}>;
var<workgroup> rs0: array<f32, ${tile}>;
var<workgroup> rs1: array<f32, ${tile}>;`
      : "";
    return `${decls}
const NH = ${s.NH}u;
const NKV = ${s.NKV}u;
const GROUP = ${s.NH / s.NKV}u;                  // query heads per kv head
const H4 = ${H4}u;                               // vec4s per head
const ROW4 = ${(s.NH + 2 * s.NKV) * H4}u;        // vec4s per token of qkv
const OUT4 = ${s.NH * H4}u;                      // vec4s per token of out
const WG = ${plan.threads}u;                     // threads per workgroup
const BLOCK = ${plan.rows * plan.threads}u;      // rows per workgroup
const TILE = ${tile}u;                           // streamed rows per workgroup-memory tile
const QSCALE = ${float(s.scale * Math.LOG2E)};   // scale·log2(e): scores in log2 units
const SCALE = ${float(s.scale)};
const LOG2E = ${float(Math.LOG2E)};
const LN2 = ${float(Math.LN2)};
${shared}`;
  }

  /**
   * B is the grid's height and T is read from the length of lse, so one
   * pipeline serves every batch size and sequence length; the grid's width is
   * `heads` × row blocks.
   */
  prologue(heads: "NH" | "NKV"): string {
    return `let B = nwg.y;
  let T = arrayLength(&lse) / (NH * B);
  let NB = (T + BLOCK - 1u) / BLOCK;
  if (wid.x >= ${heads} * NB) { return; }
  let b = wid.y;`;
  }

  /** `let r{ρ}`: this thread's rows, clamped to T − 1 (rows past T compute a copy and skip the write). */
  rowIndices(): string {
    return this.rows((r) => `let r${r} = min(first + ${r * this.plan.threads}u + lid, T - 1u);`);
  }

  /**
   * The entry of the query-block kernels (forward, dQ): which batch, head and
   * block of rows this workgroup owns — the last row blocks, with the most keys
   * to visit, first — and this thread's rows of q, pre-scaled.
   */
  queryBlock(): string {
    return `${this.prologue("NH")}
  let h = wid.x % NH;
  let first = (NB - 1u - wid.x / NH) * BLOCK;
  let kvh = h / GROUP;
  let lid = lidv.x;
  ${this.rowIndices()}
  ${
      this.rowVecs((r, d) =>
        `let q${r}_${d} = ${this.read("qkv", `(b * T + r${r}) * ROW4 + h * H4 + ${d}u`)} * QSCALE;`
      )
    }`;
  }

  /** The WGSL condition that row ρ of this thread exists. */
  valid(r: number): string {
    return `first + ${r * this.plan.threads}u + lid < T`;
  }

  /**
   * Streams the rows a block meets through `body(access, rows)`: for a block of
   * query rows (`owner` "queries") the keys up to its last row, for a block of
   * key rows the queries from its first row on, in one loop per segment of
   * {@link cuts}. A query block streams the keys before first + h·WG for all its
   * rows, then those from there for rows h and later only (the earlier rows would
   * mask them all); a key block mirrors it with cuts R − h.
   */
  streamSegments(
    owner: "queries" | "keys",
    a: Stream,
    b: Stream,
    stats: ((i: string) => string) | null,
    body: (x: Access, rows: readonly number[]) => string,
  ): string {
    const WG = this.plan.threads;
    const at = (rows: number) => rows === 0 ? "first" : `first + ${rows * WG}u`;
    const upTo = (rows: number) => `min(T, first + ${rows * WG}u)`;
    const loop = (start: string, end: string, rows: readonly number[]) =>
      this.stream(start, end, a, b, stats, (x) => body(x, rows));
    const { cuts, R } = this;
    if (owner === "queries") {
      const bounds = [...cuts, R];
      return [
        loop("0u", upTo(bounds[0]), this.all),
        ...cuts.map((h, i) => loop(at(h), upTo(bounds[i + 1]), this.all.slice(h))),
      ].join("\n  ");
    }
    if (cuts.length === 0) return loop(this.plan.shared ? "(first / TILE) * TILE" : "first", "T", this.all);
    const keyCuts = cuts.map((h) => R - h).reverse();
    return [
      ...keyCuts.map((g, i) => loop(at(i === 0 ? 0 : keyCuts[i - 1]), upTo(g), this.all.slice(0, g))),
      loop(at(keyCuts[keyCuts.length - 1]), "T", this.all),
    ].join("\n  ");
  }

  /** The keys and values of the block's kv head up to its last row, as {@link streamSegments} streams them. */
  streamKeysAndValues(body: (x: Access, rows: readonly number[]) => string): string {
    return this.streamSegments(
      "queries",
      { array: "qkv", base: "b * T * ROW4 + (NH + kvh) * H4", stride: "ROW4" },
      { array: "qkv", base: "b * T * ROW4 + (NH + NKV + kvh) * H4", stride: "ROW4" },
      null,
      body,
    );
  }

  /**
   * Loops over streamed rows [start, end) (bounds uniform over the workgroup;
   * start a multiple of the chunk, and of TILE with workgroup memory) a chunk at
   * a time; `i0` is the chunk's first row in the body. Rows at or past T read as
   * row T − 1 (direct) or 0 (tiles); the body masks them. `stats(i)`, where
   * given, is an expression whose .x and .y are streamed row i's lse·log2 e and D.
   */
  stream(
    start: string,
    end: string,
    a: Stream,
    b: Stream,
    stats: ((i: string) => string) | null,
    body: (x: Access) => string,
  ): string {
    const { H4, C } = this;
    if (this.plan.shared) {
      const fillScalars = stats
        ? `for (var e = lid; e < TILE; e += WG) {
      let st = ${stats("min(t0 + e, T - 1u)")};
      rs0[e] = st.x;
      rs1[e] = st.y;
    }`
        : "";
      const access: Access = {
        a: (c, d) => `ta[at + ${c * H4 + d}u]`,
        b: (c, d) => `tb[at + ${c * H4 + d}u]`,
        scalars: (k) => this.vec((c) => `rs${k}[c0 + ${c}u]`),
      };
      return `for (var t0 = ${start}; t0 < ${end}; t0 += TILE) {
    workgroupBarrier();
    for (var e = lid; e < TILE * H4; e += WG) {
      let i = t0 + e / H4;
      let ic = min(i, T - 1u);
      ta[e] = select(vec4<f32>(0.0), vec4<f32>(${a.array}[${a.base} + ic * ${a.stride} + e % H4]), i < T);
      tb[e] = select(vec4<f32>(0.0), vec4<f32>(${b.array}[${b.base} + ic * ${b.stride} + e % H4]), i < T);
    }
    ${fillScalars}
    workgroupBarrier();
    let cEnd = min(TILE, ${end} - t0);
    for (var c0 = 0u; c0 < cEnd; c0 += ${C}u) {
      let i0 = t0 + c0;
      let at = c0 * H4;
      ${body(access)}
    }
  }`;
    }
    const rowOf = (c: number) => `min(i0 + ${c}u, T - 1u)`;
    const access: Access = {
      a: (c, d) => this.read(a.array, `ia${c} + ${d}u`),
      b: (c, d) => this.read(b.array, `ib${c} + ${d}u`),
      scalars: (k) => this.vec((c) => `st${c}.${"xy"[k]}`),
    };
    return `for (var i0 = ${start}; i0 < ${end}; i0 += ${C}u) {
    ${each(C, (c) => `let ia${c} = ${a.base} + ${rowOf(c)} * ${a.stride};`, "\n    ")}
    ${each(C, (c) => `let ib${c} = ${b.base} + ${rowOf(c)} * ${b.stride};`, "\n    ")}
    ${stats ? each(C, (c) => `let st${c} = ${stats(rowOf(c))};`, "\n    ") : ""}
    ${body(access)}
  }`;
  }

  /**
   * `let ${out}{ρ}`: the dot products of row ρ's registers `${reg}{ρ}_d` with
   * each streamed row of the chunk.
   *
   * In the order of {@link sweep}: with texels row by row, so one row's register
   * is read once for all the chunk's rows and only that row's partial sums are
   * live (on llvmpipe the spilled registers are loaded once and no partial sum
   * goes back to the stack).
   */
  dots(reg: string, load: (c: number, d: number) => string, out: string, set = this.all): string {
    const lines = [
      this.rows((r) => each(this.C, (c) => `var ${out}${r}_${c}: vec4<f32>;`, " "), "\n      ", set),
    ];
    const step = (r: number, c: number, d: number, x: string) =>
      d === 0
        ? `${out}${r}_${c} = ${reg}${r}_${d} * ${x};`
        : `${out}${r}_${c} = fma(${reg}${r}_${d}, ${x}, ${out}${r}_${c});`;
    lines.push(...this.sweep(load, step, set));
    lines.push(
      this.rows(
        (r) => `let ${out}${r} = ${this.vec((c) => `dot(${out}${r}_${c}, vec4<f32>(1.0))`)};`,
        "\n      ",
        set,
      ),
    );
    return lines.join("\n      ");
  }

  /**
   * `step(ρ, c, d, x)` for every row ρ, chunk row c and vec4 d, where x is vec4 d
   * of streamed row c: with texels (all of them already loaded, see
   * {@link loadAll}) row by row, so one row's registers and partial sums are
   * touched together; otherwise each streamed vec4 is read once, for all rows.
   */
  sweep(
    load: (c: number, d: number) => string,
    step: (r: number, c: number, d: number, x: string) => string,
    set = this.all,
  ): string[] {
    const lines: string[] = [];
    if (this.plan.textures) {
      for (const r of set) {
        for (let d = 0; d < this.H4; d++) lines.push(each(this.C, (c) => step(r, c, d, load(c, d)), " "));
      }
    } else {
      for (let c = 0; c < this.C; c++) {
        for (let d = 0; d < this.H4; d++) {
          lines.push(`{ let x = ${load(c, d)}; ${this.rows((r) => step(r, c, d, "x"), " ", set)} }`);
        }
      }
    }
    return lines;
  }

  /**
   * With texels, fetches every vec4 of the chunk's streamed rows once, as
   * `${name}{c}_{d}`, for {@link dots} to take row by row and for bodies that
   * read them twice (a reload from a spill slot is cheaper than a second texel
   * fetch); otherwise (workgroup memory or storage, on a GPU) they are read
   * where used, keeping registers free.
   */
  loadAll(
    name: string,
    load: (c: number, d: number) => string,
  ): { code: string; load: (c: number, d: number) => string } {
    if (!this.plan.textures) return { code: "", load };
    const lines: string[] = [];
    for (let c = 0; c < this.C; c++) {
      for (let d = 0; d < this.H4; d++) lines.push(`let ${name}${c}_${d} = ${load(c, d)};`);
    }
    return { code: lines.join("\n      "), load: (c, d) => `${name}${c}_${d}` };
  }

  /**
   * `${acc}{ρ}_d += Σ_c ${weight}{ρ}[c] · streamed[c][d]`, each streamed vec4 loaded
   * once. An accumulator's chunk terms are added in a row (in chunk order), so a
   * spilled accumulator is loaded and stored once per chunk; with `scale` it is
   * first multiplied by `${scale}{ρ}` inside the first fma (the forward's
   * rescale) rather than in a pass of its own.
   */
  accumulate(
    acc: string,
    weight: string,
    load: (c: number, d: number) => string,
    scale?: string,
    set = this.all,
  ): string {
    const lines: string[] = [];
    for (let d = 0; d < this.H4; d++) {
      const xs = each(this.C, (c) => `let x${c} = ${load(c, d)};`, " ");
      const updates = this.rows(
        (r) => {
          const a = `${acc}${r}_${d}`;
          let value = scale ? `${a} * ${scale}${r}` : a;
          for (let c = 0; c < this.C; c++) {
            value = `fma(vec4<f32>(${this.comp(`${weight}${r}`, c)}), x${c}, ${value})`;
          }
          return `${a} = ${value};`;
        },
        " ",
        set,
      );
      lines.push(`{ ${xs} ${updates} }`);
    }
    return lines.join("\n      ");
  }

  forward(decls: string, outType: string): string {
    const { H4 } = this;
    const body = (x: Access, set: readonly number[]) => {
      const keys = this.loadAll("ka", x.a);
      return `${keys.code}
      ${this.dots("q", keys.load, "s", set)}
      let kk = ${this.iota("i0")};
      ${
        this.rows(
          (r) =>
            `let live${r} = kk <= ${this.splat(`r${r}`, "u32")};
      let sm${r} = select(${this.splat(NEG_BIG, "f32")}, s${r}, live${r});
      let mn${r} = max(m${r}, ceil(${this.hmax(`sm${r}`)}));
      let al${r} = bitcast<f32>(u32(max(m${r} - mn${r} + 127.0, 0.0)) << 23u);
      let p${r} = select(${this.splat("0.0", "f32")}, exp2(sm${r} - mn${r}), live${r});
      l${r} = l${r} * al${r} + ${this.hsum(`p${r}`)};
      m${r} = mn${r};`,
          "\n      ",
          set,
        )
      }
      ${this.accumulate("o", "p", x.b, "al", set)}`;
    };
    return `${this.header(decls)}

@compute @workgroup_size(${this.plan.threads})
fn main(@builtin(local_invocation_id) lidv: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  ${this.queryBlock()}
  ${this.rowVecs((r, d) => `var o${r}_${d} = vec4<f32>(0.0);`)}
  ${this.rows((r) => `var m${r} = ${NEG_BIG};\n  var l${r} = 0.0;`)}
  // Keys up to the block's last row; each row masks the keys after it.
  ${this.streamKeysAndValues(body)}
  ${
      this.rows((r) =>
        `if (${this.valid(r)}) {
    let inv = 1.0 / l${r};
    ${
          each(H4, (d) =>
            `out[(b * T + r${r}) * OUT4 + h * H4 + ${d}u] = vec4<${outType}>(o${r}_${d} * inv);`, "\n    ")
        }
    lse[(b * NH + h) * T + r${r}] = (m${r} + log2(l${r})) * LN2;
  }`
      )
    }
}`;
  }

  backwardQuery(decls: string, gradType: string): string {
    const { H4 } = this;
    const body = (x: Access, set: readonly number[]) => {
      const keys = this.loadAll("ka", x.a);
      const values = this.loadAll("va", x.b);
      return `${keys.code}
      ${this.dots("q", keys.load, "s", set)}
      let kk = ${this.iota("i0")};
      ${
        this.rows(
          (r) =>
            `let p${r} = select(${this.splat("0.0", "f32")}, exp2(s${r} - ls${r}), kk <= ${
              this.splat(`r${r}`, "u32")
            });`,
          "\n      ",
          set,
        )
      }
      ${values.code}
      ${this.dots("do", values.load, "dp", set)}
      ${this.rows((r) => `let ds${r} = p${r} * (dp${r} - D${r});`, "\n      ", set)}
      ${this.accumulate("dq", "ds", keys.load, undefined, set)}`;
    };
    return `${this.header(decls)}

// dQ = dS·K·scale for a block of query rows, and D = rowsum(dO∘O) for the dK/dV pass.
@compute @workgroup_size(${this.plan.threads})
fn main(@builtin(local_invocation_id) lidv: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  ${this.queryBlock()}
  ${
      this.rowVecs((r, d) =>
        `let do${r}_${d} = ${this.read("dout", `(b * T + r${r}) * OUT4 + h * H4 + ${d}u`)};`
      )
    }
  ${
      this.rows((r) =>
        `let D${r} = dot(${
          each(
            H4,
            (d) => `do${r}_${d} * ${this.read("out", `(b * T + r${r}) * OUT4 + h * H4 + ${d}u`)}`,
            " + ",
          )
        }, vec4<f32>(1.0));`
      )
    }
  ${this.rows((r) => `let ls${r} = lse[(b * NH + h) * T + r${r}] * LOG2E;`)}
  ${this.rowVecs((r, d) => `var dq${r}_${d} = vec4<f32>(0.0);`)}
  ${this.streamKeysAndValues(body)}
  ${
      this.rows((r) =>
        `if (${this.valid(r)}) {
    ${
          each(
            H4,
            (d) => `dqkv[(b * T + r${r}) * ROW4 + h * H4 + ${d}u] = vec4<${gradType}>(dq${r}_${d} * SCALE);`,
            "\n    ",
          )
        }
    ${
          this.plan.textures
            ? `store_stats((b * NH + h) * T + r${r}, vec4<f32>(ls${r}, D${r}, 0.0, 0.0));`
            : `delta[(b * NH + h) * T + r${r}] = D${r};`
        }
  }`
      )
    }
}`;
  }

  backwardKeyValue(decls: string, gradType: string): string {
    const { H4 } = this;
    const body = (x: Access, set: readonly number[]) => {
      const queries = this.loadAll("qa", x.a);
      const grads = this.loadAll("ga", x.b);
      return `${queries.code}
      ${this.dots("k", queries.load, "s", set)}
      let ls = ${x.scalars(0)};
      let dd = ${x.scalars(1)};
      let qi = ${this.iota("i0")};
      let inT = qi < ${this.splat("T", "u32")};
      ${
        this.rows(
          (r) =>
            `let p${r} = select(${this.splat("0.0", "f32")}, exp2(s${r} - ls), qi >= ${
              this.splat(`r${r}`, "u32")
            } & inT);`,
          "\n      ",
          set,
        )
      }
      ${this.rows((r) => each(this.C, (c) => `var dp${r}_${c} = vec4<f32>(0.0);`, " "), "\n      ", set)}
      ${grads.code}
      ${this.accumulateDvDp(grads.load, set)}
      ${
        this.rows(
          (r) => `let ds${r} = p${r} * (${this.vec((c) => `dot(dp${r}_${c}, vec4<f32>(1.0))`)} - dd);`,
          "\n      ",
          set,
        )
      }
      ${this.accumulate("dk", "ds", queries.load, undefined, set)}`;
    };
    return `${this.header(decls)}

// dK and dV for a block of key rows of one kv head, summed over its query heads in order.
@compute @workgroup_size(${this.plan.threads})
fn main(@builtin(local_invocation_id) lidv: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  ${this.prologue("NKV")}
  // First key blocks (the most queries to visit) first.
  let kvh = wid.x % NKV;
  let first = (wid.x / NKV) * BLOCK;
  let lid = lidv.x;
  ${this.rowIndices()}
  ${
      this.rowVecs((r, d) =>
        `let k${r}_${d} = ${this.read("qkv", `(b * T + r${r}) * ROW4 + (NH + kvh) * H4 + ${d}u`)} * QSCALE;`
      )
    }
  ${
      this.rowVecs((r, d) =>
        `let v${r}_${d} = ${this.read("qkv", `(b * T + r${r}) * ROW4 + (NH + NKV + kvh) * H4 + ${d}u`)};`
      )
    }
  ${this.rowVecs((r, d) => `var dk${r}_${d} = vec4<f32>(0.0);`)}
  ${this.rowVecs((r, d) => `var dv${r}_${d} = vec4<f32>(0.0);`)}
  for (var g = 0u; g < GROUP; g++) {
    let h = kvh * GROUP + g;
    let sb = (b * NH + h) * T; // row 0 of this head in lse and D
    // Queries from the block's first key on; each key masks the queries before it.
    ${
      this.streamSegments(
        "keys",
        { array: "qkv", base: "b * T * ROW4 + h * H4", stride: "ROW4" },
        { array: "dout", base: "b * T * OUT4 + h * H4", stride: "OUT4" },
        (i) =>
          this.plan.textures
            ? `fetch_stats(sb + ${i})`
            : `vec2<f32>(lse[sb + ${i}] * LOG2E, delta[sb + ${i}])`,
        body,
      )
    }
  }
  ${
      this.rows((r) =>
        `if (${this.valid(r)}) {
    ${
          each(
            H4,
            (d) =>
              `dqkv[(b * T + r${r}) * ROW4 + (NH + kvh) * H4 + ${d}u] = vec4<${gradType}>(dk${r}_${d} * SCALE);`,
            "\n    ",
          )
        }
    ${
          each(
            H4,
            (d) =>
              `dqkv[(b * T + r${r}) * ROW4 + (NH + NKV + kvh) * H4 + ${d}u] = vec4<${gradType}>(dv${r}_${d});`,
            "\n    ",
          )
        }
  }`
      )
    }
}`;
  }

  /**
   * dv{ρ}_d += p{ρ}[c]·dO[c][d] and dp{ρ}_c += v{ρ}_d·dO[c][d], in the order of
   * {@link sweep}.
   */
  accumulateDvDp(load: (c: number, d: number) => string, set = this.all): string {
    const update = (r: number, c: number, d: number, x: string) =>
      `dv${r}_${d} = fma(vec4<f32>(${
        this.comp(`p${r}`, c)
      }), ${x}, dv${r}_${d}); dp${r}_${c} = fma(v${r}_${d}, ${x}, dp${r}_${c});`;
    return this.sweep(load, update, set).join("\n      ");
  }
}
