/**
 * Finding a prepared dataset for the CLIs: `--dataset` is a folder path or a
 * name under data/. The default dataset (Tiny Shakespeare, character level) is
 * prepared on first use.
 *
 * @module
 */

import { join } from "node:path";
import { ConfigError } from "../model/config.ts";
import { type DatasetMeta, readMeta } from "../model/meta.ts";
import { prepareDataset } from "../model/prepare.ts";

/** The dataset the tasks use when none is named. */
export const DEFAULT_DATASET = "shakespeare_char";

/**
 * Resolves and reads a dataset's meta.json, preparing the default one if needed.
 *
 * @param dataset A folder, or a name under data/.
 * @returns The folder and its meta.json.
 */
export async function openDataset(dataset: string): Promise<{ dir: string; meta: DatasetMeta }> {
  const dir = await exists(dataset) ? dataset : join("data", dataset);
  if (!await exists(join(dir, "meta.json"))) {
    if (dataset !== DEFAULT_DATASET) {
      throw new ConfigError(
        `Dataset "${dataset}" is not prepared (no ${
          join(dir, "meta.json")
        }); run deno task prepare for it first`,
      );
    }
    console.log(`preparing ${dir} first (deno task prepare)...`);
    await prepareDataset({ input: join(dir, "input.txt"), out: dir });
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
