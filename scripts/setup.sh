# Sourced by ./task and .ci/run: installs what a fresh machine lacks, saying what it does.
#   ensure_deno     Deno 2.9.6 from npm when `deno` is missing (globally, or into .tools/ without root)
#   ensure_adapter  Mesa's software Vulkan driver from apt when no WebGPU adapter with shader-f16 answers
DENO_VERSION=2.9.6
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} DENO_NO_UPDATE_CHECK=1

setup_say() { echo "[setup] $*" >&2; }

ensure_deno() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  [ -x "$root/.tools/node_modules/.bin/deno" ] && export PATH="$root/.tools/node_modules/.bin:$PATH"
  command -v deno >/dev/null 2>&1 && return 0
  if ! command -v npm >/dev/null 2>&1; then
    setup_say "Deno is missing and so is npm; install Deno $DENO_VERSION (https://deno.com) and run again"
    return 1
  fi
  setup_say "Deno is missing: installing deno@$DENO_VERSION from npm"
  if [ -w "$(npm prefix -g)/lib" ] 2>/dev/null && npm install -g --silent "deno@$DENO_VERSION" >&2; then
    hash -r
  else
    setup_say "no write access to npm's global folder: installing into $root/.tools instead"
    npm install --silent --prefix "$root/.tools" "deno@$DENO_VERSION" >&2 || return 1
    export PATH="$root/.tools/node_modules/.bin:$PATH"
  fi
  command -v deno >/dev/null 2>&1 || { setup_say "Deno did not install; install it by hand and run again"; return 1; }
  setup_say "installed $(deno --version | head -n1)"
}

adapter_ok() {
  deno task -q doctor --require shader-f16 >/dev/null 2>&1
}

ensure_adapter() {
  adapter_ok && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
  if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; }; then
    setup_say "no WebGPU adapter with shader-f16; install your GPU's Vulkan driver, or mesa-vulkan-drivers and libvulkan1 for the CPU fallback"
    return 1
  fi
  setup_say "no WebGPU adapter with shader-f16: installing Mesa's software Vulkan driver (apt-get install mesa-vulkan-drivers libvulkan1)"
  if ! $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1; then
    $sudo apt-get update -qq >/dev/null 2>&1
    $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1 ||
      { setup_say "apt-get could not install the driver"; return 1; }
  fi
  adapter_ok || { setup_say "still no adapter with shader-f16 after installing the driver; see deno task doctor"; return 1; }
  setup_say "WebGPU adapter ready: $(deno task -q doctor | head -n1 | sed 's/^adapter *//')"
}
