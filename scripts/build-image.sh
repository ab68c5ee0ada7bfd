#!/usr/bin/env bash
# Build the bridge's container image from the Dockerfile users get.
#
#   scripts/build-image.sh [--tag NAME]... [--reuse] [--engine docker|podman]
#
# Engine: docker when an engine answers (`docker info`), else podman. With docker the image is
# built exactly as `docker build .` builds it, from python:3.11-slim. With podman and no
# PYTHON_IMAGE in the environment, the base image is localhost/py311-local: Debian's own
# python3 (bookworm: 3.11) laid out with debootstrap from the mirror apt is configured with,
# created here once and kept (this machine reaches Debian's packages and PyPI, not a container
# registry). The base image is the only difference: it goes in as the Dockerfile's PYTHON_IMAGE
# build argument. PYTHON_IMAGE=python:3.11-slim uses the real one with podman too.
#
# Every build is tagged bridge:src-<hash>, the hash of the Dockerfile, .dockerignore and every
# file the Dockerfile COPYs; --reuse skips the build when that tag exists already. The last
# line printed on stdout is that tag; everything else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL_BASE=localhost/py311-local
SUITE=bookworm
tags=()
reuse=false
engine=${BRIDGE_IMAGE_ENGINE:-}

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tags+=("$2"); shift 2 ;;
    --reuse) reuse=true; shift ;;
    --engine) engine=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { echo "build-image: $*" >&2; }

pick_engine() {
  if [ -n "$engine" ]; then echo "$engine"; return; fi
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v podman >/dev/null 2>&1; then echo podman; return; fi
  echo none
}

# The hash of the build's inputs: the Dockerfile, .dockerignore and the sources of its COPY
# lines (not COPY --from), compiled files left out as .dockerignore leaves them out.
inputs_hash() {
  local sources
  sources=$(awk 'toupper($1) == "COPY" && !/--from/ { for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' Dockerfile)
  # shellcheck disable=SC2086
  {
    printf '%s\n' Dockerfile .dockerignore
    find $sources -type f ! -path '*/__pycache__/*' ! -name '*.py[cod]'
  } | LC_ALL=C sort -u | while read -r path; do
    printf '%s %s\n' "$path" "$(sha256sum <"$path" | cut -c1-64)"
  done | sha256sum | cut -c1-16
}

# The Debian mirror apt uses here: the first deb URI of a suite that is not -security, from
# sources.list (one-line format) or sources.list.d (one-line *.list, deb822 *.sources).
apt_mirror() {
  python3 - <<'PY'
import glob, re, sys

def one_line(path):
    for line in open(path, encoding="utf-8", errors="replace"):
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            yield words[1], [words[2]]

def deb822(path):
    for stanza in re.split(r"\n\s*\n", open(path, encoding="utf-8", errors="replace").read()):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.split()
        if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"]) == ["no"]:
            continue
        for uri in fields.get("uris", []):
            yield uri, fields.get("suites", [])

files = glob.glob("/etc/apt/sources.list") + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
found = [entry for path in files for entry in one_line(path)]
found += [entry for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")) for entry in deb822(path)]
for uri, suites in found:
    if uri.startswith(("http://", "https://")) and any(s and "security" not in s for s in suites):
        print(uri.rstrip("/"))
        sys.exit(0)
sys.exit("no Debian mirror in the apt configuration")
PY
}

make_local_base() {
  if podman image exists "$LOCAL_BASE"; then
    say "base image $LOCAL_BASE exists (podman rmi it to lay it out again)"
    return
  fi
  [ "$(id -u)" = 0 ] || { say "debootstrap needs root to create $LOCAL_BASE"; exit 1; }
  command -v debootstrap >/dev/null 2>&1 || { say "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  local mirror root
  mirror=$(apt_mirror)
  root=$(mktemp -d /var/tmp/py311-local.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  say "laying out Debian $SUITE with python3 from $mirror (a few minutes, once)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$root" "$mirror" >&2
  chroot "$root" python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' >&2
  # The host's CA bundle: the one its own clients trust for PyPI.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  # Where the Dockerfile (and python:3.11-slim) has the interpreter.
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
  # pip installs uv system-wide in the build stage, as in the official image.
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import --change "ENV UV_SYSTEM_CERTS=1" - "$LOCAL_BASE" >&2
  rm -rf "$root"
  trap - EXIT
}

engine=$(pick_engine)
tag="bridge:src-$(inputs_hash)"
case "$engine" in
  docker) build=(docker build) ;;
  podman)
    build=(podman build --format docker --isolation chroot --network host)
    if [ -z "${PYTHON_IMAGE:-}" ]; then make_local_base; PYTHON_IMAGE=$LOCAL_BASE; fi
    ;;
  *) say "neither a docker engine nor podman is available"; exit 3 ;;
esac
[ -n "${PYTHON_IMAGE:-}" ] && build+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")

if $reuse && "$engine" image inspect "$tag" >/dev/null 2>&1; then
  say "$tag exists: inputs unchanged, not rebuilt"
else
  say "$engine: building $tag${PYTHON_IMAGE:+ from $PYTHON_IMAGE}"
  "${build[@]}" -t "$tag" . >&2
fi
# Keep the newest few source tags (other work trees may be testing theirs), drop the rest.
"$engine" images --filter reference=bridge --format '{{.CreatedAt}}\t{{.Repository}}:{{.Tag}}' \
  | { grep -E ':src-[0-9a-f]+$' || true; } | sort -r | cut -f2 | tail -n +6 \
  | while read -r old; do "$engine" rmi "$old" >/dev/null 2>&1 || true; done
for extra in ${tags[@]+"${tags[@]}"}; do
  "$engine" tag "$tag" "$extra"
  say "tagged $extra"
done
echo "$tag"
