#!/usr/bin/env bash
# Runs a command inside a throwaway Linux VM whose kernel HAS kernel TLS (a Debian kernel under QEMU
# software emulation: no KVM needed; boots in seconds). scistream-rs's copy of the workplace's
# ktls-vm.sh: it takes the newest 6.12 kernel apt knows, else the newest 6.x (bookworm's 6.1 has
# kTLS too), and is what `cargo test` uses for the end-to-end kTLS test. For testing the kTLS data path on hosts
# whose own kernel lacks the `tls` ULP.
#
#   ktls-vm.sh [--bin FILE]... [--file SRC:DEST]... -- COMMAND [ARGS...]
#
# Every --bin is copied to /bin in the VM together with the shared libraries it links (via ldd);
# --file copies any other file. COMMAND runs as root in the VM with loopback up and the kTLS and
# AES-GCM modules loaded; its output is printed and its exit status becomes this script's.
# Needs (Debian packages): qemu-system-x86 busybox-static cpio kmod xz-utils; the kernel package is fetched with
# apt-get download into $KTLS_VM_CACHE (default ~/.cache/ktls-vm). Environment: KTLS_VM_MEM (MiB,
# default 1024), KTLS_VM_TIMEOUT (s, default 300), KTLS_VM_KERNEL (package name, default: newest
# linux-image-6.12*-amd64 that apt knows).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
bins=(); files=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bins+=("$2"); shift 2;;
    --file) files+=("$2"); shift 2;;
    --) shift; break;;
    *) echo "usage: $0 [--bin FILE]... [--file SRC:DEST]... -- COMMAND [ARGS...]" >&2; exit 64;;
  esac
done
[ $# -gt 0 ] || { echo "no command given" >&2; exit 64; }
for t in qemu-system-x86_64 cpio busybox depmod modprobe xz; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y qemu-system-x86 busybox-static cpio kmod xz-utils" >&2; exit 69; }
done
cache=${KTLS_VM_CACHE:-$HOME/.cache/ktls-vm}; mkdir -p "$cache"
newest() { apt-cache search --names-only "$1" | awk '{print $1}' | grep -v -- '-dbg\|-rt-\|cloud\|unsigned' | sort -V | tail -1 || true; }
pkg=${KTLS_VM_KERNEL:-$(newest '^linux-image-6\.12.*-amd64$')}
[ -n "$pkg" ] || pkg=$(newest '^linux-image-6\.[0-9.]*-[0-9]*-amd64$')
[ -n "$pkg" ] || { echo "no linux-image-6.x package known to apt (run apt-get update)" >&2; exit 69; }
if [ ! -d "$cache/$pkg" ]; then
  (cd "$cache" && apt-get download -qq "$pkg" 2>/dev/null) || { echo "cannot download $pkg" >&2; exit 69; }
  mkdir -p "$cache/$pkg" && dpkg -x "$cache/$pkg"_*.deb "$cache/$pkg" && rm -f "$cache/$pkg"_*.deb
fi
kroot="$cache/$pkg"; vmlinuz=$(ls "$kroot"/boot/vmlinuz-* | head -1); kver=${vmlinuz##*/vmlinuz-}
mods="$kroot/lib/modules/$kver/kernel"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
root="$work/root"; mkdir -p "$root"/{bin,proc,sys,dev,tmp,lib/modules,etc}
cp "$(command -v busybox)" "$root/bin/busybox"
for a in sh mount insmod ip poweroff cat echo ls sleep mkdir; do ln -sf busybox "$root/bin/$a"; done
# the kTLS and AEAD modules, in dependency order, decompressed into the initramfs
[ -f "$kroot/lib/modules/$kver/modules.dep" ] || depmod -b "$kroot" "$kver"
order=""
for f in $(for m in tls gcm ghash-generic aesni-intel ghash-clmulni-intel chacha20poly1305 chacha-generic chacha-x86_64 poly1305-generic poly1305-x86_64 ccm; do
             modprobe -d "$kroot" -S "$kver" --show-depends "$m" 2>/dev/null; done | awk '$1=="insmod"{print $2}' | awk '!s[$0]++'); do
  n=$(basename "$f"); n=${n%.xz}; n=${n%.zst}
  case "$f" in *.xz) xz -dc "$f" >"$root/lib/modules/$n";; *.zst) zstd -qdc "$f" >"$root/lib/modules/$n";; *) cp "$f" "$root/lib/modules/$n";; esac
  order="$order ${n%.ko}"
done
[ -n "$order" ] || { echo "could not resolve kernel modules (is kmod installed?)" >&2; exit 69; }
copy_with_libs() {
  cp "$1" "$root/bin/"
  # Debug builds carry ~100 MB of debug info each; the initramfs lives in the
  # VM's memory, so keep only the code.
  command -v strip >/dev/null && strip --strip-debug "$root/bin/$(basename "$1")" 2>/dev/null
  ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
  done
}
for b in "${bins[@]}"; do copy_with_libs "$b"; done
for f in "${files[@]}"; do mkdir -p "$root$(dirname "${f#*:}")"; cp -r "${f%%:*}" "$root${f#*:}"; done
printf '%q ' "$@" >"$work/cmd"
cat >"$root/init" <<INIT
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null; mount -t tmpfs tmp /tmp
ip link set lo up
for m in $order; do insmod /lib/modules/\$m.ko 2>/dev/null; done
export PATH=/bin HOME=/tmp
echo "==ktls-vm: running=="
$(cat "$work/cmd")
echo "==ktls-vm: exit \$?=="
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initrd.gz")
timeout "${KTLS_VM_TIMEOUT:-300}" qemu-system-x86_64 -accel tcg -cpu max -m "${KTLS_VM_MEM:-1024}" -smp 1 \
  -kernel "$vmlinuz" -initrd "$work/initrd.gz" -append "console=ttyS0 rdinit=/init panic=-1 quiet" \
  -nographic -no-reboot >"$work/console" 2>&1 || true
sed -n '/==ktls-vm: running==/,/==ktls-vm: exit/p' "$work/console" | sed '1d;$d' | tr -d '\r'
rc=$(grep -ao '==ktls-vm: exit [0-9]*==' "$work/console" | grep -o '[0-9]*' | tail -1)
[ -n "$rc" ] || { echo "ktls-vm: the VM did not finish (see console below)" >&2; tail -20 "$work/console" >&2; exit 70; }
exit "$rc"
