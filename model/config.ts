/**
 * The model's shape: a LLaMA-style decoder (RMSNorm, RoPE, SwiGLU, no biases,
 * optional grouped-query attention and tied embeddings). Field names follow
 * nanoGPT's where it has them.
 *
 * @module
 */

/**
 * A bad setting; the message names it, its value and what to do.
 *
 * @example
 * ```ts
 * try {
 *   modelConfigFor(trainConfig({ n_embd: 100, n_head: 3 }), 65);
 * } catch (error) {
 *   if (error instanceof ConfigError) console.error(error.message); // "n_embd 100 is not divisible ..."
 *   else throw error;
 * }
 * ```
 */
export class ConfigError extends Error {
  /**
   * Creates the error.
   *
   * @param message One line: the setting, the value, the fix.
   */
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/**
 * Everything that fixes the model's parameters and computation; checkpoints
 * store it, and {@link resolveModelConfig} fills its defaults.
 *
 * @example
 * ```ts
 * const config: ModelConfig = resolveModelConfig({
 *   n_layer: 4, n_head: 4, n_embd: 128, block_size: 64, vocab_size: 65,
 * });
 * const model = Llama.create(gpu, config, { batchSize: 1 });
 * console.log(config.mlp_hidden, config.n_kv_head); // 384 4
 * ```
 */
export interface ModelConfig {
  /** Transformer blocks. */
  n_layer: number;
  /** Query heads. */
  n_head: number;
  /** Key/value heads (grouped-query attention when fewer than n_head; must divide it). */
  n_kv_head: number;
  /** Width of the residual stream. */
  n_embd: number;
  /** Longest context the model attends over. */
  block_size: number;
  /** Tokens in the vocabulary. */
  vocab_size: number;
  /** Hidden width of the SwiGLU MLP. */
  mlp_hidden: number;
  /** RoPE base frequency. */
  rope_theta: number;
  /** RMSNorm epsilon. */
  norm_eps: number;
  /** lm_head shares the token embedding matrix. */
  tie_embeddings: boolean;
  /** Dropout on the embeddings and on both residual branches (0 disables). */
  dropout: number;
}

/** The model fields, in the order they are printed and stored. */
export const MODEL_KEYS: readonly (keyof ModelConfig)[] = [
  "n_layer",
  "n_head",
  "n_kv_head",
  "n_embd",
  "block_size",
  "vocab_size",
  "mlp_hidden",
  "rope_theta",
  "norm_eps",
  "tie_embeddings",
  "dropout",
];

/**
 * LLaMA's MLP width: 8/3 of n_embd (two thirds of the usual 4x, since SwiGLU has
 * three matrices instead of two), rounded up to a multiple of 64.
 *
 * @param nEmbd The model width.
 * @returns The hidden width.
 */
export function defaultMlpHidden(nEmbd: number): number {
  return Math.ceil(Math.floor((8 * nEmbd) / 3) / 64) * 64;
}

/**
 * Fills defaults (n_kv_head = n_head, mlp_hidden from n_embd, theta 10000,
 * eps 1e-5, tied embeddings, no dropout) and validates the result.
 *
 * @param partial The fields given; n_layer, n_head, n_embd, block_size and vocab_size are required.
 * @returns A complete, valid config.
 * @throws {ConfigError} Naming the first bad field.
 * @example
 * ```ts
 * const config = resolveModelConfig({ n_layer: 4, n_head: 4, n_embd: 128, block_size: 64, vocab_size: 65 });
 * config.mlp_hidden; // 384
 * ```
 */
export function resolveModelConfig(partial: Partial<ModelConfig>): ModelConfig {
  for (const key of ["n_layer", "n_head", "n_embd", "block_size", "vocab_size"] as const) {
    if (partial[key] === undefined) throw new ConfigError(`The model config lacks ${key}; set --${key}`);
  }
  const config: ModelConfig = {
    n_layer: partial.n_layer!,
    n_head: partial.n_head!,
    n_kv_head: partial.n_kv_head ?? partial.n_head!,
    n_embd: partial.n_embd!,
    block_size: partial.block_size!,
    vocab_size: partial.vocab_size!,
    mlp_hidden: partial.mlp_hidden ?? defaultMlpHidden(partial.n_embd!),
    rope_theta: partial.rope_theta ?? 10000,
    norm_eps: partial.norm_eps ?? 1e-5,
    tie_embeddings: partial.tie_embeddings ?? true,
    dropout: partial.dropout ?? 0,
  };
  validateModelConfig(config);
  return config;
}

/**
 * Checks a complete config; each failure is one line naming the field.
 *
 * @param config The config.
 * @throws {ConfigError} On the first problem.
 */
export function validateModelConfig(config: ModelConfig): void {
  const positiveInts = [
    "n_layer",
    "n_head",
    "n_kv_head",
    "n_embd",
    "block_size",
    "vocab_size",
    "mlp_hidden",
  ] as const;
  for (const key of positiveInts) {
    const value = config[key];
    if (!Number.isInteger(value) || value < 1) {
      throw new ConfigError(`${key} must be a positive integer, got ${JSON.stringify(value)}`);
    }
  }
  const { n_embd, n_head, n_kv_head } = config;
  if (n_embd % n_head !== 0) {
    throw new ConfigError(
      `n_embd ${n_embd} is not divisible by n_head ${n_head}; pick n_embd as a multiple of n_head`,
    );
  }
  const headSize = n_embd / n_head;
  if (headSize % 2 !== 0) {
    throw new ConfigError(
      `The head size n_embd/n_head = ${headSize} is odd, but RoPE rotates pairs; make n_embd/n_head even`,
    );
  }
  if (n_head % n_kv_head !== 0) {
    throw new ConfigError(
      `n_head ${n_head} is not divisible by n_kv_head ${n_kv_head}; choose a divisor of n_head`,
    );
  }
  if (!(config.rope_theta > 0) || !Number.isFinite(config.rope_theta)) {
    throw new ConfigError(`rope_theta must be a positive number, got ${config.rope_theta}`);
  }
  if (!(config.norm_eps > 0) || !Number.isFinite(config.norm_eps)) {
    throw new ConfigError(`norm_eps must be a positive number, got ${config.norm_eps}`);
  }
  if (!(config.dropout >= 0 && config.dropout < 1)) {
    throw new ConfigError(`dropout must be in [0, 1), got ${config.dropout}`);
  }
  if (typeof config.tie_embeddings !== "boolean") {
    throw new ConfigError(
      `tie_embeddings must be true or false, got ${JSON.stringify(config.tie_embeddings)}`,
    );
  }
}

/**
 * The head size n_embd / n_head.
 *
 * @param config The model config.
 * @returns HS.
 */
export function headSize(config: ModelConfig): number {
  return config.n_embd / config.n_head;
}
