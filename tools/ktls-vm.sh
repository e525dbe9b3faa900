#!/usr/bin/env bash
# Runs a command inside a throwaway Linux VM whose kernel HAS kernel TLS (a Debian kernel under QEMU
# software emulation: no KVM needed; boots in seconds). scistream-rs's copy of the workplace's
# ktls-vm.sh: it takes the newest 6.12 kernel apt knows, else the newest 6.x (bookworm's 6.1 has
# kTLS too), and is what `cargo test` uses for the end-to-end kTLS test. For testing the kTLS data
# path on hosts whose own kernel lacks the `tls` ULP.
#
#   ktls-vm.sh [--bin FILE]... [--file SRC:DEST]... -- COMMAND [ARGS...]
#   ktls-vm.sh --prepare        fill the kernel cache only; print the kernel tree's path
#
# Every --bin is copied to /bin in the VM together with the shared libraries it links (via ldd;
# static binaries need none); --file copies any other file. COMMAND runs as root in the VM with
# loopback up and the kTLS and AEAD modules loaded; its output is printed and its exit status
# becomes this script's.
#
# Exit status: COMMAND's, or 64 usage, 69 the VM cannot run here (tools missing, no kernel package
# known to apt, download failed), 70 the VM did not finish, 71 the VM booted without kTLS (a
# kernel module did not load: its name and insmod's error are printed).
#
# The kernel package is fetched once with apt-get download into $KTLS_VM_CACHE (default
# ~/.cache/ktls-vm) and extracted there; the package file is kept beside its tree
# ($KTLS_VM_CACHE/PKG.deb). Filling is atomic and happens once: runs wait on a lock, extract into a
# temporary directory and rename it into place, so a half-filled cache is never used.
# Needs (Debian packages): qemu-system-x86 busybox-static cpio kmod xz-utils. Environment:
# KTLS_VM_MEM (MiB, default 1024), KTLS_VM_TIMEOUT (s, default 300), KTLS_VM_KERNEL (package name,
# default: the newest linux-image-6.12*-amd64 apt knows, else the newest 6.x), KTLS_VM_DEB (a local
# linux-image .deb to use instead of downloading one: offline hosts).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
bins=(); files=(); prepare=0
usage() { echo "usage: $0 [--bin FILE]... [--file SRC:DEST]... -- COMMAND [ARGS...] | $0 --prepare" >&2; exit 64; }
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) [ $# -ge 2 ] || usage; bins+=("$2"); shift 2;;
    --file) [ $# -ge 2 ] || usage; files+=("$2"); shift 2;;
    --prepare) prepare=1; shift;;
    --) shift; break;;
    *) usage;;
  esac
