/**
 * Byte-pair encoding with OpenAI's tiktoken vocabularies (gpt2, cl100k_base,
 * o200k_base), whose rank tables and split patterns come from the npm package
 * js-tiktoken.
 *
 * The merge loop is ours rather than js-tiktoken's: theirs builds a comma-joined
 * string key for every pair it looks up and rescans all pairs per merge, which
 * takes 15–90 s on the 1.8 MB Chinese corpus (ours: 1–3 s). Here a piece's bytes
 * are a Latin-1 string (one char per byte, so a slice is a rank-table key), byte
 * pairs have a flat table, long pieces keep their candidate pairs in a binary heap
 * (O(n log n)), and short pieces are cached whole. Ties go to the leftmost pair, as
 * in tiktoken, so the ids are the same; tests/tokenizer_test.ts checks them against
 * js-tiktoken's encoder.
 *
 * @module
 */

/**
 * The tiktoken vocabularies we ship: GPT-2's, and GPT-3.5/4's and GPT-4o's.
 *
 * @example
 * ```ts
 * const name: BpeName = "gpt2";
 * const tokenizer = await loadTokenizer(name);
 * tokenizer.encode("Hello<|endoftext|>"); // [15496, 50256]
 * ```
 */
export type BpeName = "gpt2" | "cl100k_base" | "o200k_base";

/** A js-tiktoken rank file: the split regex, the special tokens, and the base64 tokens by rank. */
interface RankFile {
  pat_str: string;
  special_tokens: Record<string, number>;
  bpe_ranks: string;
}

// Literal specifiers so that `deno check`, `deno cache` and JSR see every module;
// each table is loaded only when its vocabulary is asked for.
const RANK_FILES: Record<BpeName, () => Promise<{ default: RankFile }>> = {
  gpt2: () => import("js-tiktoken/ranks/gpt2"),
  cl100k_base: () => import("js-tiktoken/ranks/cl100k_base"),
  o200k_base: () => import("js-tiktoken/ranks/o200k_base"),
};

const loaded = new Map<BpeName, Promise<BytePairEncoding>>();

// Whole-piece cache: most pieces of a corpus are repeated words. Long pieces (a run of Han
// characters is one piece) rarely repeat and would fill it; the bounds keep memory flat.
const CACHE_LIMIT = 1 << 16;
const CACHE_PIECE_LENGTH = 24;
const TWO_32 = 2 ** 32;
// Pieces up to this many bytes merge by rescanning (small arrays, no allocation of typed arrays).
const SMALL_PIECE = 64;

/**
 * A byte-level BPE vocabulary given as merges (Hugging Face tokenizer.json style) rather than tiktoken ranks.
 * Tokens are byte strings written one char per byte (Latin-1).
 *
 * @example
 * ```ts
 * const vocabulary: MergeVocabulary = {
 *   name: "tiny", pattern: String.raw`\S+|\s+`, specials: new Map(), wholePieceFirst: false,
 *   tokens: new Map([["a", 0], ["b", 1], ["ab", 2]]), merges: [["a", "b"]],
 * };
 * BytePairEncoding.fromMerges(vocabulary).encodeOrdinary("abba"); // [2, 1, 0]
 * ```
 */
export interface MergeVocabulary {
  /** Names the vocabulary in messages. */
  name: string;
  /** The split pattern (a Unicode regex source); text between matches is a piece too. */
  pattern: string;
  /** Every token's bytes and id. */
  tokens: ReadonlyMap<string, number>;
  /** The merges in priority order, each as its two parts' bytes. */
  merges: readonly (readonly [string, string])[];
  /** Special tokens (encoded by the caller) and their ids. */
  specials: ReadonlyMap<string, number>;
  /** Look a whole piece up before merging (tiktoken does; Hugging Face only with ignore_merges). */
  wholePieceFirst: boolean;
}

/**
 * Encoder and decoder of one byte-level BPE vocabulary (ordinary text; special tokens are the caller's).
 *
 * @example
 * ```ts
 * const bpe = await BytePairEncoding.load("gpt2");
 * new TextDecoder().decode(bpe.decodeBytes(bpe.encodeOrdinary("Hello world"))); // "Hello world"
 * ```
 */
export class BytePairEncoding {
  /** The vocabulary's name. */
  readonly name: string;
  #specials: ReadonlyMap<string, number> = new Map();
  // Merge priority of each token made by a merge (tiktoken: its id), and the id of every token.
  #ranks: Map<string, number>;
  #ids: Map<string, number>;
  #wholePieceFirst: boolean;
  // Rank of each two-byte token by (first << 8 | second), -1 for none: every merge starts from byte pairs.
  #pairs = new Int32Array(1 << 16).fill(-1);
  #tokens: string[]; // bytes of each id, one char per byte
  #pattern: RegExp;
  #cache = new Map<string, number[]>();
  #utf8 = new TextEncoder();
  #scratch = new Uint8Array(1024);

