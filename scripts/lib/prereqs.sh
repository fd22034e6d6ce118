# Sourced by scripts/test, scripts/demo and scripts/bench: installs what a
# fresh machine lacks and makes sure a Docker daemon answers. Every failure
# stops the run with a message; nothing is skipped silently.

APT_PACKAGES=(docker-registry skopeo debootstrap qemu-user-static gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu gcc-riscv64-linux-gnu libc6-dev-armhf-cross libc6-dev-riscv64-cross apache2-utils umoci curl postgresql e2fsprogs openssl chromium chromium-driver swtpm prometheus)
RUST_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf i686-unknown-linux-musl riscv64gc-unknown-linux-gnu)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

ensure_apt_packages() {
  local missing=()
  command -v docker >/dev/null || missing+=(docker.io)
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -q >/dev/null || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain with rustup"
  local installed
  installed=$(rustup target list --installed) || die "rustup not working"
  for t in "${RUST_TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || { say "rustup target add $t"; rustup target add "$t" >/dev/null || die "rustup target add $t failed"; }
  done
  rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || die "no Docker daemon answers and dockerd is not installed (apt-get install docker.io)"
  say "no Docker daemon answers; starting dockerd (log: /var/log/fogswarm-dockerd.log)"
  as_root sh -c 'nohup dockerd >/var/log/fogswarm-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return
    sleep 1
  done
  tail -20 /var/log/fogswarm-dockerd.log >&2 || true
  die "dockerd did not answer on /var/run/docker.sock within 60s"
}

# Independent validators the tests judge fogswarm's output with.
ensure_python_tools() {
  command -v pyspdxtools >/dev/null && return
  say "pip install spdx-tools (pyspdxtools, the SPDX validator)"
  python3 -m pip install -q spdx-tools >/dev/null 2>&1 || die "pip install spdx-tools failed"
  command -v pyenv >/dev/null && pyenv rehash 2>/dev/null; hash -r
  command -v pyspdxtools >/dev/null || die "pyspdxtools is not on PATH after pip install spdx-tools"
}

ensure_prereqs() {
  ensure_apt_packages
  ensure_rust
  ensure_docker
  ensure_python_tools
}
