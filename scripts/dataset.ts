/**
 * Finding a prepared dataset for the CLIs: `--dataset` is a folder path or a
 * name under data/. The shipped datasets are prepared on first use.
 *
 * @module
 */

import { join } from "node:path";
import { ConfigError } from "../model/config.ts";
import { type DatasetMeta, readMeta } from "../model/meta.ts";
import { prepareDataset } from "../model/prepare.ts";
import type { TokenizerName } from "../model/tokenizer.ts";

/** The dataset the tasks use when none is named. */
export const DEFAULT_DATASET = "shakespeare_char";

/** Shipped datasets: prepared on first use from their input under data/. */
const SHIPPED: Record<string, { input: string; tokenizer: TokenizerName }> = {
  shakespeare_char: { input: "data/shakespeare_char/input.txt", tokenizer: "char" },
  shakespeare: { input: "data/shakespeare/input.txt", tokenizer: "gpt2" },
  sanguo: { input: "data/sanguo/input.txt", tokenizer: "char" },
  sanguo_cl100k: { input: "data/sanguo/input.txt", tokenizer: "cl100k_base" },
};

/**
 * Resolves and reads a dataset's meta.json, preparing a shipped one if needed.
 *
 * @param dataset A folder, or a name under data/.
 * @returns The folder and its meta.json.
 */
export async function openDataset(dataset: string): Promise<{ dir: string; meta: DatasetMeta }> {
  const dir = await exists(dataset) ? dataset : join("data", dataset);
  if (!await exists(join(dir, "meta.json"))) {
    const shipped = SHIPPED[dataset];
    if (!shipped) {
      throw new ConfigError(
        `Dataset "${dataset}" is not prepared (no ${join(dir, "meta.json")}); ` +
          `run deno task prepare --input YOUR_TEXT --out ${dir} first`,
      );
    }
    console.log(`preparing ${dir} from ${shipped.input} (${shipped.tokenizer} tokenizer) first...`);
    await prepareDataset({ input: shipped.input, out: dir, tokenizer: shipped.tokenizer });
  }
  return { dir, meta: await readMeta(dir) };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