  private constructor(name: string, pattern: string, wholePieceFirst: boolean) {
    this.name = name;
    this.#pattern = new RegExp(pattern, "gu");
    this.#wholePieceFirst = wholePieceFirst;
    this.#ranks = new Map();
    this.#ids = this.#ranks;
    this.#tokens = [];
  }

  /** Largest id + 1, special tokens included (tiktoken's `n_vocab`). */
  get vocabSize(): number {
    return this.#tokens.length;
  }

  /** Special token texts and their ids, e.g. `<|endoftext|>` -> 50256 for gpt2. */
  get specials(): ReadonlyMap<string, number> {
    return this.#specials;
  }

  static #fromRankFile(name: BpeName, file: RankFile): BytePairEncoding {
    const bpe = new BytePairEncoding(name, file.pat_str, true);
    bpe.#readRanks(file);
    return bpe;
  }

  #readRanks(file: RankFile): void {
    for (const line of file.bpe_ranks.split("\n")) {
      if (!line) continue;
      // "! <first rank> <base64 token> <base64 token> ...": ranks are consecutive from the first.
      const fields = line.split(" ");
      const first = Number(fields[1]);
      for (let k = 2; k < fields.length; k++) {
        const latin1 = atob(fields[k]);
        this.#ranks.set(latin1, first + k - 2);
        if (latin1.length === 2) {
          this.#pairs[(latin1.charCodeAt(0) << 8) | latin1.charCodeAt(1)] = first + k - 2;
        }
        this.#tokens[first + k - 2] = latin1;
      }
    }
    this.#setSpecials(new Map(Object.entries(file.special_tokens)));
  }

  #setSpecials(specials: ReadonlyMap<string, number>): void {
    this.#specials = specials;
    // Special tokens decode as their text's UTF-8 bytes.
    for (const [text, id] of specials) this.#tokens[id] = this.#latin1(text);
  }

  /**
   * A vocabulary from merges. A token's merge priority is that of the first merge
   * producing its bytes, and a piece's adjacent parts merge when their bytes joined
   * are such a token. Hugging Face instead looks the pair of parts up, so the two
   * differ only where parts join into a merged token's bytes along a split its
   * merges do not list ("a"+"bc" where only "ab"+"c" is a merge), which the
   * merge order of a trained byte-level BPE makes rare.
   *
   * @param vocabulary Tokens, merges, split pattern and specials.
   * @returns The encoder.
   * @throws {Error} When a merge's result is not a token.
   */
  static fromMerges(vocabulary: MergeVocabulary): BytePairEncoding {
    const bpe = new BytePairEncoding(vocabulary.name, vocabulary.pattern, vocabulary.wholePieceFirst);
    bpe.#ids = new Map(vocabulary.tokens);
    for (const [bytes, id] of vocabulary.tokens) bpe.#tokens[id] = bytes;
    vocabulary.merges.forEach(([left, right], rank) => {
      const merged = left + right;
      if (!bpe.#ids.has(merged)) {
        throw new Error(`Merge ${rank} of ${vocabulary.name} makes a token that is not in its vocabulary`);
      }
      if (bpe.#ranks.has(merged)) return;
      bpe.#ranks.set(merged, rank);
      if (merged.length === 2) bpe.#pairs[(merged.charCodeAt(0) << 8) | merged.charCodeAt(1)] = rank;
    });
    bpe.#setSpecials(vocabulary.specials);
    return bpe;
  }

  /**
   * Loads a vocabulary once per process (building the rank table takes 0.2 s for gpt2, ~1 s for o200k_base).
   *
   * @param name `gpt2`, `cl100k_base` or `o200k_base`.
   * @returns The shared encoder.
   * @example
   * ```ts
   * const bpe = await BytePairEncoding.load("gpt2");
   * bpe.encode("Hello world"); // [15496, 995]
   * ```
   */
  static load(name: BpeName): Promise<BytePairEncoding> {
    let encoding = loaded.get(name);
    if (!encoding) {
      encoding = RANK_FILES[name]().then((module) => BytePairEncoding.#fromRankFile(name, module.default));
      loaded.set(name, encoding);
    }
    return encoding;
  }

  /**
   * The vocabulary as Hugging Face BPE merges, in rank order: each token of two or
   * more bytes is split where merging its bytes with only lower ranks leaves two
   * parts (how transformers converts tiktoken vocabularies; GPT-2's merges.txt).
   *
   * @returns The split pattern, every ordinary token's bytes (one char per byte) with its id, and the merges.
   * @throws {Error} When a token cannot be reached by merges (not a BPE vocabulary).
   * @example
   * ```ts
   * const { merges } = (await BytePairEncoding.load("gpt2")).toMerges();
   * merges[0]; // ["Ġ", "t"] as bytes: [" ", "t"]
   * ```
   */
  toMerges(): { pattern: string; tokens: Map<string, number>; merges: [string, string][] } {
    const tokens = new Map<string, number>();
    const merges: [number, string, string][] = [];
    const specialIds = new Set(this.#specials.values());
    this.#tokens.forEach((bytes, id) => {
      if (bytes === undefined || specialIds.has(id)) return;
      tokens.set(bytes, id);
      const rank = this.#ranks.get(bytes);
      if (bytes.length < 2 || rank === undefined) return;
      const parts = [...bytes];
      for (;;) {
        let best = -1;
        let bestRank = rank;
        for (let i = 0; i + 1 < parts.length; i++) {
          const pairRank = this.#ranks.get(parts[i] + parts[i + 1]) ?? Infinity;
          if (pairRank < bestRank) [best, bestRank] = [i, pairRank];
        }
        if (best < 0) break;
        parts.splice(best, 2, parts[best] + parts[best + 1]);
      }
      if (parts.length !== 2) {
        throw new Error(`Token ${id} of ${this.name} is not the merge of two lower-ranked tokens`);
      }
      merges.push([rank, parts[0], parts[1]]);
    });
    merges.sort((a, b) => a[0] - b[0]);
    return { pattern: this.#pattern.source, tokens, merges: merges.map(([, left, right]) => [left, right]) };
  }

  /**
   * Encodes text with no special tokens (tiktoken's `encode_ordinary`): `<|endoftext|>` here is 7 pieces.
   *
   * @param text Any string.
   * @param out Ids are appended to this array.
   * @returns `out`.
   */
  encodeOrdinary(text: string, out: number[] = []): number[] {
    let end = 0;
    for (const match of text.matchAll(this.#pattern)) {
      if (match.index > end) this.#encodeCached(text.slice(end, match.index), out);
      end = match.index + match[0].length;
      this.#encodeCached(match[0], out);
    }
    if (end < text.length) this.#encodeCached(text.slice(end), out);
    return out;
  }

  #encodeCached(piece: string, out: number[]): void {
    let ids = this.#cache.get(piece);
    if (ids === undefined) {
      ids = this.#encodePiece(piece);
      if (piece.length <= CACHE_PIECE_LENGTH) {
        if (this.#cache.size >= CACHE_LIMIT) this.#cache.clear();
        this.#cache.set(piece, ids);
      }
    }
    for (let i = 0; i < ids.length; i++) out.push(ids[i]);
  }

  /**
   * The UTF-8 bytes of ids (special tokens as their text); an id outside the vocabulary is an error.
   *
   * @param ids Token ids.
   * @returns Their bytes, concatenated; a partial character stays partial.
   */
  decodeBytes(ids: ArrayLike<number>): Uint8Array {
    let length = 0;
    for (let i = 0; i < ids.length; i++) length += this.#token(ids[i]).length;
    const out = new Uint8Array(length);
    let at = 0;
    for (let i = 0; i < ids.length; i++) {
      const latin1 = this.#token(ids[i]);
      for (let k = 0; k < latin1.length; k++) out[at++] = latin1.charCodeAt(k);
    }
    return out;
  }

  #token(id: number): string {
    const bytes = this.#tokens[id];
    if (bytes === undefined) {
      throw new RangeError(`Token id ${id} is not in the ${this.name} vocabulary of ${this.vocabSize}`);
    }
    return bytes;
  }

  /** Ids of one regex piece: its whole bytes if they are a token, else the merges of its byte pairs. */
  #encodePiece(piece: string): number[] {
    const latin1 = this.#latin1(piece);
    const whole = this.#wholePieceFirst ? this.#ids.get(latin1) : undefined;
    if (whole !== undefined) return [whole];
    return this.#merge(latin1);
  }

  /** The UTF-8 bytes of `piece` as a string with one char per byte. */
  #latin1(piece: string): string {
    let ascii = true;
    for (let i = 0; i < piece.length && ascii; i++) ascii = piece.charCodeAt(i) < 0x80;
    if (ascii) return piece;
    if (this.#scratch.length < piece.length * 3) this.#scratch = new Uint8Array(piece.length * 3);
    const { written } = this.#utf8.encodeInto(piece, this.#scratch);
    let latin1 = "";
    for (let at = 0; at < written; at += 8192) {
      latin1 += String.fromCharCode(...this.#scratch.subarray(at, Math.min(at + 8192, written)));
    }
    return latin1;
  }

  /**
   * Repeatedly merges the adjacent pair of parts with the lowest rank (leftmost on ties)
   * until no pair is a token. Parts are a linked list over byte offsets; `pairRank[i]` is
   * the rank of the pair starting at part `i` (Infinity: none; -1: `i` was merged away).
   * A pair only ever grows, and distinct byte strings have distinct ranks, so a heap
   * entry whose rank no longer equals `pairRank[i]` is stale and skipped.
   */
  #merge(bytes: string): number[] {
    const n = bytes.length;
    if (n <= SMALL_PIECE) return this.#mergeSmall(bytes);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const pairRank = new Float64Array(n);
    const heap = new MinHeap();
    for (let i = 0; i < n; i++) {
      next[i] = i + 1;
      prev[i] = i - 1;
      pairRank[i] = i + 1 < n ? this.#pairRank(bytes, i) : Infinity;
      if (pairRank[i] !== Infinity) heap.push(pairRank[i] * TWO_32 + i);
    }
    while (heap.size > 0) {
      const key = heap.pop();
      const rank = Math.floor(key / TWO_32);
      const i = key - rank * TWO_32;
      if (pairRank[i] !== rank) continue;
      const j = next[i];
      const k = next[j];
      next[i] = k;
      if (k < n) prev[k] = i;
      pairRank[j] = -1;
      pairRank[i] = k < n ? this.#rank(bytes, i, next[k]) : Infinity;
      if (pairRank[i] !== Infinity) heap.push(pairRank[i] * TWO_32 + i);
      if (i > 0) {
        const p = prev[i];
        pairRank[p] = this.#rank(bytes, p, k);
        if (pairRank[p] !== Infinity) heap.push(pairRank[p] * TWO_32 + p);
      }
    }
    const ids: number[] = [];
    for (let i = 0; i < n; i = next[i]) ids.push(this.#id(bytes, i, next[i]));
    return ids;
  }

  /**
   * The same merges for a short piece by rescanning: `starts` holds the part boundaries
   * (a sentinel `n` last) and `ranks[i]` the rank of parts i and i+1 together.
   */
  #mergeSmall(bytes: string): number[] {
    const n = bytes.length;
    const starts: number[] = [];
    const ranks: number[] = [];
    for (let i = 0; i <= n; i++) starts.push(i);
    for (let i = 0; i + 1 < n; i++) ranks.push(this.#pairRank(bytes, i));
    while (ranks.length > 0) {
      let best = 0;
      for (let i = 1; i < ranks.length; i++) if (ranks[i] < ranks[best]) best = i;
      if (ranks[best] === Infinity) break;
      starts.splice(best + 1, 1);
      ranks.splice(best, 1);
      if (best < ranks.length) ranks[best] = this.#rank(bytes, starts[best], starts[best + 2]);
      if (best > 0) ranks[best - 1] = this.#rank(bytes, starts[best - 1], starts[best + 1]);
    }
    const ids: number[] = [];
    for (let i = 0; i + 1 < starts.length; i++) ids.push(this.#id(bytes, starts[i], starts[i + 1]));
    return ids;
  }

  /** The id of a part; merges only make tokens, so only a byte missing from the vocabulary fails. */
  #id(bytes: string, start: number, end: number): number {
    const id = this.#ids.get(bytes.slice(start, end));
    if (id === undefined) {
      const hex = [...bytes.slice(start, end)].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0"));
      throw new Error(`The ${this.name} vocabulary has no token for the bytes ${hex.join(" ")}`);
    }
    return id;
  }

  #pairRank(bytes: string, i: number): number {
    const rank = this.#pairs[(bytes.charCodeAt(i) << 8) | bytes.charCodeAt(i + 1)];
    return rank < 0 ? Infinity : rank;
  }

  #rank(bytes: string, start: number, end: number): number {
    return this.#ranks.get(bytes.slice(start, end)) ?? Infinity;
  }
}

/** A binary min-heap of numbers. */
class MinHeap {
  #items: number[] = [];

  get size(): number {
    return this.#items.length;
  }

  push(value: number): void {
    const items = this.#items;
    let i = items.push(value) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (items[parent] <= value) break;
      items[i] = items[parent];
      i = parent;
    }
    items[i] = value;
  }

  pop(): number {
    const items = this.#items;
    const top = items[0];
    const last = items.pop()!;
    if (items.length > 0) {
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        if (left >= items.length) break;
        const right = left + 1;
        const child = right < items.length && items[right] < items[left] ? right : left;
        if (items[child] >= last) break;
        items[i] = items[child];
        i = child;
      }
      items[i] = last;
    }
    return top;
  }
}