done
[ $# -gt 0 ] || [ $prepare = 1 ] || { echo "no command given" >&2; usage; }
for t in qemu-system-x86_64 cpio busybox depmod modprobe xz flock; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y qemu-system-x86 busybox-static cpio kmod xz-utils util-linux" >&2; exit 69; }
done

# --- the kernel: one package, filled into the cache once -------------------------------------
cache=${KTLS_VM_CACHE:-$HOME/.cache/ktls-vm}; mkdir -p "$cache"
newest() { apt-cache search --names-only "$1" | awk '{print $1}' | grep -v -- '-dbg\|-rt-\|cloud\|unsigned' | sort -V | tail -1 || true; }
if [ -n "${KTLS_VM_DEB:-}" ]; then
  [ -f "$KTLS_VM_DEB" ] || { echo "KTLS_VM_DEB=$KTLS_VM_DEB: no such file" >&2; exit 69; }
  pkg=$(dpkg-deb -f "$KTLS_VM_DEB" Package) || { echo "KTLS_VM_DEB=$KTLS_VM_DEB is not a package" >&2; exit 69; }
else
  pkg=${KTLS_VM_KERNEL:-$(newest '^linux-image-6\.12.*-amd64$')}
  [ -n "$pkg" ] || pkg=$(newest '^linux-image-6\.[0-9.]*-[0-9]*-amd64$')
  [ -n "$pkg" ] || { echo "no linux-image-6.x package known to apt (run apt-get update)" >&2; exit 69; }
fi
kroot="$cache/$pkg"
# A tree counts only once its marker exists: the marker is written inside the temporary directory
# before the rename, so a tree without it is debris of an older script and is filled again.
if [ ! -f "$kroot/.complete" ]; then
  exec 9>"$cache/.lock"
  flock 9
  if [ ! -f "$kroot/.complete" ]; then
    rm -rf "$kroot" "$cache"/.fill.*
    tmp=$(mktemp -d "$cache/.fill.XXXXXX")
    if [ -n "${KTLS_VM_DEB:-}" ]; then
      cp "$KTLS_VM_DEB" "$tmp/$pkg.deb"
    else
      echo "ktls-vm: downloading $pkg into $cache (once)" >&2
      (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null && mv "$pkg"_*.deb "$pkg.deb") \
        || { rm -rf "$tmp"; echo "cannot download $pkg (apt-get download failed: network? run apt-get update)" >&2; exit 69; }
    fi
    mkdir "$tmp/tree"
    dpkg -x "$tmp/$pkg.deb" "$tmp/tree" || { rm -rf "$tmp"; echo "cannot extract $pkg" >&2; exit 69; }
    kv=$(ls "$tmp/tree/lib/modules" | head -1)
    [ -f "$tmp/tree/lib/modules/$kv/modules.dep" ] || depmod -b "$tmp/tree" "$kv"
    touch "$tmp/tree/.complete"
    mv "$tmp/$pkg.deb" "$cache/$pkg.deb.new" && mv "$cache/$pkg.deb.new" "$cache/$pkg.deb"
    mv "$tmp/tree" "$kroot"
    rm -rf "$tmp"
  fi
  flock -u 9; exec 9>&-
fi
if [ $prepare = 1 ]; then echo "$kroot"; exit 0; fi
vmlinuz=$(ls "$kroot"/boot/vmlinuz-* | head -1); kver=${vmlinuz##*/vmlinuz-}
mods="$kroot/lib/modules/$kver/kernel"

# --- the initramfs: busybox, the modules, the binaries and files asked for ------------------------
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
root="$work/root"; mkdir -p "$root"/{bin,proc,sys,dev,tmp,lib/modules,etc}
cp "$(command -v busybox)" "$root/bin/busybox"
for a in sh mount insmod ip poweroff cat echo ls sleep mkdir grep; do ln -sf busybox "$root/bin/$a"; done
# The kTLS and AEAD modules with their dependencies, in dependency order, decompressed into the
# initramfs. `tls` is required: a kernel package without it (module or built in) cannot serve.
modprobe -d "$kroot" -S "$kver" --show-depends tls >/dev/null 2>&1 \
  || { echo "ktls-vm: the kernel $pkg has no tls module" >&2; exit 71; }
order=""
for f in $(for m in tls gcm ghash-generic aesni-intel ghash-clmulni-intel chacha20poly1305 chacha-generic chacha-x86_64 poly1305-generic poly1305-x86_64 ccm; do
             modprobe -d "$kroot" -S "$kver" --show-depends "$m" 2>/dev/null || true; done | awk '$1=="insmod"{print $2}' | awk '!s[$0]++'); do
  n=$(basename "$f"); n=${n%.xz}; n=${n%.zst}
  case "$f" in *.xz) xz -dc "$f" >"$root/lib/modules/$n";; *.zst) zstd -qdc "$f" >"$root/lib/modules/$n";; *) cp "$f" "$root/lib/modules/$n";; esac \
    || { echo "ktls-vm: module ${n%.ko} of $pkg cannot be read ($f); remove $kroot to fetch it again" >&2; exit 71; }
  order="$order ${n%.ko}"
done
[ -n "$order" ] || { echo "could not resolve kernel modules (is kmod installed?)" >&2; exit 69; }
copy_with_libs() {
  cp "$1" "$root/bin/"
  # Debug builds carry ~100 MB of debug info each; the initramfs lives in the
  # VM's memory, so keep only the code.
  if command -v strip >/dev/null; then strip --strip-debug "$root/bin/$(basename "$1")" 2>/dev/null || true; fi
  # A static binary has no libraries: ldd then fails, which is fine.
  local libs
  libs=$(ldd "$1" 2>/dev/null | grep -o '/[^ ]*' || true)
  for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
  done
}
for b in "${bins[@]+"${bins[@]}"}"; do copy_with_libs "$b"; done
for f in "${files[@]+"${files[@]}"}"; do mkdir -p "$root$(dirname "${f#*:}")"; cp -r "${f%%:*}" "$root${f#*:}"; done
printf '%q ' "$@" >"$work/cmd"
# Every module must load and the tls ULP must be there before COMMAND runs; otherwise the VM says
# which module failed and why, and COMMAND does not run (a kernel without kTLS is not what was asked).
cat >"$root/init" <<INIT
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null; mount -t tmpfs tmp /tmp
ip link set lo up
failed=""
for m in $order; do
  if ! err=\$(insmod /lib/modules/\$m.ko 2>&1); then
    echo "==ktls-vm: module \$m did not load: \$err=="; failed="\$failed \$m"
  fi
done
grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null || echo "==ktls-vm: no tls ULP after loading the modules=="
if [ -n "\$failed" ] || ! grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null; then
  echo "==ktls-vm: no kTLS; failed modules:\$failed=="
  poweroff -f
fi
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
if grep -aq '==ktls-vm: no kTLS' "$work/console"; then
  echo "ktls-vm: the VM booted $pkg without kTLS, so the command did not run:" >&2
  grep -ao '==ktls-vm: [^=]*==' "$work/console" | sed 's/^==\(.*\)==$/  \1/' >&2
  exit 71
fi
sed -n '/==ktls-vm: running==/,/==ktls-vm: exit/p' "$work/console" | sed '1d;$d' | tr -d '\r'
rc=$(grep -ao '==ktls-vm: exit [0-9]*==' "$work/console" | grep -o '[0-9]*' | tail -1 || true)
[ -n "$rc" ] || { echo "ktls-vm: the VM did not finish (see console below)" >&2; tail -20 "$work/console" >&2; exit 70; }
exit "$rc"
