#!/bin/sh
# Testbed only: a signed, flat apt repository laid out like NVIDIA's libnvidia-container one
# (stable/deb/<arch>/, Suites "/"), holding EMPTY stand-in packages under the toolkit's names, in two
# versions, with the real packages' dependency chain. It lets the role's install path (key in
# /etc/apt/keyrings, deb822 source with Signed-By, apt update, pinned install, removal) run for real
# while NVIDIA's repository is unreachable. The packages contain no software.
# Usage: fake_nvidia_repo.sh ROOT   (writes ROOT/gpgkey and ROOT/stable/deb/<arch>/)
set -eu
root=$1
arch=$(dpkg --print-architecture)
repo=$root/stable/deb/$arch
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$repo"

build() { # name version depends
  dir=$work/$1_$2
  mkdir -p "$dir/DEBIAN" "$dir/usr/share/doc/$1"
  {
    echo "Package: $1"
    echo "Version: $2"
    echo "Architecture: $arch"
    echo "Maintainer: aima-deploy testbed <testbed@invalid>"
    [ -z "$3" ] || echo "Depends: $3"
    echo "Description: empty stand-in for $1 (aima-deploy testbed, not NVIDIA software)"
  } > "$dir/DEBIAN/control"
  echo "Empty stand-in package for the aima-deploy testbed." > "$dir/usr/share/doc/$1/README"
  dpkg-deb --root-owner-group --build "$dir" "$repo/$1_$2_$arch.deb" >/dev/null
}

for v in 1.17.7-1 1.17.8-1; do
  build libnvidia-container1 "$v" ""
  build libnvidia-container-tools "$v" "libnvidia-container1 (= $v)"
  build nvidia-container-toolkit-base "$v" ""
  build nvidia-container-toolkit "$v" "nvidia-container-toolkit-base (= $v), libnvidia-container-tools (= $v)"
done

cd "$repo"
apt-ftparchive packages . > Packages
gzip -9kf Packages
apt-ftparchive -o APT::FTPArchive::Release::Origin=aima-testbed release . > Release

export GNUPGHOME="$work/gnupg"
mkdir -m 0700 "$GNUPGHOME"
gpg --batch --quiet --pinentry-mode loopback --passphrase '' --quick-gen-key 'aima-deploy testbed repo <testbed@invalid>' rsa3072 sign never
gpg --batch --quiet --yes --armor --export > "$root/gpgkey"
gpg --batch --quiet --yes --clearsign -o InRelease Release
gpg --batch --quiet --yes -abs -o Release.gpg Release
chmod -R a+rX "$root"
