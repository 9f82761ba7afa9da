/**
 * Runs a project CLI in a subprocess, as a user would through `deno task`, and
 * captures its exit code and output.
 *
 * @module
 */

/** What a CLI run returned. */
export interface CliResult {
  /** Exit code. */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

/**
 * Runs `deno task <task> ...args` from the project root.
 *
 * @param task A task name from deno.json.
 * @param args Its arguments.
 * @param env Extra environment variables.
 */
export function runTask(
  task: string,
  args: string[] = [],
  env: Record<string, string> = {},
): Promise<CliResult> {
  return runDeno(["task", "-q", task, ...args], env);
}

/**
 * Runs `deno ...args` from the project root.
 *
 * @param args The deno subcommand and its arguments, e.g. ["doc", "--lint", "mod.ts"].
 * @param env Extra environment variables.
 */
export async function runDeno(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const root = new URL("..", import.meta.url).pathname;
  const output = await new Deno.Command("deno", {
    args,
    cwd: root,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr) };
}

/** Environment that hides every Vulkan driver: no adapter, since only Vulkan is tried by default. */
export const NO_ADAPTER: Record<string, string> = { VK_DRIVER_FILES: "/nonexistent/icd.json" };

/** Environment that leaves only wgpu's OpenGL backend: an adapter without f16. */
export const GL_ONLY: Record<string, string> = { ...NO_ADAPTER, DENO_WEBGPU_BACKEND: "gl" };
