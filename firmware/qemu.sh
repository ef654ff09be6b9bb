#!/usr/bin/env bash
# Unpacks Debian's qemu-system-arm (and the libraries this machine image lacks
# for it) into firmware/target/qemu, without installing anything: installing
# the package would replace the system's newer qemu-utils. firmware-qemu finds
# it there. Idempotent: does nothing when QEMU is already unpacked and runs.
set -euo pipefail
cd "$(dirname "$0")"
root=target/qemu
arch=$(uname -m)-linux-gnu
export LD_LIBRARY_PATH="$PWD/$root/usr/lib/$arch:$PWD/$root/lib/$arch"
if "$root/usr/bin/qemu-system-arm" --version > /dev/null 2>&1; then
  "$root/usr/bin/qemu-system-arm" --version | head -n 1
  exit 0
fi
packages=(qemu-system-arm libfdt1 libcapstone4 libpmem1 librdmacm1 libibverbs1 libslirp0
  libvdeplug2 libndctl6 libdaxctl1 libnl-3-200 libnl-route-3-200)
downloads=$(mktemp -d)
trap 'rm -rf "$downloads"' EXIT
(cd "$downloads" && apt-get download "${packages[@]}" > /dev/null 2>&1) || {
  # The package lists may be missing on a fresh machine.
  apt-get update > /dev/null
  (cd "$downloads" && apt-get download "${packages[@]}" > /dev/null)
}
mkdir -p "$root"
for deb in "$downloads"/*.deb; do
  dpkg -x "$deb" "$root"
done
rm -rf "$root/usr/share/doc" "$root/usr/share/man"
missing=$(ldd "$root/usr/bin/qemu-system-arm" | grep "not found" || true)
if [[ -n $missing ]]; then
  echo "qemu.sh: qemu-system-arm still lacks libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
"$root/usr/bin/qemu-system-arm" --version | head -n 1
