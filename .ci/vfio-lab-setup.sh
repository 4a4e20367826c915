#!/usr/bin/env bash
# Installs what the VFIO-in-QEMU test (lab/tests/vfio_qemu.rs) needs on a Debian bookworm
# machine, as root: QEMU 10 from bookworm-backports, busybox-static, cpio, and a Linux 6.12
# kernel (downloaded, unpacked into a cache, never installed as the machine's kernel) with
# its VFIO modules decompressed, since busybox insmod cannot read .ko.xz.
#
# Idempotent: a second run finds the stamp file and returns in well under a second.
# Prints the cache directory on its last line; the test reads PVIRQ_VFIO_LAB (default
# /var/cache/pvirq/vfio-lab).
set -euo pipefail

LAB=${PVIRQ_VFIO_LAB:-/var/cache/pvirq/vfio-lab}
STAMP="$LAB/ready"
# Bump when the layout of the cache changes, so an old cache is rebuilt.
LAYOUT=1
# The VFIO stack, in load order (each needs the ones before it).
MODULES=(
    kernel/virt/lib/irqbypass
    kernel/drivers/vfio/vfio
    kernel/drivers/vfio/vfio_iommu_type1
    kernel/drivers/vfio/pci/vfio-pci-core
    kernel/drivers/vfio/pci/vfio-pci
)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$LAYOUT" ] &&
    command -v qemu-system-x86_64 >/dev/null && command -v cpio >/dev/null &&
    [ -x /bin/busybox ]; then
    echo "$LAB"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "vfio-lab-setup: must run as root (apt-get install)" >&2
    exit 1
fi
if ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
    echo "vfio-lab-setup: written for Debian bookworm; this is $(. /etc/os-release; echo "$PRETTY_NAME")" >&2
    exit 1
fi

# bookworm-backports, as a deb822 file with the same URI and keyring as debian.sources.
BACKPORTS=/etc/apt/sources.list.d/bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list.d/ /etc/apt/sources.list; then
    cat >"$BACKPORTS" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# The machine's qemu-utils may already be the backports 10.0, which conflicts with
# bookworm's qemu-system-x86 7.2: take QEMU from backports.
apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
apt-get install -y -q --no-install-recommends busybox-static cpio xz-utils

# The newest 6.12 kernel image backports offers (the name carries the ABI, e.g.
# linux-image-6.12.38+deb12-amd64): the candidate that linux-image-amd64 depends on there.
KPKG=$(apt-cache depends -t bookworm-backports linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-6\.12\.[^ ]*-amd64\)$/\1/p' | head -n1)
if [ -z "$KPKG" ]; then
    KPKG=$(apt-cache pkgnames linux-image-6.12. | grep -E '^linux-image-6\.12\.[0-9]+\+[a-z0-9]+-amd64$' |
        sort -V | tail -n1)
fi
if [ -z "$KPKG" ]; then
    echo "vfio-lab-setup: no linux-image-6.12.*-amd64 in bookworm-backports" >&2
    exit 1
fi

mkdir -p "$LAB"
WORK=$(mktemp -d "$LAB/.work.XXXXXX")
chmod 755 "$WORK" # apt-get download fetches as the _apt user
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt-get download -q -t bookworm-backports "$KPKG")
dpkg-deb -x "$WORK"/"$KPKG"_*.deb "$WORK/pkg"
KVER=$(ls "$WORK/pkg/lib/modules")

rm -rf "$LAB/mods" && mkdir -p "$LAB/mods"
for m in "${MODULES[@]}"; do
    xz -dc "$WORK/pkg/lib/modules/$KVER/$m.ko.xz" >"$LAB/mods/$(basename "$m").ko"
done
printf '%s\n' "${MODULES[@]##*/}" >"$LAB/mods/order"
cp "$WORK/pkg/boot/vmlinuz-$KVER" "$LAB/vmlinuz"
echo "$KVER" >"$LAB/kernel-version"
echo "$LAYOUT" >"$STAMP"
echo "$LAB"
